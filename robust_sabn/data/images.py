"""Image datasets: in-memory uint8 tensors (the small datasets) and image files in class folders."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset


class ImageTensors(Dataset):
    """Images kept in memory as uint8 ``N x C x H x W``, labels int64; items are ``(float CxHxW in [0, 1], int)``."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
            raise ValueError("ImageTensors needs uint8 N x C x H x W images and N labels")
        self.images = images
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index].float().div_(255), int(self.labels[index])

    def batch(self, indices: Tensor) -> tuple[Tensor, Tensor]:
        """The items at ``indices`` as one batch, in one gather."""
        return self.images[indices].float().div_(255), self.labels[indices]

    def subset(self, indices: Tensor) -> ImageTensors:
        return ImageTensors(self.images[indices], self.labels[indices])


class ImageFiles(Dataset):
    """torchvision's ``ImageFolder`` read as RGB, resized and center-cropped to ``size``, as float in [0, 1]."""

    def __init__(self, root: Path, size: int) -> None:
        from torchvision import transforms
        from torchvision.datasets import ImageFolder

        self.folder = ImageFolder(str(root), transform=transforms.Compose([
            transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()]))
        self.classes = self.folder.classes

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        image, label = self.folder[index]
        return image.float().div_(255), label
