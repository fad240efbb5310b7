"""Dual (auxiliary) batch normalization: one complete BN per route (AuxBN, as in AdvProp)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .routing import DEFAULT_ROUTES, RoutedNorm
from .stats import module_factory_kwargs


class DualBatchNorm2d(RoutedNorm):
    """AuxBN: each route owns a full ``nn.BatchNorm2d`` (statistics and affine); nothing is shared."""

    def __init__(
        self,
        num_features: int,
        routes: Sequence[str] = DEFAULT_ROUTES,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, routes)
        self.bns = nn.ModuleDict({
            r: nn.BatchNorm2d(num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype)
            for r in self.routes
        })

    def forward_route(self, x: torch.Tensor, route: str) -> torch.Tensor:
        return self.bns[route](x)

    def fold(self, route: str) -> nn.BatchNorm2d:
        self.check_route(route)
        source = self.bns[route]
        bn = nn.BatchNorm2d(self.num_features, source.eps, source.momentum, source.affine,
                            source.track_running_stats, **module_factory_kwargs(self))
        bn.load_state_dict(source.state_dict())
        return bn

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, routes: Sequence[str] = DEFAULT_ROUTES) -> DualBatchNorm2d:
        """Exact replacement of ``bn``: every route starts as a copy of it."""
        layer = cls(bn.num_features, routes, bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                    **module_factory_kwargs(bn))
        for route in layer.routes:
            layer.bns[route].load_state_dict(bn.state_dict())
        return layer.train(bn.training)
