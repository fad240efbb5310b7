"""Routes: which normalization path a routed layer uses, always chosen from outside the layer.

A *route* is a named path through a routed normalization layer ("clean" and "adv" by default; any
names, e.g. one per domain or class). Three ways to choose it:

- ``with use_route(model, "adv"): model(x)`` -- the whole batch takes one route;
- ``with split_routes(model, clean=n, adv=m): model(torch.cat([x, x_adv]))`` -- one forward over a
  joined batch; each contiguous chunk is normalized by its own route (convolutions run once);
- ``set_route(model, "adv")`` -- a lasting choice, e.g. before handing the model to another library.

A routed layer run with no route chosen raises :class:`RouteError` instead of guessing.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import DEFAULT_ROUTES
from ..errors import RouteError


def check_route_names(routes: Sequence[str]) -> tuple[str, ...]:
    """Validate route names: a non-empty sequence of distinct Python identifiers."""
    if isinstance(routes, str):
        routes = (routes,)
    routes = tuple(routes)
    if not routes:
        raise RouteError("a routed layer needs at least one route name, e.g. routes=('clean', 'adv')")
    for name in routes:
        if not isinstance(name, str) or not name.isidentifier():
            raise RouteError(f"route names must be identifiers like 'clean' or 'adv', got {name!r}")
    if len(set(routes)) != len(routes):
        raise RouteError(f"route names must be distinct, got {routes}")
    return routes


class Foldable:
    """Mixin for modules that :func:`robust_sabn.fold_route` replaces by a plain equivalent."""

    def fold(self, route: str) -> nn.Module:
        """A plain module computing what this one computes on ``route`` in eval mode."""
        raise NotImplementedError


class RoutedNorm(Foldable, nn.Module):
    """Base class of normalization layers with named routes.

    Subclasses implement :meth:`forward_route` (normalize a batch on one route), :meth:`fold`
    (a plain module computing one route in eval mode) and :meth:`from_batchnorm` (exact conversion).
    """

    def __init__(self, num_features: int, routes: Sequence[str] = DEFAULT_ROUTES) -> None:
        super().__init__()
        self.num_features = num_features
        self.routes = check_route_names(routes)
        self.route_index = {name: i for i, name in enumerate(self.routes)}
        self.route: str | None = None
        self.split: tuple[tuple[str, int], ...] | None = None

    def check_route(self, route: str) -> None:
        if route not in self.route_index:
            raise RouteError(f"unknown route {route!r}; this model's routes are {list(self.routes)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split is not None:
            return self._forward_split(x)
        if self.route is None:
            raise RouteError(
                f"{type(self).__name__} ran with no route chosen; wrap the call in "
                f"`with robust_sabn.use_route(model, {self.routes[-1]!r}):`, call "
                f"`robust_sabn.set_route(model, {self.routes[-1]!r})`, or export one route with "
                f"`robust_sabn.fold_route(model, {self.routes[-1]!r})`"
            )
        return self.forward_route(x, self.route)

    def _forward_split(self, x: torch.Tensor) -> torch.Tensor:
        sizes = [n for _, n in self.split]
        if sum(sizes) != x.shape[0]:
            raise RouteError(
                f"split_routes sizes {dict(self.split)} add up to {sum(sizes)} but the batch has "
                f"{x.shape[0]} samples; pass sizes that add up to the batch"
            )
        chunks = [c for c, n in zip(x.split(sizes), sizes) if n > 0]
        routes = [r for r, n in self.split if n > 0]
        return torch.cat([self.forward_route(c, r) for c, r in zip(chunks, routes)])

    def forward_route(self, x: torch.Tensor, route: str) -> torch.Tensor:
        raise NotImplementedError

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, routes: Sequence[str] = DEFAULT_ROUTES, **kwargs) -> RoutedNorm:
        raise NotImplementedError

    @classmethod
    def folded_norm(cls, **kwargs) -> tuple[str, dict]:
        """The ``create_model`` norm kind and kwargs of this layer's fold, given its constructor kwargs: a plain
        BatchNorm2d with the BN settings among them."""
        return "bn", {k: v for k, v in kwargs.items() if k in ("eps", "momentum", "affine", "track_running_stats")}

    def extra_repr(self) -> str:
        return f"{self.num_features}, routes={self.routes}"


def batch_norm_affine(stats: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Normalize ``x`` with an affine-free BN ``stats`` module, then scale by ``weight`` and shift by ``bias``.

    A plain ``nn.BatchNorm2d`` takes the fused path (statistics and affine in one kernel, running
    statistics updated exactly as the module itself would); any other statistics module (e.g. the
    ``nn.SyncBatchNorm`` that ``convert_sync_batchnorm`` puts in its place) is called, then the affine applied.
    """
    if type(stats) is not nn.BatchNorm2d:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(bias.view(shape), stats(x), weight.view(shape))
    momentum = 0.0 if stats.momentum is None else stats.momentum
    if stats.training and stats.track_running_stats:
        stats.num_batches_tracked.add_(1)
        if stats.momentum is None:  # cumulative moving average, as nn.BatchNorm2d does
            momentum = 1.0 / float(stats.num_batches_tracked)
    use_batch_stats = stats.training or stats.running_mean is None
    keep_running = not stats.training or stats.track_running_stats
    return F.batch_norm(
        x,
        stats.running_mean if keep_running else None,
        stats.running_var if keep_running else None,
        weight,
        bias,
        use_batch_stats,
        momentum,
        stats.eps,
    )


