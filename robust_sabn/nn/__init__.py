"""Normalization layers (routed and plain), the WeightAlign convolution, and the controls that choose routes."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

from torch import nn

from ..errors import ConfigError
from ..registry import Registry
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

NORMS: Registry[Callable[..., nn.Module]] = Registry("norm")
"""Normalization layers by name, all taking the channel count first like ``nn.BatchNorm2d``. Routed kinds are
:class:`RoutedNorm` subclasses and also take ``routes``. ("none": no normalization, e.g. with WeightAlign convs.)"""
for _name, _layer in (("bn", nn.BatchNorm2d), ("gn", group_norm), ("calibrated_bn", CalibratedBatchNorm2d),
                      ("none", nn.Identity), ("sandwich", SandwichBatchNorm2d), ("dual", DualBatchNorm2d),
                      ("ubn", UnifiedBatchNorm2d)):
    NORMS.register(_name, _layer)

CONVS: Registry[type[nn.Conv2d]] = Registry("conv")
"""Convolution layers by name, all with ``nn.Conv2d``'s constructor."""
CONVS.register("standard", nn.Conv2d)
CONVS.register("weightalign", WeightAlignConv2d)


def is_routed(kind: str) -> bool:
    """Whether the norm registered as ``kind`` is a routed layer."""
    layer = NORMS[kind]
    return isinstance(layer, type) and issubclass(layer, RoutedNorm)


def routed_norm_class(kind: str) -> type[RoutedNorm]:
    """The routed layer class registered under ``kind`` ("sandwich", "dual", ...)."""
    if not is_routed(kind):
        routed = [name for name in NORMS if is_routed(name)]
        raise ConfigError(f"{kind!r} is not a routed norm; choose one of {routed}")
    return NORMS[kind]


def norm_factory(kind: str = "bn", routes: Sequence[str] = DEFAULT_ROUTES, **kwargs) -> Callable[[int], nn.Module]:
    """A ``num_features -> layer`` constructor for ``kind`` (a plain or a routed kind), as model builders take."""
    if is_routed(kind):
        return partial(NORMS[kind], routes=routes, **kwargs)
    return partial(NORMS[kind], **kwargs)


__all__ = [
    "CONVS", "DEFAULT_ROUTES", "Foldable", "NORMS", "CalibratedBatchNorm2d", "DualBatchNorm2d", "RoutedNorm",
    "SandwichBatchNorm2d", "UnifiedBatchNorm2d", "WeightAlignConv2d", "group_norm", "check_model_route", "is_routed",
    "layer_metrics", "norm_factory", "routed_layers", "routed_norm_class", "routes_of", "set_route", "split_routes",
    "use_route",
]
