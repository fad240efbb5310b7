"""The form in which the folded model is evaluated: its own float32 computation unless a faster form is asked for.

- ``exact`` (default): the model as saved, float32, no parameter gradients; on CUDA with cuDNN's autotuner
  (``cudnn.benchmark``), which picks the fastest float32 kernel for each shape; on the CPU with freed memory kept
  in the process (:mod:`robust_sabn.allocator`) and BatchNorm layers whose backward computes the input gradient
  alone (:mod:`robust_sabn.eval.batchnorm`), neither of which changes a bit of any result.
- ``channels-last``: the same float32 arithmetic in the channels_last memory format, which runs other kernels:
  logits differ in the last digits (measured: up to 2e-6 on the quickstart's model), so a borderline point can
  change. Refused on the CPU for models oneDNN mishandles in that format (robust_sabn.memory_format).
- ``bf16``: autocast to bfloat16 (logits returned in float32): faster on GPUs, less precise.
- ``compiled``: the float32 model, its BatchNorms folded into the convolutions before them, compiled whole by
  torch.compile (:mod:`robust_sabn.compiling`): fused kernels, whose sums run in another order, so logits differ
  in the last digits. Two graphs (with and without the input's gradient, the batch dimension symbolic) serve
  every call of every attack; :func:`warm_up` compiles them before the attack (from the disk cache, in seconds,
  once a run has compiled them).

Every form but ``exact`` can change a prediction, so it is asked for by name, and the report names it.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..allocator import keep_freed_memory
from ..compiling import compile_in_place, describe_compilation, is_compiled
from ..errors import ConfigError
from ..memory_format import choose_memory_format
from ..registry import choose
from .batchnorm import fold_into_convolutions, with_input_grad_batchnorm

NUMERICS = {
    "exact": "float32, the model's own memory format",
    "channels-last": "float32 in channels_last (other kernels: last-digit differences)",
    "bf16": "bfloat16 autocast, float32 logits (lower precision)",
    "compiled": "float32, BatchNorms folded into convolutions, compiled by torch.compile (last-digit differences)",
}


class Autocast(nn.Module):
    """``model`` run under autocast to ``dtype``; its logits converted back to float32."""

    def __init__(self, model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.device_type, self.dtype = model, device.type, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(x).float()


def check_numerics(numerics: str) -> str:
    return choose(numerics, NUMERICS, "numerics")


def refusal(model: nn.Module, device: torch.device, numerics: str) -> str | None:
    """Why ``model`` cannot be evaluated in the form ``numerics`` on ``device``, or None when it can: channels-last
    is refused on the CPU for models oneDNN mishandles in that format."""
    if numerics == "channels-last":
        try:
            choose_memory_format(model, device, requested=True)
        except ConfigError as err:
            return str(err)
    return None


@contextmanager
def evaluation_form(model: nn.Module, device: torch.device, numerics: str = "exact") -> Iterator[nn.Module]:
    """``model`` (a frozen copy, on ``device``; changed in place) in the form ``numerics``; on CUDA cuDNN's
    autotuner is on inside the block and restored afterwards; on the CPU freed memory stays in the process from
    then on."""
    check_numerics(numerics)
    if device.type == "cpu":
        keep_freed_memory()
        if numerics == "exact":
            model = with_input_grad_batchnorm(model)
    reason = refusal(model, device, numerics)
    if reason is not None:
        raise ConfigError(reason)
    if numerics == "channels-last":
        model = model.to(memory_format=torch.channels_last)
    elif numerics == "bf16":
        model = Autocast(model, device, torch.bfloat16)
    elif numerics == "compiled":
        model = compile_in_place(fold_into_convolutions(model), device, _refuse_compiled, frozen=True)
    benchmark = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = benchmark or device.type == "cuda"
    try:
        yield model
    finally:
        torch.backends.cudnn.benchmark = benchmark


def _refuse_compiled(reason: str) -> None:
    raise ConfigError(f"numerics 'compiled': {reason}; evaluate this model in the exact form (--numerics exact)")


def warm_up(form: nn.Module, example: torch.Tensor, device: torch.device | None = None,
            gradients: bool = True) -> float:
    """Compile a compiled form (others: nothing to do) as the attacks will call it, on ``example``, a batch (moved
    to ``device`` first when given): a forward pass without gradients and, with ``gradients``, one with the input's
    gradient; the seconds."""
    if not is_compiled(form):
        return 0.0
    start = time.perf_counter()
    example = example if device is None else example.to(device)
    with torch.no_grad():
        logits = form(example)
    if gradients:
        x = example.detach().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(form(x), logits.argmax(1)), x)
    return time.perf_counter() - start


def describe_numerics(numerics: str, device: torch.device) -> str:
    """The report's words for the form a model was evaluated in on ``device``."""
    compiled = f", {describe_compilation(device)}" if numerics == "compiled" else ""
    return NUMERICS[numerics] + compiled + ("; cuDNN autotuned kernels" if device.type == "cuda" else "")
