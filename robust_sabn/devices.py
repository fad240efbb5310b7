"""The one device rule: which device a name means, and where a model lives. A leaf module (torch only)."""
from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: this process's GPU when CUDA is available, else the CPU; ``"cpu"``; ``"cuda"``: this process's
    GPU (``local_rank`` modulo the visible GPUs); ``"cuda:N"``: GPU N. Asking for CUDA without it is an error."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    try:
        device = torch.device("cuda" if name == "auto" else name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type != "cuda":
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but no CUDA device is available; use --device cpu")
    count = torch.cuda.device_count()
    if device.index is None:
        return torch.device("cuda", local_rank % count)
    if device.index >= count:
        raise ConfigError(f"device {name!r} does not exist: {count} CUDA device(s) are visible")
    return device


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters (or buffers) live; the CPU for a model without any."""
    tensor = next(iter(list(model.parameters()) + list(model.buffers())), None)
    return tensor.device if tensor is not None else torch.device("cpu")
