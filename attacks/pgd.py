"""Projected gradient descent (Madry et al. 2018) in the Linf and L2 balls."""
from __future__ import annotations

import torch
from torch import nn

from ..limits import check_eps
from .base import RoutedAttack, check_norm, check_positive, check_steps


def _per_sample_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(p=2, dim=1).view(-1, *([1] * (x.dim() - 1)))


class PGD(RoutedAttack):
    """PGD: ``steps`` ascent steps of size ``alpha`` on the cross-entropy, each projected back onto the
    ``norm`` ball of radius ``eps`` around the images and onto [0, 1].

    Linf steps along the gradient's sign; L2 along the gradient divided by its norm. With
    ``random_start`` the first point is uniform in the Linf ball (Linf) or uniform in radius along a
    Gaussian direction (L2), drawn from torch's global generator as torchattacks' ``PGD``/``PGDL2`` draw it,
    so both give the same adversarials under the same seed.

    Example::

        attack = PGD(model, eps=8/255, alpha=2/255, steps=10, route="adv")
        x_adv = attack(x, y)
    """

    def __init__(
        self,
        model: nn.Module,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        random_start: bool = True,
        norm: str = "Linf",
        route: str | None = None,
        bn_mode: str = "eval",
    ) -> None:
        super().__init__("PGD", model, route=route, bn_mode=bn_mode)
        self.norm = check_norm(norm)
        self.eps = check_eps(eps, norm)
        self.alpha = check_positive("alpha (step size)", alpha)
        self.steps = check_steps(steps)
        self.random_start = bool(random_start)
        self.supported_mode = ["default", "targeted"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.detach().to(self.device)
        labels = labels.detach().to(self.device)
        target = self.targets(images, labels)
        adv = images
        if self.random_start:
            adv = (images + self.random_delta(images)).clamp(0, 1)
        for _ in range(self.steps):
            grad = self.input_gradient(adv, labels, target)
            adv = self.project(images, adv + self.alpha * self.ascent_direction(grad))
        return adv.detach()

    def random_delta(self, images: torch.Tensor) -> torch.Tensor:
        if self.norm == "Linf":
            return torch.empty_like(images).uniform_(-self.eps, self.eps)
        direction = torch.empty_like(images).normal_()
        length = _per_sample_norm(direction)
        radius = torch.zeros_like(length).uniform_(0, 1)
        return direction * (radius / length * self.eps)

    def ascent_direction(self, grad: torch.Tensor) -> torch.Tensor:
        if self.norm == "Linf":
            return grad.sign()
        return grad / (_per_sample_norm(grad) + 1e-10)

    def project(self, images: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
        """The point of the eps-ball around ``images`` intersected with [0, 1] reached by clipping."""
        delta = adv - images
        if self.norm == "Linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            delta = delta * (self.eps / _per_sample_norm(delta).clamp_min(1e-12)).clamp(max=1.0)
        return (images + delta).clamp(0, 1)
