"""The inner maximization of TRADES (Zhang et al. 2019): move the prediction away from the clean one."""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import use_route
from .pgd import PGD


class TradesPGD(PGD):
    """PGD ascending ``KL(p(x) || p(x'))``, the divergence of the prediction at ``x'`` from the prediction at
    the clean ``x``, from TRADES' small Gaussian start ``x + 0.001 * N(0, 1)``. Labels are not needed.

    ``reference_route`` is the route the clean prediction ``p(x)`` is taken through (``None``: the attack's
    own route); TRADES on a dual-route model takes it through the clean route and attacks the adv route.
    Under float16 autocast it runs in float32: float16's rounding of the logits is larger than the difference
    between the two nearby predictions the KL compares, so its gradient would point anywhere.
    """

    float16_ok = False

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        norm: str = "Linf",
        route: str | None = None,
        reference_route: str | None = None,
        bn_mode: str = "eval",
    ) -> None:
        super().__init__(model, eps, alpha, steps, random_start=True, norm=norm, route=route, bn_mode=bn_mode)
        self.attack = "TradesPGD"
        self.reference_route = self.checked_route(reference_route)
        self.supported_mode = ["default"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        images = images.detach().to(self.device)
        route = use_route(self.model, self.reference_route) if self.reference_route is not None else nullcontext()
        with torch.no_grad(), route:
            reference = F.softmax(self.get_logits(images), dim=1)
        return super().forward(images, reference)

    def random_delta(self, images: torch.Tensor) -> torch.Tensor:
        return 0.001 * torch.randn_like(images)

    def loss(self, logits: torch.Tensor, reference: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        return F.kl_div(F.log_softmax(logits, dim=1), reference, reduction="sum")
