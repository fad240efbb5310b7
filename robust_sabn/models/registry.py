"""Model registry: names to builders, in the manner of timm's ``create_model``."""
from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ..nn import CONVS, DEFAULT_ROUTES, norm_factory
from ..registry import Registry
from .arguments import check_model_arguments

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: make ``builder`` available to :func:`create_model` under its function name (once)."""
    return MODELS.register(builder.__name__, builder)


def list_models() -> list[str]:
    return sorted(MODELS)


def create_model(
    name: str,
    num_classes: int = 10,
    norm: str = "bn",
    in_channels: int = 3,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    routes: Sequence[str] = DEFAULT_ROUTES,
    conv: str = "standard",
    norm_kwargs: dict | None = None,
    **kwargs,
) -> nn.Module:
    """Build a zoo model taking inputs in [0, 1] (NCHW) and normalizing them inside with ``mean``/``std``.

    ``norm`` picks the normalization layer ("bn", "sandwich", "dual", ...; ``routes`` names the routes of
    routed kinds), ``conv`` the convolution ("standard", ...); ``norm_kwargs`` go to every norm layer and
    ``kwargs`` to the builder (e.g. ``width`` for ``resnet_small``). Every argument is checked first (see
    :mod:`robust_sabn.models.arguments`). The model's ``model_spec`` attribute records these arguments (see
    :mod:`robust_sabn.models.spec`).
    """
    builder = MODELS[name]
    check_model_arguments(name, builder, {
        "num_classes": num_classes, "norm": norm, "in_channels": in_channels, "mean": mean, "std": std,
        "routes": routes, "conv": conv, "norm_kwargs": norm_kwargs, **kwargs})
    mean = tuple(mean) if mean is not None else (0.0,) * in_channels
    std = tuple(std) if std is not None else (1.0,) * in_channels
    model = builder(
        num_classes=num_classes,
        in_channels=in_channels,
        mean=mean,
        std=std,
        norm_layer=norm_factory(norm, routes, **(norm_kwargs or {})),
        conv_layer=CONVS[conv],
        **kwargs,
    )
    model.model_spec = {"arch": name, "kwargs": {
        "num_classes": num_classes, "norm": norm, "in_channels": in_channels, "mean": list(mean), "std": list(std),
        "routes": list(routes), "conv": conv, "norm_kwargs": dict(norm_kwargs or {}), **kwargs}}
    return model
