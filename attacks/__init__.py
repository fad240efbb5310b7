"""Route-aware adversarial attacks following torchattacks' ``Attack`` contract."""
from .base import BN_MODES, NORMS, RoutedAttack
from .fgsm import FGSM
from .pgd import PGD

__all__ = ["BN_MODES", "FGSM", "NORMS", "PGD", "RoutedAttack"]
