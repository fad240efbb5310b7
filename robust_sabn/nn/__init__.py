"""Normalization layers (routed and plain), the WeightAlign convolution, and the controls that choose routes."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from torch import nn

from ..errors import ConfigError
from .dual import DualBatchNorm2d
from .groupnorm import group_norm
from .routing import (
    DEFAULT_ROUTES,
    Foldable,
    RoutedNorm,
    check_model_route,
    layer_metrics,
    routed_layers,
    routes_of,
    set_route,
    split_routes,
    use_route,
)
from .sandwich import SandwichBatchNorm2d
from .unified import CalibratedBatchNorm2d, UnifiedBatchNorm2d
from .weightalign import WeightAlignConv2d

# Single-path layers taking the channel count first ("none" = no normalization, e.g. with WeightAlign convs).
PLAIN_NORMS: dict[str, Callable[..., nn.Module]] = {
    "bn": nn.BatchNorm2d,
    "gn": group_norm,
    "calibrated_bn": CalibratedBatchNorm2d,
    "none": nn.Identity,
}

ROUTED_NORMS: dict[str, type[RoutedNorm]] = {
    "sandwich": SandwichBatchNorm2d,
    "dual": DualBatchNorm2d,
    "ubn": UnifiedBatchNorm2d,
}


def norm_kinds() -> tuple[str, ...]:
    """Every value ``create_model(norm=...)`` accepts."""
    return (*PLAIN_NORMS, *ROUTED_NORMS)


def routed_norm_class(kind: str) -> type[RoutedNorm]:
    """The routed layer class registered under ``kind`` ("sandwich", "dual", ...)."""
    if kind not in ROUTED_NORMS:
        raise ConfigError(f"unknown routed norm {kind!r}; choose one of {list(ROUTED_NORMS)}")
    return ROUTED_NORMS[kind]


def norm_factory(kind: str = "bn", routes: Sequence[str] = DEFAULT_ROUTES, **kwargs) -> Callable[[int], nn.Module]:
    """A ``num_features -> layer`` constructor for ``kind`` (a plain or a routed kind), as model builders take."""
    if kind in PLAIN_NORMS:
        return partial(PLAIN_NORMS[kind], **kwargs)
    if kind not in ROUTED_NORMS:
        raise ConfigError(f"unknown norm {kind!r}; choose one of {list(norm_kinds())}")
    return partial(ROUTED_NORMS[kind], routes=routes, **kwargs)


__all__ = [
    "DEFAULT_ROUTES", "Foldable", "PLAIN_NORMS", "ROUTED_NORMS", "CalibratedBatchNorm2d", "DualBatchNorm2d",
    "RoutedNorm", "SandwichBatchNorm2d", "UnifiedBatchNorm2d", "WeightAlignConv2d", "group_norm",
    "check_model_route", "layer_metrics", "norm_factory", "norm_kinds", "routed_layers", "routed_norm_class",
    "routes_of", "set_route", "split_routes", "use_route",
]
