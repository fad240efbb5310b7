"""Datasets by name (:data:`DATASETS`), their train / validation / test splits, and evaluation images.

A dataset is one registered function ``load(data_dir, download, image_size) -> (train, test, facts)``: adding a
dataset touches this one place. Formats (see :mod:`robust_sabn.data.readers`):

- ``cifar10`` / ``cifar100``: ``<data_dir>/cifar-10-batches-py/`` / ``<data_dir>/cifar-100-python/``;
- ``svhn``: ``<data_dir>/{train,test}_32x32.mat`` (label 10 is the digit 0);
- ``fashion-mnist``: the four idx files in ``<data_dir>``, by default ``/usr/share/datasets/fashion-mnist``
  (Debian's ``dataset-fashion-mnist``), then ``./data/FashionMNIST/raw``;
- ``imagefolder``: ``<data_dir>/train/<class>/*`` and ``<data_dir>/test/<class>/*`` (or ``val/``), any image
  format PIL reads, converted to RGB, resized (shorter side) and center-cropped to ``image_size``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from ..errors import ConfigError
from ..registry import Registry
from . import readers
from .augment import Augment, CropFlip
from .images import ImageTensors

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DatasetFacts:
    """What a model and the training loop need to know about a dataset."""

    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment  # the standard training augmentation


Loader = Callable[[Path | None, bool, int | None], tuple[Dataset, Dataset, DatasetFacts]]
DATASETS: Registry[Loader] = Registry("dataset")


@DATASETS.register("cifar10")
def cifar10(data_dir: Path | None, download: bool, image_size: int | None) -> tuple[Dataset, Dataset, DatasetFacts]:
    train, test = readers.load_cifar("cifar10", data_dir, download)
    return train, test, DatasetFacts(10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                                     CropFlip(4, flip=True))


@DATASETS.register("cifar100")
def cifar100(data_dir: Path | None, download: bool, image_size: int | None) -> tuple[Dataset, Dataset, DatasetFacts]:
    train, test = readers.load_cifar("cifar100", data_dir, download)
    return train, test, DatasetFacts(100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                                     CropFlip(4, flip=True))


@DATASETS.register("svhn")
def svhn(data_dir: Path | None, download: bool, image_size: int | None) -> tuple[Dataset, Dataset, DatasetFacts]:
    train, test = readers.load_svhn(data_dir, download)  # digits: no flips
    return train, test, DatasetFacts(10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                                     CropFlip(4, flip=False))


@DATASETS.register("fashion-mnist")
def fashion_mnist(data_dir: Path | None, download: bool,
                  image_size: int | None) -> tuple[Dataset, Dataset, DatasetFacts]:
    train, test = readers.load_fashion_mnist(data_dir, download)
    # Fashion-MNIST items are centred and aligned (all shoes point the same way): shifts only, no flips.
    return train, test, DatasetFacts(10, 1, 28, (0.2860,), (0.3530,), CropFlip(2, flip=False))


@DATASETS.register("imagefolder")
def imagefolder(data_dir: Path | None, download: bool,
                image_size: int | None) -> tuple[Dataset, Dataset, DatasetFacts]:
    """``image_size`` defaults to the shorter side of the first training image; ImageNet's mean and std."""
    train, test = readers.load_imagefolder(data_dir, download, image_size)
    size = train[0][0].shape[-1]
    return train, test, DatasetFacts(len(train.classes), 3, size, IMAGENET_MEAN, IMAGENET_STD,
                                     CropFlip(max(1, size // 8), flip=True))


@dataclass
class DataSplits:
    """A dataset's train / validation / test splits (no augmentation) and what a model needs to know."""

    name: str
    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment


def default_val_size(n_train: int) -> int:
    """1,000 images or 10% of the training set, whichever is smaller."""
    return min(1000, n_train // 10)


def split_indices(n: int, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Disjoint sorted (train, val) indices of ``range(n)``, ``val_size`` of them drawn for val by ``seed``."""
    if not 0 <= val_size < n:
        raise ConfigError(f"val_size must be between 0 and {n - 1} (the training set has {n} images), got {val_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val_size:].sort().values, order[:val_size].sort().values


def subset(dataset: Dataset, indices: Tensor) -> Dataset:
    """The items at ``indices`` (in memory for in-memory datasets)."""
    return dataset.subset(indices) if isinstance(dataset, ImageTensors) else Subset(dataset, indices.tolist())


def fixed_subset(dataset: Dataset, size: int | None, seed: int, *, rest: bool = False) -> Dataset:
    """A fixed random subset of ``size`` items, drawn by ``seed`` (the whole set when ``size`` is None); with
    ``rest``, the items that subset leaves out."""
    if size is None:
        return subset(dataset, torch.arange(0)) if rest else dataset
    if size > len(dataset):
        raise ConfigError(f"asked for {size} images but the split holds {len(dataset)}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return subset(dataset, (order[size:] if rest else order[:size]).sort().values)


def _check_images(name: str, split: str, data: ImageTensors, num_classes: int, shape: tuple[int, ...]) -> None:
    """Refuse, at load time, images of another shape or labels outside the classes (they would fail mid-run)."""
    if data.images.shape[1:] != shape:
        raise ConfigError(f"the {name} {split} images are {'x'.join(map(str, data.images.shape[1:]))}, not "
                          f"{'x'.join(map(str, shape))}; replace the files with intact copies")
    low, high = (int(data.labels.min()), int(data.labels.max())) if len(data.labels) else (0, 0)
    if not 0 <= low <= high < num_classes:
        raise ConfigError(f"the {name} {split} labels run from {low} to {high}, but {name} has classes 0 to "
                          f"{num_classes - 1}; replace the files with intact copies")


def load_dataset(name: str, data_dir: str | Path | None = None, *, download: bool = False,
                 val_size: int | None = None, seed: int = 0, image_size: int | None = None) -> DataSplits:
    """Read dataset ``name`` (one of :data:`DATASETS`) and hold out a validation split of its training set.

    ``val_size`` defaults to :func:`default_val_size`; which images go to validation is fixed by ``seed``.
    ``image_size`` applies to ``imagefolder`` only. Missing or malformed files raise one-line errors.
    """
    data_dir = Path(data_dir).expanduser() if data_dir is not None else None
    train, test, facts = DATASETS[name](data_dir, download, image_size)
    for split, images in (("training", train), ("test", test)):
        if isinstance(images, ImageTensors):
            _check_images(name, split, images, facts.num_classes, (facts.in_channels, facts.image_size,
                                                                   facts.image_size))
    train_idx, val_idx = split_indices(len(train), default_val_size(len(train)) if val_size is None else val_size, seed)
    return DataSplits(name, subset(train, train_idx), subset(train, val_idx), test, facts.num_classes,
                      facts.in_channels, facts.image_size, facts.mean, facts.std, facts.augment)


def gather(dataset: Dataset, indices: Tensor) -> tuple[Tensor, Tensor]:
    """The items at ``indices`` as one batch ``(x in [0, 1] N x C x H x W, y int64)``: one indexing operation for
    in-memory data."""
    if isinstance(dataset, ImageTensors):
        return dataset.batch(indices)
    items = [dataset[i] for i in indices.tolist()]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.long)


def as_tensors(dataset: Dataset, n: int | None = None) -> tuple[Tensor, Tensor]:
    """The first ``n`` items (all when None) as one batch (:func:`gather`)."""
    return gather(dataset, torch.arange(len(dataset) if n is None else min(n, len(dataset))))


def test_images(dataset: str, data_dir: str | Path | None = None, n: int = 1000) -> tuple[Tensor, Tensor]:
    """The first ``n`` images of ``dataset``'s test split (as RobustBench takes them), as tensors."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"the number of examples must be a positive integer, got {n!r}")
    return as_tensors(load_dataset(dataset, data_dir).test, n)
