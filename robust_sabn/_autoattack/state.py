"""``autoattack.state`` as upstream lays it out (RobustBench imports ``EvaluationState`` from here)."""
from pyautoattack.state import EvaluationState  # noqa: F401
