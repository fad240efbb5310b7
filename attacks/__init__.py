"""Installed as ``robust_sabn.attacks`` (pyproject.toml's package-dir maps this folder there): attacks.

Route-aware adversarial attacks following torchattacks' ``Attack`` contract.
"""
from .base import RoutedAttack, restore_modes
from .cw import CWPGD
from .fgsm import FGSM
from .pgd import PGD
from .trades import TradesPGD

__all__ = ["CWPGD", "FGSM", "PGD", "RoutedAttack", "TradesPGD", "restore_modes"]
