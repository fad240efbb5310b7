"""Group Normalization with a group count chosen from the width, for ``create_model(norm="gn")``."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

MAX_GROUPS = 32  # Wu & He's default group count
MIN_GROUP_CHANNELS = 4  # our choice: keeps small CPU-sized widths (16 channels -> 4 groups) from collapsing to IN


def default_num_groups(num_channels: int) -> int:
    """The largest divisor of ``num_channels`` that is at most 32 and leaves at least 4 channels per group
    (64 -> 16, 128+ -> 32, 16 -> 4, 8 -> 2, fewer than 8 -> 1, i.e. LayerNorm over the channels)."""
    limit = max(1, min(MAX_GROUPS, num_channels // MIN_GROUP_CHANNELS))
    return max(g for g in range(1, limit + 1) if num_channels % g == 0)


def group_norm(num_features: int, num_groups: int | None = None, eps: float = 1e-5, affine: bool = True,
               device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> nn.GroupNorm:
    """``nn.GroupNorm`` over ``num_features`` channels with ``num_groups`` groups (default: :func:`default_num_groups`).

    Takes the channel count first, like ``nn.BatchNorm2d``, so model builders can use it as their norm layer.
    """
    groups = default_num_groups(num_features) if num_groups is None else num_groups
    if groups < 1 or num_features % groups:
        raise ConfigError(f"GroupNorm needs num_groups dividing every width; {num_features} channels cannot be split "
                          f"into {groups} groups (leave num_groups unset to choose per layer)")
    return nn.GroupNorm(groups, num_features, eps, affine, device=device, dtype=dtype)
