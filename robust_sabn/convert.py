"""Exact conversion of any model's BatchNorm2d layers to routed layers, and folding a route back."""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

from torch import nn

from .errors import ConfigError
from .nn import DEFAULT_ROUTES, RoutedNorm, routed_norm_class
from .nn.routing import Foldable


def replace_modules(model: nn.Module, replace: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """Walk ``model`` top-down; where ``replace(m)`` returns a module, put it in place of ``m`` and do not
    descend into it. Returns the (possibly new) root."""
    new = replace(model)
    if new is not None:
        return new
    for name, child in model.named_children():
        new_child = replace_modules(child, replace)
        if new_child is not child:
            setattr(model, name, new_child)
    return model


def _is_plain_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, nn.BatchNorm2d) and type(module).forward is nn.BatchNorm2d.forward


def convert_norms(model: nn.Module, kind: str = "sandwich", routes: Sequence[str] = DEFAULT_ROUTES,
                  **layer_kwargs) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` of ``model`` (in place) by a routed layer of ``kind``.

    The function is preserved exactly on every route, in eval and train mode: the routed layer starts
    from the BN's affine and running statistics. Routed layers already in the model are left alone.
    ``layer_kwargs`` go to the layer's ``from_batchnorm`` (e.g. ``shared_stats=True`` for SaBN).
    Returns the model (a new object only when ``model`` itself is a BatchNorm2d).
    """
    layer_class = routed_norm_class(kind)

    def replace(module: nn.Module) -> nn.Module | None:
        if isinstance(module, RoutedNorm):
            return module
        if _is_plain_batchnorm(module):
            return layer_class.from_batchnorm(module, routes, **layer_kwargs)
        if isinstance(module, nn.BatchNorm2d):
            raise ConfigError(
                f"cannot convert {type(module).__name__} exactly: it subclasses nn.BatchNorm2d with its own "
                "forward; replace it by nn.BatchNorm2d (plus its extra ops) before convert_norms"
            )
        return None

    return replace_modules(model, replace)


def fold_route(model: nn.Module, route: str) -> nn.Module:
    """A copy of ``model`` in eval mode where every routed layer is replaced by its plain fold for ``route``.

    Routed norms become ``nn.BatchNorm2d`` with the route's statistics and composed affine; other layers
    with a ``fold(route)`` method (e.g. weight-normalized convolutions) become their plain equivalents.
    The copy computes exactly what ``model`` computes on ``route`` in eval mode and needs no routing.
    """
    folded = copy.deepcopy(model)

    def replace(module: nn.Module) -> nn.Module | None:
        return module.fold(route) if isinstance(module, Foldable) else None

    return replace_modules(folded, replace).eval()
