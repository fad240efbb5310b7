"""PGD on the Carlini-Wagner margin loss ("CW-inf" in TRADES/MART-style robustness tables)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .pgd import PGD


def cw_margin(logits: torch.Tensor, labels: torch.Tensor, kappa: float = 50.0) -> torch.Tensor:
    """Per example ``max(z_y - max_{i != y} z_i, -kappa)``: the correct class's lead, which the attack lowers.

    The floor at ``-kappa`` (Carlini and Wagner's confidence) stops pushing an example once it is
    misclassified by that margin; CW-loss PGD evaluations commonly use 50.
    """
    one_hot = F.one_hot(labels, logits.shape[1]).bool()
    correct = logits[one_hot]
    other = logits.masked_fill(one_hot, float("-inf")).amax(dim=1)
    return (correct - other).clamp(min=-kappa)


class CWPGD(PGD):
    """PGD (same steps, projection and random start as :class:`robust_sabn.attacks.PGD`) that ascends minus the
    CW margin instead of the cross-entropy. Untargeted only.

    Example::

        x_adv = CWPGD(model, eps=8/255, alpha=2/255, steps=20)(x, y)
    """

    def __init__(self, model: nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 20,
                 random_start: bool = True, norm: str = "Linf", route: str | None = None, bn_mode: str = "eval",
                 kappa: float = 50.0) -> None:
        super().__init__(model, eps, alpha, steps, random_start, norm, route, bn_mode)
        self.attack = "CWPGD"
        self.kappa = float(kappa)
        self.supported_mode = ["default"]

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        return -cw_margin(logits, labels, self.kappa).sum()