def routed_layers(model: nn.Module) -> list[RoutedNorm]:
    return [m for m in model.modules() if isinstance(m, RoutedNorm)]


def routes_of(model: nn.Module) -> tuple[str, ...]:
    """The routes of a model's routed layers, in order (empty for a model without routed layers)."""
    names: dict[str, None] = {}
    for layer in routed_layers(model):
        names.update(dict.fromkeys(layer.routes))
    return tuple(names)


def check_model_route(model: nn.Module, route: str | None, verb: str = "use") -> tuple[str, ...]:
    """``model``'s routes, after checking that ``route`` names one of them (``None`` only for a model without
    routed layers); ``verb`` ("evaluate", "export") words the error."""
    routes = routes_of(model)
    if routes and route is None:
        raise RouteError(f"this model has routes {list(routes)}; pass the route to {verb}, e.g. route={routes[-1]!r}")
    if not routes and route is not None:
        raise RouteError(f"this model has no routed layers; {verb} it with route=None (got {route!r})")
    if route is not None and route not in routes:
        raise RouteError(f"unknown route {route!r}; this model's routes are {list(routes)}")
    return routes


def _check_known(layers: list[RoutedNorm], routes: Sequence[str]) -> None:
    for layer in layers:
        for route in routes:
            layer.check_route(route)


def set_route(model: nn.Module, route: str | None) -> nn.Module:
    """Make every routed layer of ``model`` use ``route`` until changed (``None`` clears it).

    A model without routed layers is returned unchanged, so code can treat all models alike.
    """
    layers = routed_layers(model)
    if route is not None:
        _check_known(layers, [route])
    for layer in layers:
        layer.route = route
    return model


@contextmanager
def use_route(model: nn.Module, route: str) -> Iterator[nn.Module]:
    """Run every routed layer of ``model`` on ``route`` inside the block; the previous choice is restored."""
    layers = routed_layers(model)
    _check_known(layers, [route])
    saved = [(layer.route, layer.split) for layer in layers]
    for layer in layers:
        layer.route, layer.split = route, None
    try:
        yield model
    finally:
        for layer, (route_, split) in zip(layers, saved):
            layer.route, layer.split = route_, split


@contextmanager
def split_routes(model: nn.Module, **sizes: int) -> Iterator[nn.Module]:
    """Normalize contiguous chunks of one joined batch by their own routes, in the order given.

    ``with split_routes(model, clean=64, adv=64): model(torch.cat([x, x_adv]))`` gives the same outputs,
    gradients and running-statistics updates as two separate forwards, with one pass of every convolution.
    """
    if not sizes:
        raise RouteError("split_routes needs chunk sizes, e.g. split_routes(model, clean=64, adv=64)")
    for route, n in sizes.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise RouteError(f"split_routes size for route {route!r} must be a non-negative int, got {n!r}")
    layers = routed_layers(model)
    _check_known(layers, list(sizes))
    saved = [layer.split for layer in layers]
    split = tuple(sizes.items())
    for layer in layers:
        layer.split = split
    try:
        yield model
    finally:
        for layer, split_ in zip(layers, saved):
            layer.split = split_


def layer_metrics(model: nn.Module) -> dict[str, float]:
    """Mean over layers of the values each layer reports through a ``layer_metrics()`` method (e.g. UBN's
    feature condensation), keyed by metric name; training logs them."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for module in model.modules():
        report = getattr(module, "layer_metrics", None)
        if not callable(report):
            continue
        for key, value in report().items():
            sums[key] = sums.get(key, 0.0) + float(value)
            counts[key] = counts.get(key, 0) + 1
    return {key: sums[key] / counts[key] for key in sums}
