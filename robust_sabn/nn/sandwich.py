"""Sandwich Batch Normalization (SaBN, Gong et al. 2021, arXiv 2102.11382)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .routing import DEFAULT_ROUTES, RoutedNorm, batch_norm_affine
from .stats import copy_running_stats, module_factory_kwargs


class SandwichBatchNorm2d(RoutedNorm):
    """SaBN: ``h = gamma_r * (gamma_sa * BN_r(x) + beta_sa) + beta_r`` for route ``r``.

    ``BN_r`` holds route ``r``'s batch statistics (an affine-free ``nn.BatchNorm2d``; one set shared by
    all routes with ``shared_stats=True``), ``(gamma_sa, beta_sa)`` = ``(weight, bias)`` is the shared
    "sandwich" affine and ``(gamma_r, beta_r)`` = ``(route_weight[r], route_bias[r])`` the route's own.
    Fresh layers follow the official initialization: every gamma ~ N(1, 0.02), every beta = 0.
    """

    def __init__(
        self,
        num_features: int,
        routes: Sequence[str] = DEFAULT_ROUTES,
        shared_stats: bool = False,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, routes)
        factory = {"device": device, "dtype": dtype}
        self.shared_stats = shared_stats
        self.weight = nn.Parameter(torch.empty(num_features, **factory))
        self.bias = nn.Parameter(torch.empty(num_features, **factory))
        self.route_weight = nn.Parameter(torch.empty(len(self.routes), num_features, **factory))
        self.route_bias = nn.Parameter(torch.empty(len(self.routes), num_features, **factory))

        def new_stats() -> nn.BatchNorm2d:
            return nn.BatchNorm2d(num_features, eps, momentum, affine=False,
                                  track_running_stats=track_running_stats, **factory)

        self.stats = new_stats() if shared_stats else nn.ModuleDict({r: new_stats() for r in self.routes})
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for gamma in (self.weight, self.route_weight):
            nn.init.normal_(gamma, 1.0, 0.02)
        for beta in (self.bias, self.route_bias):
            nn.init.zeros_(beta)
        for stats in self.all_stats():
            stats.reset_running_stats()

    def all_stats(self) -> list[nn.Module]:
        return [self.stats] if self.shared_stats else list(self.stats.values())

    def stats_of(self, route: str) -> nn.Module:
        return self.stats if self.shared_stats else self.stats[route]

    def route_affine(self, route: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The route's sandwich and route affines composed into one scale and shift."""
        i = self.route_index[route]
        scale = self.route_weight[i]
        return scale * self.weight, torch.addcmul(self.route_bias[i], scale, self.bias)

    def forward_route(self, x: torch.Tensor, route: str) -> torch.Tensor:
        return batch_norm_affine(self.stats_of(route), x, *self.route_affine(route))

    @torch.no_grad()
    def fold(self, route: str) -> nn.BatchNorm2d:
        self.check_route(route)
        stats = self.stats_of(route)
        bn = nn.BatchNorm2d(self.num_features, stats.eps, stats.momentum,
                            track_running_stats=stats.track_running_stats, **module_factory_kwargs(self))
        weight, bias = self.route_affine(route)
        bn.weight.copy_(weight)
        bn.bias.copy_(bias)
        copy_running_stats(stats, bn)
        return bn

    @classmethod
    @torch.no_grad()
    def from_batchnorm(cls, bn: nn.BatchNorm2d, routes: Sequence[str] = DEFAULT_ROUTES,
                       shared_stats: bool = False) -> SandwichBatchNorm2d:
        """Exact replacement of ``bn``: sandwich affine = ``bn``'s affine, route affines = identity,
        ``bn``'s running statistics copied to every route."""
        layer = cls(bn.num_features, routes, shared_stats, bn.eps, bn.momentum, bn.track_running_stats,
                    **module_factory_kwargs(bn))
        if bn.affine:
            layer.weight.copy_(bn.weight)
            layer.bias.copy_(bn.bias)
        else:
            layer.weight.fill_(1.0)
            layer.bias.zero_()
        layer.route_weight.fill_(1.0)
        layer.route_bias.zero_()
        for stats in layer.all_stats():
            copy_running_stats(bn, stats)
        return layer.train(bn.training)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", shared_stats={self.shared_stats}"
