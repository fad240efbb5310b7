"""Unified Batch Normalization (UBN, Wang et al. 2023, arXiv 2311.15993), routed like the other norms.

The paper's method section could not be read, so this module implements a documented reading of it
(see the class docstrings); every constant that is a choice is a constructor argument.

- Stage 1, feature condensation threshold: measure how similar the samples of a training batch are and
  leave the running statistics alone when they are too similar ("condensed"). Which features the paper
  compares and its threshold are unverified. Measured here on preact_resnet18 (Fashion-MNIST, first 60
  steps), the mean pairwise cosine of per-sample feature maps centered by the batch's channel means is
  0.11-0.35 on ordinary batches, 0.49-0.65 on batches of one class and ~1.0 on batches of (noisy) copies of
  one image: so centered maps are the default features and ``tau = 0.8`` skips only strongly condensed
  batches. Uncentered per-sample channel means (another reading of the paper, ``features="channel_mean"``) read
  0.44-0.94 on ordinary batches, and on one-channel images the first norm after the stem reads 1.0 on every
  batch (its channel means are all proportional to one vector), so no ``tau < 1`` would let it ever update.
- Stage 2, unified calibration: a per-sample centering calibration before, and a gated scaling calibration
  after, the batch standardization, followed by the BN affine (the form of Representative BN, Gao et al. 2021,
  the published candidate; its gate is changed so that a fresh layer equals BN).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .routing import DEFAULT_ROUTES, RoutedNorm, batch_norm_affine
from .stats import copy_running_stats, module_factory_kwargs

DEFAULT_TAU = 0.8  # our choice (see the module docstring)
CONDENSATION_FEATURES = ("map", "channel_mean")


def sample_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample, per-channel (variance, mean) over the spatial dimensions, N x C each, in at least float32.

    Two passes (the mean, then the mean squared deviation from it): as stable as ``torch.var_mean`` and, on the
    CPU, over ten times faster than its per-element Welford update (measured: 0.3 ms against 4.8 ms on a
    64 x 32 x 32 x 32 batch)."""
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    dims = tuple(range(2, x.dim()))
    mean = x.mean(dims, keepdim=True)
    return (x - mean).square().mean(dims), mean.flatten(1)


@torch.no_grad()
def feature_condensation(x: torch.Tensor, features: str = "map",
                         moments: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Mean pairwise cosine similarity between the samples of ``x`` (N x C x ...), a 0-dim float tensor.

    ``features="map"`` compares the samples' whole feature maps after subtracting the batch's per-channel
    mean (so a channel offset shared by all samples does not count as similarity); ``"channel_mean"`` compares
    the samples' per-channel means (global average pool), uncentered. With unit vectors ``f_i`` (an all-zero
    vector counts as orthogonal to the others), ``sum_{i != j} f_i . f_j / (N (N - 1)) =
    (||sum_i f_i||^2 - sum_i ||f_i||^2) / (N (N - 1))``: two passes over ``x`` (its :func:`sample_moments`,
    which may be passed in, and one matrix-vector product), never the N^2 pairs. Needs N >= 2.
    """
    with torch.autocast(x.device.type, enabled=False):  # float32 sums: under fp16 autocast N^2 would overflow
        var, mean = sample_moments(x) if moments is None else (m.detach() for m in moments)
        if features == "channel_mean":
            norms = torch.linalg.vector_norm(mean, dim=1)
            total = _inverse(norms) @ mean
        else:
            spatial = x[0, 0].numel()
            center = mean.mean(0)
            norms = (spatial * (var + (mean - center).square()).sum(1)).sqrt()  # ||x_i - center||
            inverse = _inverse(norms)
            total = _weighted_sample_sum(x, inverse) - inverse.sum() * center[:, None]
        n = x.shape[0]
        return (total.square().sum() - (norms > 0).sum()) / (n * (n - 1))


def _weighted_sample_sum(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum_i weights[i] * x[i]`` as C x (spatial) in one matrix-vector product, read in the memory order of
    ``x`` (a channels_last batch is not copied to NCHW first)."""
    channels = x.shape[1]
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return (weights @ x.permute(0, 2, 3, 1).reshape(len(x), -1).to(weights.dtype)).view(-1, channels).t()
    return (weights @ x.reshape(len(x), -1).to(weights.dtype)).view(channels, -1)


def _inverse(norms: torch.Tensor) -> torch.Tensor:
    return torch.where(norms > 0, norms.reciprocal(), torch.zeros_like(norms))


