"""An exponential moving average (EMA) of a model's weights (Gowal et al. 2020, Rebuffi et al. 2021).

Every parameter is averaged, the shared layers' and every route's own (the normalization layers' affines of the
clean and the adv route alike). Buffers, among them each route's BN running statistics, are not averaged: they
are copied from the live model (:meth:`WeightAverage.copy_buffers`) whenever the average is used or saved, as the
PyTorch code of the generated-data papers does. Running statistics are already a moving average of batch
statistics; averaging them once more would make them lag behind the weights they normalize for.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

EMA_RAMP = 10  # the decay ramps up as (1 + t) / (EMA_RAMP + t) over the first updates


def ema_decay(step: int, decay: float, warmup_steps: int) -> float:
    """The decay of update ``step`` (0-based): 0 (copy the weights) during the learning-rate warm-up, then
    ``min(decay, (1 + t) / (10 + t))`` with ``t`` counted from the warm-up's end, so early, fast-changing weights
    are soon forgotten."""
    if step < warmup_steps:
        return 0.0
    t = step - warmup_steps
    return min(decay, (1 + t) / (EMA_RAMP + t))


class WeightAverage:
    """A copy of ``model`` whose parameters follow ``ema = d * ema + (1 - d) * live`` after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float, warmup_steps: int = 0) -> None:
        self.model = copy.deepcopy(model).requires_grad_(False)
        self.decay, self.warmup_steps = decay, warmup_steps

    @torch.no_grad()
    def update(self, live: nn.Module, step: int) -> None:
        """Average in the live weights after optimizer step ``step`` (0-based)."""
        weight = 1 - ema_decay(step, self.decay, self.warmup_steps)
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in live.parameters()], weight)

    @torch.no_grad()
    def copy_buffers(self, live: nn.Module) -> nn.Module:
        """Take every buffer (BN running statistics of every route, counters) from the live model; returns the
        averaged model, ready to validate or save."""
        for mine, theirs in zip(self.model.buffers(), live.buffers()):
            mine.copy_(theirs)
        return self.model
