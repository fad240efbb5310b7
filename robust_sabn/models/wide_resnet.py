"""Wide ResNets (Zagoruyko & Komodakis) in the pre-activation form of TRADES and RobustBench."""
from __future__ import annotations

from .preact_resnet import PreActResNet
from .registry import register_model


def wide_resnet(depth: int, widen_factor: int, **kwargs) -> PreActResNet:
    """WRN-``depth``-``widen_factor``: three stages of (depth - 4) / 6 blocks after a 16-channel stem."""
    n = (depth - 4) // 6
    widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
    return PreActResNet((n, n, n), widths, stem_width=16, **kwargs)


@register_model
def wide_resnet28_10(**kwargs) -> PreActResNet:
    return wide_resnet(28, 10, **kwargs)


@register_model
def wide_resnet34_10(**kwargs) -> PreActResNet:
    return wide_resnet(34, 10, **kwargs)