def calibrated_batch_norm(stats: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                          center_weight: torch.Tensor, scale_weight: torch.Tensor, scale_bias: torch.Tensor,
                          moments: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """UBN's stage 2 around an affine-free BN ``stats`` module (whose running statistics update as usual).

    ``x_c = x + w_c * GAP(x)``; ``x_hat = BN(x_c)``; ``y = weight * x_hat * 2 sigmoid(w_s * GAP(x_hat) + b_s) + bias``,
    with ``GAP`` the per-sample, per-channel spatial mean. ``w_c = w_s = b_s = 0`` gives BN (up to float rounding).

    With a plain ``nn.BatchNorm2d`` as ``stats`` everything follows from the per-sample moments of ``x`` (one
    pass; ``moments`` may be passed in): the batch statistics of ``x_c`` by the law of total variance,
    ``GAP(x_hat)`` in closed form, and the output as one per-sample, per-channel affine of ``x`` (one more pass).
    Any other statistics module (e.g. ``nn.SyncBatchNorm``) is called on the materialized ``x_c``.
    """
    if type(stats) is not nn.BatchNorm2d:
        return _calibrated_with_module(stats, x, weight, bias, center_weight, scale_weight, scale_bias)
    var, mean = sample_moments(x) if moments is None else moments
    shift = 1 + center_weight  # GAP(x_c) = shift * GAP(x); x_c has the per-sample variances of x
    if stats.training or stats.running_mean is None:
        count = x.numel() // x.shape[1]
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {tuple(x.shape)}")
        batch_mean = shift * mean.mean(0)
        batch_var = var.mean(0) + shift.square() * mean.var(0, correction=0)
        if stats.training and stats.track_running_stats:
            _update_running_stats(stats, batch_mean, batch_var, count)
    else:
        batch_mean, batch_var = stats.running_mean, stats.running_var
    invstd = torch.rsqrt(batch_var + stats.eps)
    gate = 2 * torch.sigmoid(scale_weight * (shift * mean - batch_mean) * invstd + scale_bias)
    scale = weight * gate * invstd
    offset = bias + scale * (center_weight * mean - batch_mean)
    shape = x.shape[:2] + (1,) * (x.dim() - 2)
    return torch.addcmul(offset.view(shape), x, scale.view(shape)).to(x.dtype)


@torch.no_grad()
def _update_running_stats(stats: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """What ``nn.BatchNorm2d`` does to its buffers in train mode (running variance unbiased)."""
    stats.num_batches_tracked.add_(1)
    momentum = 1.0 / float(stats.num_batches_tracked) if stats.momentum is None else stats.momentum
    stats.running_mean.lerp_(mean.to(stats.running_mean.dtype), momentum)
    stats.running_var.lerp_((var * (count / (count - 1))).to(stats.running_var.dtype), momentum)


def _calibrated_with_module(stats: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                            center_weight: torch.Tensor, scale_weight: torch.Tensor,
                            scale_bias: torch.Tensor) -> torch.Tensor:
    shape = (1, -1) + (1,) * (x.dim() - 2)
    dims = tuple(range(2, x.dim()))
    x_hat = stats(torch.addcmul(x, x.mean(dims, keepdim=True), center_weight.view(shape)))
    gate = 2 * torch.sigmoid(torch.addcmul(scale_bias.view(shape), x_hat.mean(dims, keepdim=True),
                                           scale_weight.view(shape)))
    return torch.addcmul(bias.view(shape), x_hat, weight.view(shape) * gate)


class CalibratedBatchNorm2d(nn.Module):
    """A plain (unrouted) BN with UBN's stage-2 calibration: what one route of a calibrated
    :class:`UnifiedBatchNorm2d` folds into, and a trainable single-path layer (``norm="calibrated_bn"``).

    Parameters: ``weight``/``bias`` (BN affine), ``center_weight`` (``w_c``), ``scale_weight``/``scale_bias``
    (``w_s``/``b_s``); statistics in ``stats`` (an affine-free ``nn.BatchNorm2d``). Fresh, it equals BN.
    In train mode it always updates its running statistics (no condensation threshold).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 track_running_stats: bool = True, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.stats = nn.BatchNorm2d(num_features, eps, momentum, affine=False,
                                    track_running_stats=track_running_stats, **factory)
        _add_parameters(self, num_features, calibration=True, factory=factory)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return calibrated_batch_norm(self.stats, x, self.weight, self.bias, self.center_weight,
                                     self.scale_weight, self.scale_bias)

    def extra_repr(self) -> str:
        return str(self.num_features)


def _add_parameters(module: nn.Module, num_features: int, calibration: bool, factory: dict) -> None:
    """BN affine (ones, zeros) and, with ``calibration``, the stage-2 weights (zeros: the identity)."""
    module.weight = nn.Parameter(torch.ones(num_features, **factory))
    module.bias = nn.Parameter(torch.zeros(num_features, **factory))
    for name in ("center_weight", "scale_weight", "scale_bias"):
        module.register_parameter(name, nn.Parameter(torch.zeros(num_features, **factory)) if calibration else None)


def _running_buffers(stats: nn.Module) -> list[torch.Tensor]:
    return [b for b in (stats.running_mean, stats.running_var, stats.num_batches_tracked) if b is not None]


class UnifiedBatchNorm2d(RoutedNorm):
    """UBN with per-route statistics: a drop-in for ``nn.BatchNorm2d`` that works in dual-path training.

    Route ``r`` normalizes with its own running statistics ``stats[r]`` (an affine-free ``nn.BatchNorm2d``);
    the BN affine (``weight``, ``bias``, initialized to ones and zeros as in BN) and the calibration weights
    are shared by all routes (use SaBN for route-specific affines).

    **Stage 1** (always on; ``tau=inf`` disables skipping). In train mode every batch (every route's chunk
    under ``split_routes``) of at least 2 samples gets its *feature condensation* measured on the layer input,
    without gradient: the mean pairwise cosine similarity of the samples' features (:func:`feature_condensation`;
    ``features="map"``, channel-centered feature maps, by default, ``"channel_mean"`` for uncentered channel means;
    which one the paper uses is unverified, see the module docstring for why "map" is the default).
    When it exceeds ``tau`` the route's running mean, variance and batch count are left exactly as they were.
    Batches of one sample are not measured and update the statistics as in BN. The batch itself is still
    normalized with its own batch statistics, as BN does in train mode; only the running average (what eval
    mode uses) is protected from it. The skip is branch-free (no host synchronization on GPUs).

    **Stage 2** (``calibration=True``): see :func:`calibrated_batch_norm`. Representative BN's form; our
    choice: the scaling gate is ``2 * sigmoid(.)`` with ``b_s = 0`` (range (0, 2), exactly 1 at
    initialization) instead of RBN's ``sigmoid(.)`` with ``b_s = 1`` (which starts at 0.73, not the identity),
    so that a fresh or converted layer computes what BN computes (up to float rounding).

    Logging: :meth:`layer_metrics` returns the mean condensation and the fraction and number of skipped
    batches since its last call (overall and per route) and then resets the counters, so one call per epoch
    gives per-epoch values. ``last_condensation[i]`` holds the latest value measured on route ``i`` (NaN before).

    ``tau`` (default :data:`DEFAULT_TAU`) is our choice; the paper's threshold value is unverified.
    """

    def __init__(
        self,
        num_features: int,
        routes: Sequence[str] = DEFAULT_ROUTES,
        tau: float = DEFAULT_TAU,
        calibration: bool = True,
        features: str = "map",
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, routes)
        factory = {"device": device, "dtype": dtype}
        if features not in CONDENSATION_FEATURES:
            raise ConfigError(f"unknown condensation features {features!r}; "
                              f"choose one of {list(CONDENSATION_FEATURES)}")
        self.tau = float(tau)
        self.calibration = calibration
        self.features = features
        self.stats = nn.ModuleDict({
            r: nn.BatchNorm2d(num_features, eps, momentum, affine=False, track_running_stats=track_running_stats,
                              **factory)
            for r in self.routes
        })
        _add_parameters(self, num_features, calibration, factory)
        counters = {"device": device, "dtype": torch.float32}
        for name in ("condensation_sum", "measured_batches", "skipped_batches"):
            self.register_buffer(name, torch.zeros(len(self.routes), **counters), persistent=False)
        self.register_buffer("last_condensation", torch.full((len(self.routes),), float("nan"), **counters),
                             persistent=False)

    def normalize(self, stats: nn.Module, x: torch.Tensor, moments: tuple | None = None) -> torch.Tensor:
        """BN with ``stats`` (updating its running statistics in train mode), calibration, affine."""
        if not self.calibration:
            return batch_norm_affine(stats, x, self.weight, self.bias)
        return calibrated_batch_norm(stats, x, self.weight, self.bias, self.center_weight,
                                     self.scale_weight, self.scale_bias, moments)

    def forward_route(self, x: torch.Tensor, route: str) -> torch.Tensor:
        stats = self.stats[route]
        if not (stats.training and stats.track_running_stats and x.shape[0] > 1):
            return self.normalize(stats, x)
        moments = sample_moments(x) if self.calibration else None  # shared by both stages
        condensation = feature_condensation(x, self.features, moments)
        skip = condensation > self.tau
        self._record(self.route_index[route], condensation, skip)
        saved = [b.clone() for b in _running_buffers(stats)]
        out = self.normalize(stats, x, moments)
        # Written through .data, as BN's kernel updates them: the batch-norm op saved these buffers for backward
        # (a train-mode backward never reads their values), and a version bump would make backward refuse.
        for buffer, old in zip(_running_buffers(stats), saved):
            buffer.data.copy_(torch.where(skip, old, buffer.data))
        return out

    @torch.no_grad()
    def _record(self, i: int, condensation: torch.Tensor, skip: torch.Tensor) -> None:
        self.last_condensation[i] = condensation
        self.condensation_sum[i] += condensation
        self.measured_batches[i] += 1
        self.skipped_batches[i] += skip.float()

    @torch.no_grad()
    def layer_metrics(self, reset: bool = True) -> dict[str, float]:
        """``ubn_condensation`` (mean), ``ubn_skip_rate`` and ``ubn_skipped`` (count) over the training batches
        measured since the last call, plus ``..._<route>`` per measured route; empty when nothing was measured.
        Resets the counters unless ``reset=False``."""
        counters = (self.condensation_sum, self.measured_batches, self.skipped_batches)
        sums, counts, skipped = (t.tolist() for t in counters)
        if reset:
            for counter in counters:
                counter.zero_()
        total = sum(counts)
        if total == 0:
            return {}
        metrics = {"ubn_condensation": sum(sums) / total, "ubn_skip_rate": sum(skipped) / total,
                   "ubn_skipped": sum(skipped)}
        for route, s, n, k in zip(self.routes, sums, counts, skipped):
            if n:
                metrics[f"ubn_condensation_{route}"] = s / n
                metrics[f"ubn_skip_rate_{route}"] = k / n
        return metrics

    @torch.no_grad()
    def fold(self, route: str) -> nn.Module:
        """Route ``route`` in eval mode as a plain module: ``nn.BatchNorm2d`` without calibration, else a
        :class:`CalibratedBatchNorm2d` (chosen by the configuration, not by the trained values, so the folded
        architecture is known from the spec alone)."""
        self.check_route(route)
        stats = self.stats[route]
        common = (self.num_features, stats.eps, stats.momentum)
        factory = module_factory_kwargs(self)
        if not self.calibration:
            plain = nn.BatchNorm2d(*common, track_running_stats=stats.track_running_stats, **factory)
            copy_running_stats(stats, plain)
        else:
            plain = CalibratedBatchNorm2d(*common, stats.track_running_stats, **factory)
            copy_running_stats(stats, plain.stats)
            for name in ("center_weight", "scale_weight", "scale_bias"):
                getattr(plain, name).copy_(getattr(self, name))
        plain.weight.copy_(self.weight)
        plain.bias.copy_(self.bias)
        return plain.eval()

    @classmethod
    def folded_norm(cls, **kwargs) -> tuple[str, dict]:
        """The ``create_model`` norm kind and kwargs of this layer's fold, given its constructor kwargs."""
        plain = {k: kwargs[k] for k in ("eps", "momentum", "track_running_stats") if k in kwargs}
        return ("calibrated_bn" if kwargs.get("calibration", True) else "bn"), plain

    @classmethod
    @torch.no_grad()
    def from_batchnorm(cls, bn: nn.BatchNorm2d, routes: Sequence[str] = DEFAULT_ROUTES, tau: float = DEFAULT_TAU,
                       calibration: bool = True, features: str = "map") -> UnifiedBatchNorm2d:
        """Exact replacement of ``bn``: its affine and running statistics (copied to every route), calibration
        at the identity. Outputs are BN's in train and eval mode for any ``tau``; the running statistics evolve
        as BN's except on batches stage 1 skips (with ``tau=inf``, exactly as BN's)."""
        layer = cls(bn.num_features, routes, tau, calibration, features, bn.eps, bn.momentum, bn.track_running_stats,
                    **module_factory_kwargs(bn))
        if bn.affine:
            layer.weight.copy_(bn.weight)
            layer.bias.copy_(bn.bias)
        for stats in layer.stats.values():
            copy_running_stats(bn, stats)
        return layer.train(bn.training)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", tau={self.tau}, calibration={self.calibration}, features={self.features!r}"
