"""`autoattack` with upstream's API, backed by pyautoattack (installed by robust-sabn's set-up only when no
real `autoattack` exists). RobustBench imports this module."""
from pyautoattack import checks  # noqa: F401
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted  # noqa: F401
from pyautoattack.fab_pt import FABAttack_PT  # noqa: F401
from pyautoattack.square import SquareAttack  # noqa: F401

from robust_sabn.eval.autoattack_compat import AutoAttack  # noqa: F401

IS_ROBUST_SABN_ADAPTER = True
