"""Route mixing: one plain model between the routes of a routed model (e.g. between "clean" and "adv").

In eval mode a routed norm computes, on route ``r`` and per channel, one affine map ``a_r * x + c_r`` of its input:
exactly what ``fold(r)`` holds as a plain ``nn.BatchNorm2d``. A convex combination of the routes' maps is again one
affine map per channel, so it folds into one plain ``nn.BatchNorm2d``; every convolution is shared by the routes,
so the mixed model costs what a single route costs. See docs/route-mixing.md.
"""
from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction

import torch
from torch import nn

from .constants import ADV_ROUTE, CLEAN_ROUTE
from .convert import fold_route, replace_modules
from .errors import ConfigError, RouteError
from .nn import CalibratedBatchNorm2d, Foldable, RoutedNorm, routes_of
from .nn.stats import module_factory_kwargs

WEIGHT_TOLERANCE = 1e-6  # how far from 1 the weights' sum may be (then they are divided by it)
MAX_GRID_POINTS = 1001  # a trade-off grid longer than this is a typo, e.g. a step of 0.0001 for 0.1
MAX_DECIMALS = 9  # finer trade-offs change no prediction a float32 model makes


def mix_routes(model: nn.Module, weights: Mapping[str, float]) -> nn.Module:
    """A copy of ``model`` in eval mode whose every routed layer computes ``sum_r weights[r] * (route r)``.

    ``weights`` maps route names to non-negative weights adding up to 1 (routes not named get 0), e.g.
    ``{"clean": 1 - t, "adv": t}`` (see :func:`mixture_weights`). Each routed norm becomes one plain
    ``nn.BatchNorm2d`` computing the convex combination of its routes' eval-mode normalizations; other foldable
    layers (WeightAlign convolutions, which no route changes) fold as in :func:`robust_sabn.fold_route`. Weights
    that select one route give exactly ``fold_route(model, route)``. Like ``fold_route``'s, the copy keeps
    ``model.model_spec``; its architecture is ``fold_spec(model.model_spec)``, the same for every mixture.
    A calibrated UBN (``calibration=True``) folds single routes only: its routes do not mix into one layer.
    """
    weights = check_weights(model, weights)
    active = {route: w for route, w in weights.items() if w > 0}
    if len(active) == 1:
        return fold_route(model, next(iter(active)))
    heaviest = max(active, key=active.__getitem__)
    mixed = copy.deepcopy(model)
    names = {id(module): name for name, module in mixed.named_modules()}

    def replace(module: nn.Module) -> nn.Module | None:
        if isinstance(module, RoutedNorm):
            return _mix_layer(module, active, names[id(module)])
        return module.fold(heaviest) if isinstance(module, Foldable) else None

    return replace_modules(mixed, replace).eval()


def _routes_to_mix(model: nn.Module) -> list[str]:
    routes = routes_of(model)
    if not routes:
        raise RouteError("this model has no routed layers, so there are no routes to mix; mix a model with routed "
                         "norms (e.g. norm='sandwich')")
    return list(routes)


def check_weights(model: nn.Module, weights: Mapping[str, float]) -> dict[str, float]:
    """``weights`` checked against ``model``'s routes and divided by their sum: one float per route of the model,
    in the model's route order (0 for routes not named)."""
    routes = _routes_to_mix(model)
    example = f"{{{routes[0]!r}: 0.5, {routes[-1]!r}: 0.5}}"
    if not isinstance(weights, Mapping) or not weights:
        raise ConfigError(f"route weights must be a non-empty mapping of route to weight, e.g. {example}")
    unknown = [route for route in weights if route not in routes]
    if unknown:
        raise RouteError(f"unknown route(s) {unknown} in the route weights; this model's routes are {list(routes)}")
    for route, weight in weights.items():
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
            raise ConfigError(f"the weight of route {route!r} must be a finite number, got {weight!r}")
        if weight < 0:
            raise ConfigError(f"route weights must be non-negative (a convex combination), got {route}={weight}")
    total = math.fsum(float(w) for w in weights.values())
    if abs(total - 1) > WEIGHT_TOLERANCE:
        raise ConfigError(f"route weights must add up to 1, got {total:.9g} from {dict(weights)}; e.g. {example}")
    return {route: float(weights.get(route, 0.0)) / total for route in routes}


def describe_mixture(weights: Mapping[str, float]) -> str:
    """``{"clean": 0.3, "adv": 0.7}`` -> ``"mixture 0.3 clean + 0.7 adv"`` (routes of weight 0 left out)."""
    return "mixture " + " + ".join(f"{w:g} {route}" for route, w in weights.items() if w > 0)


def mixture_weights(model: nn.Module, t: float, clean: str = CLEAN_ROUTE, adv: str = ADV_ROUTE) -> dict[str, float]:
    """The weights of trade-off ``t`` in [0, 1] between two routes: ``{clean: 1 - t, adv: t}`` (0 is the clean
    route, 1 the adversarial one)."""
    if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0 <= t <= 1:
        raise ConfigError(f"the trade-off t must be a number in [0, 1] (0 = route {clean!r}, 1 = route {adv!r}), "
                          f"got {t!r}")
    routes = _routes_to_mix(model)
    missing = [route for route in (clean, adv) if route not in routes]
    if missing:
        raise RouteError(f"this model has no route(s) {missing} to trade off (its routes are {list(routes)}); "
                         "name the two routes to mix")
    return {clean: 1 - float(t), adv: float(t)}


