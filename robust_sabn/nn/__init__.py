"""Routed normalization layers and the controls that choose their route."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from torch import nn

from ..errors import ConfigError
from .dual import DualBatchNorm2d
from .routing import (
    DEFAULT_ROUTES,
    Foldable,
    RoutedNorm,
    layer_metrics,
    routed_layers,
    routes_of,
    set_route,
    split_routes,
    use_route,
)
from .sandwich import SandwichBatchNorm2d

ROUTED_NORMS: dict[str, type[RoutedNorm]] = {
    "sandwich": SandwichBatchNorm2d,
    "dual": DualBatchNorm2d,
}


def norm_kinds() -> tuple[str, ...]:
    """Every value ``create_model(norm=...)`` accepts."""
    return ("bn", *ROUTED_NORMS)


def routed_norm_class(kind: str) -> type[RoutedNorm]:
    """The routed layer class registered under ``kind`` ("sandwich", "dual", ...)."""
    if kind not in ROUTED_NORMS:
        raise ConfigError(f"unknown routed norm {kind!r}; choose one of {list(ROUTED_NORMS)}")
    return ROUTED_NORMS[kind]


def norm_factory(kind: str = "bn", routes: Sequence[str] = DEFAULT_ROUTES, **kwargs) -> Callable[[int], nn.Module]:
    """A ``num_features -> layer`` constructor for ``kind`` ("bn" or a routed kind), as model builders take."""
    if kind == "bn":
        return partial(nn.BatchNorm2d, **kwargs)
    if kind not in ROUTED_NORMS:
        raise ConfigError(f"unknown norm {kind!r}; choose one of {list(norm_kinds())}")
    return partial(ROUTED_NORMS[kind], routes=routes, **kwargs)


__all__ = [
    "DEFAULT_ROUTES", "Foldable", "ROUTED_NORMS", "DualBatchNorm2d", "RoutedNorm", "SandwichBatchNorm2d",
    "layer_metrics", "norm_factory", "norm_kinds", "routed_layers", "routed_norm_class", "routes_of", "set_route", "split_routes", "use_route",
]
