"""ResNets with CIFAR stems (3x3 stem convolution, no max-pool): ResNet-18/34/50 and a small CPU-sized one."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .layers import ConvLayer, Normalize, NormLayer, init_conv_linear
from .registry import register_model


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, norm_layer: NormLayer, conv_layer: ConvLayer):
        super().__init__()
        self.conv1 = conv_layer(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv_layer(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(planes)
        self.shortcut = shortcut(in_planes, planes, stride, norm_layer, conv_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, norm_layer: NormLayer, conv_layer: ConvLayer):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = conv_layer(in_planes, planes, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv_layer(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = norm_layer(planes)
        self.conv3 = conv_layer(planes, out_planes, 1, bias=False)
        self.bn3 = norm_layer(out_planes)
        self.shortcut = shortcut(in_planes, out_planes, stride, norm_layer, conv_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


def shortcut(in_planes: int, out_planes: int, stride: int, norm_layer: NormLayer, conv_layer: ConvLayer) -> nn.Module:
    """Identity, or a strided 1x1 projection with its norm when the shape changes."""
    if stride == 1 and in_planes == out_planes:
        return nn.Identity()
    return nn.Sequential(conv_layer(in_planes, out_planes, 1, stride, bias=False), norm_layer(out_planes))


class ResNet(nn.Module):
    """Post-activation ResNet: stem, one stage per entry of ``blocks`` (stride 1, then 2), pool, linear."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks: Sequence[int],
        widths: Sequence[int],
        num_classes: int,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        norm_layer: NormLayer,
        conv_layer: ConvLayer,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.conv1 = conv_layer(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = norm_layer(widths[0])
        stages, in_planes = [], widths[0]
        for i, (n, width) in enumerate(zip(blocks, widths)):
            layers = []
            for j in range(n):
                layers.append(block(in_planes, width, 2 if i > 0 and j == 0 else 1, norm_layer, conv_layer))
                in_planes = width * block.expansion
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.linear = nn.Linear(in_planes, num_classes)
        init_conv_linear(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layers(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register_model
def resnet18(**kwargs) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), **kwargs)


@register_model
def resnet34(**kwargs) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), (64, 128, 256, 512), **kwargs)


@register_model
def resnet50(**kwargs) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), **kwargs)


MAX_PARAMETERS = 400_000_000  # 1.6 GB of float32 weights; RobustBench's largest models hold fewer (WRN-70-16: 267M)


@register_model
def resnet_small(width: int = 16, depth: int = 1, **kwargs) -> ResNet:
    """Three stages of ``depth`` basic blocks with ``width``, ``2*width``, ``4*width`` channels: for CPU runs.
    Refused before anything is allocated when it would hold more than :data:`MAX_PARAMETERS` parameters."""
    parameters = 378 * depth * width**2  # its 3x3 convolutions: 2 * 9 * depth * (1 + 4 + 16) * width^2
    if parameters > MAX_PARAMETERS:
        raise ConfigError(f"resnet_small with width {width} and depth {depth} would hold about {parameters / 1e6:,.0f} "
                          f"million parameters, more than the {MAX_PARAMETERS // 10**6} million (1.6 GB) a zoo model "
                          "may; choose a smaller width or depth")
    return ResNet(BasicBlock, (depth,) * 3, (width, 2 * width, 4 * width), **kwargs)
