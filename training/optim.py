"""SGD and the learning-rate schedule: linear warm-up, then a step decay at epoch milestones."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .config import TrainConfig


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum and weight decay on every parameter (as the SaBN and Madry recipes do)."""
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


def lr_factor(step: int, *, steps_per_epoch: int, milestones: Sequence[int], gamma: float,
              warmup_steps: int) -> float:
    """The multiplier of the base learning rate for optimizer step ``step`` (0-based).

    Warm-up ramps linearly over the first ``warmup_steps`` steps, from ``1 / warmup_steps`` to 1; the rate is
    multiplied by ``gamma`` once for every milestone epoch already reached. It depends on ``step`` alone, never on
    how long a run is allowed to go (``--max-steps``).
    """
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    epoch = step // steps_per_epoch
    return warmup * gamma ** sum(epoch >= m for m in milestones)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per optimizer step, following :func:`lr_factor`."""
    def factor(step: int) -> float:
        return lr_factor(step, steps_per_epoch=steps_per_epoch, milestones=config.milestones,
                         gamma=config.lr_gamma, warmup_steps=config.warmup_steps)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
