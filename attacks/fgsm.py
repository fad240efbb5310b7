"""FGSM with a random start (Wong et al. 2020, "Fast is better than free"), the attack of "fast" AT."""
from __future__ import annotations

from torch import nn

from ..limits import check_eps
from .pgd import PGD


class FGSM(PGD):
    """One Linf step of size ``alpha`` (default ``1.25 * eps``) from a uniform random start in the
    eps-ball, projected back onto the ball and [0, 1]. ``random_start=False`` is classic FGSM when
    ``alpha >= eps``. The same update as torchattacks' ``FFGSM``; equal to torchattacks' ``PGD`` with
    ``steps=1`` and the same ``alpha`` under the same seed."""

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        alpha: float | None = None,
        random_start: bool = True,
        route: str | None = None,
        bn_mode: str = "eval",
    ) -> None:
        alpha = 1.25 * check_eps(eps) if alpha is None else alpha
        super().__init__(model, eps, alpha, steps=1, random_start=random_start, norm="Linf",
                         route=route, bn_mode=bn_mode)
        self.attack = "FGSM"
