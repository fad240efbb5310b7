"""Batched, seeded augmentation: every random draw comes from a generator seeded for the batch, so a resumed run
augments exactly as the uninterrupted one."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

Augment = Callable[[Tensor, torch.Generator], Tensor]


def random_crop_flip(x: Tensor, generator: torch.Generator, padding: int, flip: bool) -> Tensor:
    """Per-image random crop of the zero-padded batch back to its size, then (if ``flip``) a horizontal flip
    with probability 1/2; every random draw comes from ``generator`` (on the CPU), in a fixed order (offsets,
    then flips). The whole batch is one gather: no per-image loop, no per-image kernel launch on a GPU."""
    b, c, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator).to(x.device)
    rows = offsets[:, :1] + torch.arange(h, device=x.device)  # b x h: the padded rows each image keeps
    cols = offsets[:, 1:] + torch.arange(w, device=x.device)
    if flip:
        flipped = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    width = w + 2 * padding
    index = (rows[:, :, None] * width + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return F.pad(x, (padding,) * 4).flatten(2).gather(2, index).view(b, c, h, w)


class CropFlip:
    """Batched standard augmentation: random crop with ``padding`` pixels of zero padding (+ horizontal flip)."""

    def __init__(self, padding: int, flip: bool) -> None:
        self.padding = padding
        self.flip = flip

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return random_crop_flip(x, generator, self.padding, self.flip)

    def __repr__(self) -> str:
        return f"CropFlip(padding={self.padding}, flip={self.flip})"
