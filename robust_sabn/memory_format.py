"""The memory format a model trains in: channels_last where it is faster, NCHW where oneDNN gets it wrong.

oneDNN (PyTorch's CPU convolution library) computes the weight gradient of a strided 1x1 convolution wrongly in
channels_last when the convolution has fewer input channels than the kernel's channel block (8 with AVX2, 16 with
AVX-512): silently wrong gradients, heap corruption or a hang (oneDNN issue 6035, open). See docs/memory-format.md.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .errors import ConfigError

ONEDNN_ISSUE = "oneDNN issue 6035, https://github.com/uxlfoundation/oneDNN/issues/6035"
SAFE_IN_CHANNELS = 16  # oneDNN's largest channel block for float32 (AVX-512); AVX2's is 8


def channels_last_hazards(model: nn.Module) -> list[str]:
    """Qualified names of ``model``'s convolutions that oneDNN's CPU kernels mishandle in channels_last: 1x1,
    strided, with fewer than 16 input channels per group (any ``nn.Conv2d``, subclasses included)."""
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1)
            and m.in_channels // m.groups < SAFE_IN_CHANNELS]


class MemoryFormat(NamedTuple):
    """The choice of :func:`choose_memory_format`."""

    channels_last: bool
    note: str = ""  # why not channels_last, where it would have been the default

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def choose_memory_format(model: nn.Module, device: torch.device, requested: bool | None = None,
                         amp: bool = False) -> MemoryFormat:
    """channels_last or NCHW for training ``model`` on ``device``.

    By default channels_last runs on the CPU (faster there) and on CUDA with mixed precision (tensor cores);
    ``requested`` (``--channels-last`` / ``--no-channels-last``) overrides that. On the CPU a model with
    :func:`channels_last_hazards` runs NCHW by default, and an explicit request for channels_last is a ConfigError.
    """
    on_cpu = device.type == "cpu"
    wanted = (on_cpu or amp) if requested is None else requested
    hazards = channels_last_hazards(model) if wanted and on_cpu else []
    if not hazards:
        return MemoryFormat(wanted)
    shown = ", ".join(hazards[:3]) + (f" and {len(hazards) - 3} more" if len(hazards) > 3 else "")
    why = (f"oneDNN computes the weight gradient of strided 1x1 convolutions with fewer than {SAFE_IN_CHANNELS} "
           f"input channels ({shown}) wrongly in channels_last on the CPU ({ONEDNN_ISSUE})")
    if requested:
        raise ConfigError(f"--channels-last: {why}; drop --channels-last (this model then runs NCHW) or give those "
                          f"convolutions at least {SAFE_IN_CHANNELS} input channels")
    return MemoryFormat(False, why)
