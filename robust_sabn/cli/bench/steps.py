"""Steps that more than one benchmark times (a benchmark module never imports another)."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...nn import split_routes, use_route

COMPILED_TARGET = 0.75  # seconds per training step, compiled against eager (bench train, bench norms)
SPLIT_TARGET = 0.85  # the fused split's time against two forwards: a GPU target (bench norms, bench gpu)
Step = Callable[[], None]


def split_steps(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[Step, Step]:
    """The hybrid loss's two halves as one fused forward over [x | x] and as two separate forwards."""
    n = x.shape[0]
    joined, labels = torch.cat([x, x]), torch.cat([y, y])

    def fused() -> None:
        model.zero_grad(set_to_none=True)
        with split_routes(model, clean=n, adv=n):
            F.cross_entropy(model(joined), labels).backward()

    def separate() -> None:
        model.zero_grad(set_to_none=True)
        with use_route(model, "clean"):
            loss = F.cross_entropy(model(x), y)
        with use_route(model, "adv"):
            loss = (loss + F.cross_entropy(model(x), y)) / 2
        loss.backward()

    return fused, separate
