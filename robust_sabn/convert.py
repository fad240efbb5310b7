"""Exact conversion of any model's BatchNorm2d layers to routed layers, and folding a route back."""
from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence

from torch import nn

from .errors import ConfigError
from .nn import CONVS, DEFAULT_ROUTES, NORMS, RoutedNorm, is_routed, routed_norm_class
from .nn.routing import Foldable, check_route_names


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


_SHARED_NORM_KWARGS = ("eps", "momentum", "track_running_stats")  # taken by BN and every routed kind


def _zoo_spec_kwargs(model: nn.Module) -> dict | None:
    """The ``create_model`` kwargs in a zoo model's ``model_spec`` (edited in place), or None."""
    spec = getattr(model, "model_spec", None)
    return spec.setdefault("kwargs", {}) if isinstance(spec, dict) and "arch" in spec else None


def convert_norms(model: nn.Module, kind: str = "sandwich", routes: Sequence[str] = DEFAULT_ROUTES,
                  **layer_kwargs) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` of ``model`` (in place) by a routed layer of ``kind``.

    The function is preserved exactly on every route, in eval and train mode: the routed layer starts
    from the BN's affine and running statistics. Routed layers already in the model are left alone.
    ``layer_kwargs`` go to the layer's ``from_batchnorm`` (e.g. ``shared_stats=True`` for SaBN).
    A zoo model built with ``norm="bn"`` gets its ``model_spec`` updated to the new kind, so that checkpoints
    and exports rebuild the converted model. Returns the model (a new object only when it is a BatchNorm2d).
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

    converted = replace_modules(model, replace)
    spec_kwargs = _zoo_spec_kwargs(converted)
    if spec_kwargs is not None and spec_kwargs.get("norm", "bn") == "bn":
        kept = {k: v for k, v in (spec_kwargs.get("norm_kwargs") or {}).items() if k in _SHARED_NORM_KWARGS}
        spec_kwargs.update(norm=kind, routes=list(check_route_names(routes)), norm_kwargs={**kept, **layer_kwargs})
    return converted


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


def fold_spec(spec: Mapping) -> dict:
    """The architecture spec of ``fold_route(build_model(spec), route)`` (the same for every route).

    Routed norms become the kind their ``fold`` returns (their class's ``folded_norm``: "bn", or "calibrated_bn"
    for calibrated UBN), foldable convolutions (WeightAlign) become "standard"; norm kwargs the folded
    layer does not take are dropped. A ``callable`` spec is returned unchanged.
    """
    spec = copy.deepcopy(dict(spec))
    if "arch" not in spec:
        return spec
    kwargs = spec.setdefault("kwargs", {})
    norm = kwargs.get("norm", "bn")
    if is_routed(norm):
        kwargs["norm"], kwargs["norm_kwargs"] = NORMS[norm].folded_norm(**(kwargs.get("norm_kwargs") or {}))
    if issubclass(CONVS[kwargs.get("conv", "standard")], Foldable):
        kwargs["conv"] = "standard"
    return spec


def convert_convs(model: nn.Module, kind: str = "weightalign", **layer_kwargs) -> nn.Module:
    """Replace every plain ``nn.Conv2d`` of ``model`` (in place) by a convolution of ``kind`` built by its
    ``from_conv`` (``layer_kwargs`` go there). Returns the model (a new object only when it is a Conv2d).

    Does NOT preserve the function in general: WeightAlign removes each filter's mean (its gains are set to
    keep each filter's spread; see ``WeightAlignConv2d.from_conv``), so fine-tune after converting.
    ``fold_route`` turns the convolutions back into plain ``nn.Conv2d`` with the aligned weights.
    A zoo model built with ``conv="standard"`` gets ``conv=kind`` in its ``model_spec``; with ``layer_kwargs``
    (which a spec cannot record) its ``model_spec`` is removed, so exports must name the architecture.
    """
    layer_class = CONVS[kind]
    if not hasattr(layer_class, "from_conv"):
        convertible = [name for name, cls in CONVS.items() if hasattr(cls, "from_conv")]
        raise ConfigError(f"conv kind {kind!r} has no conversion from nn.Conv2d; choose one of {convertible}")

    def replace(module: nn.Module) -> nn.Module | None:
        return layer_class.from_conv(module, **layer_kwargs) if type(module) is nn.Conv2d else None

    converted = replace_modules(model, replace)
    spec_kwargs = _zoo_spec_kwargs(converted)
    if spec_kwargs is not None and spec_kwargs.get("conv", "standard") == "standard":
        if layer_kwargs:
            del converted.model_spec
        else:
            spec_kwargs["conv"] = kind
    return converted
