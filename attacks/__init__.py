"""Installed as ``robust_sabn.attacks`` (pyproject.toml's package-dir maps this folder there): attacks.

Route-aware adversarial attacks following torchattacks' ``Attack`` contract.
"""
from .base import BN_MODES, NORMS, RoutedAttack, restore_modes
from .fgsm import FGSM
from .pgd import PGD
from .trades import TradesPGD

__all__ = ["BN_MODES", "FGSM", "NORMS", "PGD", "RoutedAttack", "TradesPGD", "restore_modes"]
