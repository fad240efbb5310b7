"""WeightAlign (Shi, Li, Liu, van Gemert, ICPR 2020, arXiv 2010.07160): convolutions with normalized filters.

Each output filter ``W_i`` (its ``N = in_channels / groups * kh * kw`` fan-in weights) is used as
``W_hat_i = gamma_i * c * (W_i - mean(W_i)) / (sqrt(N) * sqrt(var(W_i) + eps))``: zero mean and standard
deviation ``gamma_i * c / sqrt(N)`` (up to ``eps``), the scale that keeps activations' variance through a
ReLU network (He et al.). No sample statistics are involved, so the output of one sample never depends on the
batch. The constants ``c = sqrt(2)`` (the ReLU gain of He et al. 2015) and ``eps`` are our reading of the
paper and unverified; both are constructor arguments. A close relative is Scaled Weight Standardization (NF-Nets).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError
from .routing import Foldable

RELU_GAIN = math.sqrt(2.0)
DEFAULT_EPS = 1e-6  # our choice (the paper's value is unverified); small next to the filters' variance ~2/N


class WeightAlignConv2d(Foldable, nn.Conv2d):
    """``nn.Conv2d`` whose filters are aligned (see the module docstring) before every use.

    Same constructor as ``nn.Conv2d`` plus keyword-only ``gain`` (``c``, default sqrt(2)) and ``eps``. The
    learnable per-filter gain ``gamma`` is the parameter ``weight_gain`` (ones at initialization).
    :meth:`to_conv` (and ``robust_sabn.fold_route``) materializes the aligned weights into a plain ``nn.Conv2d``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *,
                 gain: float = RELU_GAIN, eps: float = DEFAULT_EPS) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        if self.weight[0].numel() < 2:
            raise ConfigError(f"WeightAlign needs filters with at least 2 weights; a {in_channels // groups}-channel "
                              f"{self.kernel_size} filter has one, which aligns to zero (use a standard conv there)")
        self.gain = float(gain)
        self.eps = float(eps)
        self.weight_gain = nn.Parameter(torch.ones(out_channels, 1, 1, 1, device=device, dtype=dtype))

    def aligned_weight(self) -> torch.Tensor:
        """The normalized filters ``W_hat`` this layer convolves with (differentiable)."""
        fan_in = self.weight[0].numel()
        var, mean = torch.var_mean(self.weight, dim=(1, 2, 3), correction=0, keepdim=True)
        scale = self.weight_gain * (self.gain / math.sqrt(fan_in)) * torch.rsqrt(var + self.eps)
        return (self.weight - mean) * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.aligned_weight(), self.bias)

    @torch.no_grad()
    def to_conv(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with the aligned weights: the same outputs, loadable without this class."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups, self.bias is not None, self.padding_mode,
                         device=self.weight.device, dtype=self.weight.dtype)
        conv.weight.copy_(self.aligned_weight())
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv.train(self.training)

    def fold(self, route: str) -> nn.Conv2d:
        return self.to_conv()

    @classmethod
    @torch.no_grad()
    def from_conv(cls, conv: nn.Conv2d, gain: float = RELU_GAIN, eps: float = DEFAULT_EPS) -> WeightAlignConv2d:
        """A WeightAlign layer started from ``conv``'s weights, with each filter's gain set so that its aligned
        filter keeps the original's spread: ``W_hat_i = (W_i - mean(W_i)) * sqrt(var_i / (var_i + eps))``.

        Not exact in general: the alignment removes each filter's mean, so the function is preserved only for
        filters with zero mean (up to ``eps``). Fine-tune after converting.
        """
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode, device=conv.weight.device,
                    dtype=conv.weight.dtype, gain=gain, eps=eps)
        layer.weight.copy_(conv.weight)
        if conv.bias is not None:
            layer.bias.copy_(conv.bias)
        var = conv.weight.var(dim=(1, 2, 3), correction=0, keepdim=True)
        layer.weight_gain.copy_(var.sqrt() * math.sqrt(layer.weight[0].numel()) / gain)
        return layer.train(conv.training)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", gain={self.gain:.4g}, eps={self.eps:g}"