def parse_tradeoffs(text: str) -> list[float]:
    """Trade-offs ``t`` in [0, 1] from ``"start:stop:step"`` (``stop`` included when on the grid) or a comma list.

    Points are computed in exact decimal arithmetic: ``"0:1:0.1"`` gives ``[0.0, 0.1, 0.2, ..., 1.0]``, each the
    float nearest its decimal value (0.3, not 0.30000000000000004).
    """
    fields = text.split(":") if isinstance(text, str) else None
    if fields is None or len(fields) not in (1, 3):
        raise ConfigError(f"trade-offs must look like 'start:stop:step' (e.g. '0:1:0.1') or '0,0.5,1', got {text!r}")
    if len(fields) == 1:
        points = [_decimal(field, text) for field in text.split(",")]
    else:
        start, stop, step = (_decimal(field, text) for field in fields)
        if not start <= stop or step <= 0:
            raise ConfigError(f"trade-off grid {text!r} needs 0 <= start <= stop <= 1 and a positive step, "
                              "e.g. '0:1:0.1'")
        count = math.floor((stop - start) / step) + 1
        if count > MAX_GRID_POINTS:
            raise ConfigError(f"trade-off grid {text!r} has {count} points, more than {MAX_GRID_POINTS}; "
                              "use a larger step")
        points = [start + i * step for i in range(count)]
    return [float(p) for p in points]


def _decimal(field: str, text: str) -> Fraction:
    """A number of the trade-offs, exactly: a decimal (read as a Decimal first, so that "1e999" or "1e-999999999"
    is refused without expanding it digit by digit) or a fraction, in [0, 1] with at most
    :data:`MAX_DECIMALS` decimal places."""
    field = field.strip()
    try:
        number = Fraction(field) if "/" in field else Decimal(field)
    except (ValueError, ZeroDivisionError, InvalidOperation):
        raise ConfigError(f"{field!r} in the trade-offs {text!r} is not a decimal number") from None
    if (isinstance(number, Decimal) and not number.is_finite()) or not 0 <= number <= 1:
        raise ConfigError(f"trade-offs must lie in [0, 1] (0 = clean route, 1 = adv route), got {field!r} from "
                          f"{text!r}")
    if isinstance(number, Decimal) and number != number.quantize(Decimal(10) ** -MAX_DECIMALS):
        raise ConfigError(f"trade-offs take at most {MAX_DECIMALS} decimal places, got {field!r} from {text!r}")
    return Fraction(number)


def _mix_layer(layer: RoutedNorm, weights: Mapping[str, float], name: str) -> nn.BatchNorm2d:
    folds = [layer.fold(route) for route in weights]
    for fold in folds:
        if type(fold) is not nn.BatchNorm2d:
            reason = ("its calibration gate depends on each sample's standardized input"
                      if isinstance(fold, CalibratedBatchNorm2d) else f"a route folds into {type(fold).__name__}")
            raise ConfigError(f"the routes of {type(layer).__name__} {name!r} do not mix into one layer ({reason}); "
                              "export a single route with fold_route, or mix a model without such layers")
    return mix_batchnorms(folds, list(weights.values()), name)


@torch.no_grad()
def mix_batchnorms(bns: Sequence[nn.BatchNorm2d], weights: Sequence[float], name: str = "") -> nn.BatchNorm2d:
    """A plain BN whose eval-mode output is ``sum_i weights[i] * bns[i](x)`` (all in eval mode).

    With running statistics, BN ``i`` computes ``a_i * x + c_i`` per channel (``a_i = gamma_i / sqrt(var_i + eps)``,
    ``c_i = beta_i - a_i * mean_i``). The mixture keeps the weighted means of the running statistics and solves its
    affine from ``A = sum_i w_i a_i`` and ``C = sum_i w_i c_i`` (an affine-free mixture solves its statistics
    instead). Without running statistics every BN standardizes by the batch alike, and the affines mix directly.
    Computed in float64; other settings (eps, momentum, batch count) are those of the heaviest BN.
    """
    settings = {(bn.eps, bn.affine, bn.running_mean is None) for bn in bns}
    if len(settings) > 1:
        raise ConfigError(f"the route folds of {name!r} differ in eps, affine or running statistics, so their "
                          "mixture is not one BatchNorm2d; give every route the same settings")
    mixed = copy.deepcopy(bns[max(range(len(bns)), key=lambda i: weights[i])])
    eps = mixed.eps
    device = module_factory_kwargs(mixed)["device"]
    w = torch.tensor(weights, dtype=torch.float64, device=device)[:, None]
    ones = torch.ones(mixed.num_features, dtype=torch.float64, device=device)
    gamma = torch.stack([bn.weight.double() if bn.affine else ones for bn in bns])
    beta = torch.stack([bn.bias.double() if bn.affine else 0 * ones for bn in bns])
    if mixed.running_mean is None:
        if mixed.affine:
            mixed.weight.copy_((w * gamma).sum(0))
            mixed.bias.copy_((w * beta).sum(0))
        return mixed.eval()
    means = torch.stack([bn.running_mean.double() for bn in bns])
    variances = torch.stack([bn.running_var.double() for bn in bns])
    scales = gamma * torch.rsqrt(variances + eps)
    scale, shift = (w * scales).sum(0), (w * (beta - scales * means)).sum(0)
    if mixed.affine:
        mean, var = (w * means).sum(0), (w * variances).sum(0)
        mixed.weight.copy_(scale * torch.sqrt(var + eps))
        mixed.bias.copy_(shift + scale * mean)
    else:  # (x - mean) / sqrt(var + eps) = scale * x + shift, with scale > 0
        mean, var = -shift / scale, (scale.square().reciprocal() - eps).clamp_min(0)
    mixed.running_mean.copy_(mean)
    mixed.running_var.copy_(var)
    return mixed.eval()
