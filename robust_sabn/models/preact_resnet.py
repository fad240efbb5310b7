"""Pre-activation ResNets: PreAct ResNet-18 (the SaBN paper's adversarial-training model) and the
Wide ResNets of TRADES and RobustBench, which share the same block."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvLayer, Normalize, NormLayer, init_conv_linear
from .registry import register_model


class PreActBlock(nn.Module):
    """norm-ReLU-conv twice; a projection shortcut takes the first activation when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int, norm_layer: NormLayer, conv_layer: ConvLayer):
        super().__init__()
        self.bn1 = norm_layer(in_planes)
        self.conv1 = conv_layer(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = norm_layer(planes)
        self.conv2 = conv_layer(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = conv_layer(in_planes, planes, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet(nn.Module):
    """Stem conv, one stage of pre-activation blocks per entry of ``blocks`` (stride 1, then 2), final
    norm-ReLU, pool, linear."""

    def __init__(
        self,
        blocks: Sequence[int],
        widths: Sequence[int],
        num_classes: int,
        in_channels: int,
        mean: Sequence[float],
        std: Sequence[float],
        norm_layer: NormLayer,
        conv_layer: ConvLayer,
        stem_width: int | None = None,
    ) -> None:
        super().__init__()
        stem_width = stem_width or widths[0]
        self.normalize = Normalize(mean, std)
        self.conv1 = conv_layer(in_channels, stem_width, 3, 1, 1, bias=False)
        stages, in_planes = [], stem_width
        for i, (n, width) in enumerate(zip(blocks, widths)):
            stage = []
            for j in range(n):
                stage.append(PreActBlock(in_planes, width, 2 if i > 0 and j == 0 else 1, norm_layer, conv_layer))
                in_planes = width
            stages.append(nn.Sequential(*stage))
        self.layers = nn.Sequential(*stages)
        self.bn = norm_layer(in_planes)
        self.linear = nn.Linear(in_planes, num_classes)
        init_conv_linear(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.conv1(self.normalize(x)))
        out = F.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register_model
def preact_resnet18(**kwargs) -> PreActResNet:
    return PreActResNet((2, 2, 2, 2), (64, 128, 256, 512), **kwargs)
