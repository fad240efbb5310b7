"""Small helpers shared by the routed layers: running-statistics copies and device/dtype lookup."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def copy_running_stats(src: nn.Module, dst: nn.Module) -> None:
    """Copy running mean, variance and batch count from one BN-like module to another."""
    if src.running_mean is None or dst.running_mean is None:
        return
    dst.running_mean.copy_(src.running_mean)
    dst.running_var.copy_(src.running_var)
    dst.num_batches_tracked.copy_(src.num_batches_tracked)


def module_factory_kwargs(module: nn.Module) -> dict:
    """``device`` and ``dtype`` of a module's first floating-point tensor (defaults when it has none)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return {"device": tensor.device, "dtype": tensor.dtype}
    return {"device": None, "dtype": None}
