"""SGD and the learning-rate schedule: a linear warm-up, then a step decay at epoch milestones, a cosine decay or
a one-cycle (triangular) schedule; the factor at each step is a pure function of that step."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .config import TrainConfig

ONECYCLE_PEAK = 0.4  # one-cycle's default peak: at 2/5 of the run (Wong et al. 2020's cyclic schedule)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum and weight decay on every parameter (as the SaBN and Madry recipes do)."""
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def lr_factor(step: int, *, steps_per_epoch: int, milestones: Sequence[int], gamma: float, warmup_steps: int,
              schedule: str = "step", total_steps: int | None = None) -> float:
    """The multiplier of the base learning rate for optimizer step ``step`` (0-based).

    - ``step``: a linear warm-up over the first ``warmup_steps`` steps, from ``1 / warmup_steps`` to 1, times
      ``gamma`` once for every milestone epoch already reached;
    - ``cosine``: the same warm-up, then ``(1 + cos(pi * t)) / 2`` where ``t`` runs from 0 after the warm-up to 1 at
      ``total_steps`` (the whole schedule: epochs x steps per epoch);
    - ``onecycle``: a linear rise from 0 to 1 until the peak (``warmup_steps``, or 2/5 of ``total_steps`` when it
      is 0), then a linear fall to 0 at ``total_steps``.

    It depends on ``step`` and the schedule's length alone, never on how long a run is allowed to go
    (``--max-steps``).
    """
    if schedule == "onecycle":
        peak = warmup_steps or max(1, round(ONECYCLE_PEAK * total_steps))
        if step < peak:
            return (step + 1) / peak
        return max(0.0, (total_steps - step) / max(1, total_steps - peak))
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    if schedule == "cosine":
        t = min(1.0, max(0, step - warmup_steps) / max(1, total_steps - warmup_steps))
        return warmup * (1 + math.cos(math.pi * t)) / 2
    epoch = step // steps_per_epoch
    return warmup * gamma ** sum(epoch >= m for m in milestones)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per optimizer step, following :func:`lr_factor`."""
    def factor(step: int) -> float:
        return lr_factor(step, steps_per_epoch=steps_per_epoch, milestones=config.milestones,
                         gamma=config.lr_gamma, warmup_steps=config.warmup_steps, schedule=config.lr_schedule,
                         total_steps=config.epochs * steps_per_epoch)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
