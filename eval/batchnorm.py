"""Eval-mode BatchNorm whose backward computes the input gradient alone, bit for bit as PyTorch's CPU kernel does.

An attack differentiates the frozen model with respect to its input only. PyTorch's CPU backward of an eval-mode
BatchNorm nevertheless reduces the gradient over each channel twice (the sums its weight and bias gradients would
need) before it computes the input gradient as ``(grad * invstd) * weight``, with ``invstd = 1 / sqrt(var + eps)``
in double precision, rounded to the input's dtype (ATen's ``batch_norm_cpu_backward_contiguous_impl``). On the
quickstart's model that backward took a tenth of a forward-backward pass. :class:`InputGradBatchNorm2d` keeps
PyTorch's own forward and computes that same input gradient with the same roundings, and nothing else; tests
compare it bit for bit with PyTorch's, so that a change of PyTorch's formula cannot go unnoticed.

The compiled form does away with such BatchNorms altogether: :func:`fold_into_convolutions` folds each one that
follows a convolution into the convolution's weight and bias, as inductor's freezing would (whose graphs the compile
cache cannot keep), which changes the logits in the last digits, as compiling does.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.fx.experimental.optimization import fuse


class _EvalBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, bn: nn.BatchNorm2d, invstd: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(invstd, bn.weight)
        return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        invstd, weight = ctx.saved_tensors
        grad_input = grad * invstd.view(1, -1, 1, 1)
        if weight is not None:
            grad_input.mul_(weight.view(1, -1, 1, 1))
        return grad_input, None, None


class InputGradBatchNorm2d(nn.Module):
    """A frozen eval-mode ``nn.BatchNorm2d`` (its own tensors, not copies) with the input-gradient-only backward."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.bn = bn
        # PyTorch's rounding: the float variance plus eps in double, the reciprocal square root rounded back
        self.register_buffer("invstd", (1 / torch.sqrt(bn.running_var.double() + bn.eps)).to(bn.running_var.dtype),
                             persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (torch.is_grad_enabled() and x.requires_grad) or not x.is_contiguous():
            return self.bn(x)  # nothing to differentiate, or a layout whose kernel this does not replicate
        return _EvalBatchNorm.apply(x, self.bn, self.invstd)


def replaceable(module: nn.Module) -> bool:
    """A plain float32 ``nn.BatchNorm2d`` on the CPU, in eval mode, with running statistics and frozen parameters."""
    return (type(module) is nn.BatchNorm2d and not module.training and module.running_var is not None
            and module.running_var.device.type == "cpu" and module.running_var.dtype == torch.float32
            and not any(p.requires_grad for p in module.parameters()))


def with_input_grad_batchnorm(model: nn.Module) -> nn.Module:
    """``model`` (changed in place: pass a copy) with every :func:`replaceable` BatchNorm wrapped in
    :class:`InputGradBatchNorm2d`; outputs and input gradients stay bit for bit the same."""
    if replaceable(model):
        return InputGradBatchNorm2d(model)
    for name, child in model.named_children():
        setattr(model, name, with_input_grad_batchnorm(child))
    return model


def fold_into_convolutions(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (frozen, in eval mode) with every ``nn.BatchNorm2d`` that alone reads an ``nn.Conv2d``'s
    output folded into it (``torch.fx``; subclasses, such as WeightAlign's convolution, are left alone); ``model``
    itself when torch.fx cannot trace it."""
    try:
        return fuse(model).requires_grad_(False)
    except (torch.fx.proxy.TraceError, TypeError, RuntimeError, NotImplementedError):
        return model
