"""Datasets in their standard on-disk formats, a validation split, batched augmentation, and a resumable,
sharded batch iterator.

Formats read (as torchvision writes them; ``download=True`` fetches them through torchvision):

- ``cifar10``: ``<data_dir>/cifar-10-batches-py/{data_batch_1..5,test_batch}`` (pickled batches);
- ``cifar100``: ``<data_dir>/cifar-100-python/{train,test}`` (pickled, fine labels);
- ``svhn``: ``<data_dir>/{train,test}_32x32.mat`` (MATLAB files, label 10 = digit 0);
- ``fashion-mnist``: the four idx files (``.gz`` or uncompressed) in ``<data_dir>``, by default
  ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``), then ``./data/FashionMNIST/raw``;
- ``imagefolder``: ``<data_dir>/train/<class>/*`` and ``<data_dir>/test/<class>/*`` (or ``val/``), any
  image format PIL reads, converted to RGB, resized (shorter side) and center-cropped to ``image_size``.

The small datasets are held in memory as uint8 tensors, so a batch is one indexing operation. CIFAR pickles
are read with an unpickler that only admits numpy arrays: loading a file never runs code from it.
"""
from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from ..errors import ConfigError

DATASETS = ("cifar10", "cifar100", "svhn", "fashion-mnist", "imagefolder")
FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"), Path("data/FashionMNIST/raw"))
DEFAULT_DATA_DIR = Path("data")

Augment = Callable[[Tensor, torch.Generator], Tensor]


# --------------------------------------------------------------------------------------------- datasets
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


# ----------------------------------------------------------------------------------------- augmentation
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


# ------------------------------------------------------------------------------------------------ readers
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR batch holds (numpy arrays, bytes); anything else is refused."""

    ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "numpy.core.multiarray":  # Python 2 era files; numpy 2 moved it to numpy._core
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: str) -> tuple[Tensor, Tensor]:
    try:
        with open(path, "rb") as f:
            entry = _NumpyOnlyUnpickler(f, encoding="latin1").load()
        images = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
        raise ConfigError(f"cannot read CIFAR batch {path}: {error}; delete the folder and fetch it again "
                          "(--download)") from None
    if len(images) != len(labels):
        raise ConfigError(f"CIFAR batch {path} holds {len(images)} images but {len(labels)} labels")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels)


def _read_cifar(folder: Path, files: Sequence[str], label_key: str) -> ImageTensors:
    parts = [_read_cifar_batch(folder / name, label_key) for name in files]
    return ImageTensors(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))


def _read_svhn(path: Path) -> ImageTensors:
    import scipy.io

    try:
        mat = scipy.io.loadmat(str(path))
        images = torch.from_numpy(np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1))).to(torch.uint8)
        labels = torch.from_numpy(mat["y"].astype(np.int64).reshape(-1)) % 10  # label 10 is the digit 0
    except (ValueError, KeyError, OSError, NotImplementedError) as error:
        raise ConfigError(f"cannot read SVHN file {path}: {error}; delete it and fetch it again (--download)") from None
    return ImageTensors(images, labels)


def _read_idx(path: Path) -> Tensor:
    """An idx file of unsigned bytes (the MNIST format), gzip-compressed or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        magic = int.from_bytes(data[:4], "big")
        if magic >> 8 != 0x08 or not 1 <= magic & 0xFF <= 4:
            raise ValueError(f"bad magic number {magic:#010x}")
        ndim = magic & 0xFF
        shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
        body = data[4 + 4 * ndim:]
        if len(body) != int(np.prod(shape)):
            raise ValueError(f"expected {int(np.prod(shape))} bytes of data for shape {shape}, found {len(body)}")
    except (OSError, EOFError, ValueError) as error:
        raise ConfigError(f"cannot read idx file {path}: {error}; replace it with an intact copy") from None
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).reshape(shape)


def _idx_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
            return candidate
    return None


def _read_fashion_mnist(folder: Path, prefix: str) -> ImageTensors:
    images = _read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.dim() != 3 or labels.dim() != 1 or len(images) != len(labels):
        raise ConfigError(f"Fashion-MNIST files in {folder} disagree: {tuple(images.shape)} images, "
                          f"{tuple(labels.shape)} labels")
    return ImageTensors(images.unsqueeze(1), labels.long())


# ------------------------------------------------------------------------------------- locating the files
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _missing(name: str, expected: Path, hint: str) -> ConfigError:
    return ConfigError(f"{name} not found: expected {expected}; {hint}")


def _download(name: str, root: Path) -> None:
    import torchvision.datasets as tvd

    root.mkdir(parents=True, exist_ok=True)
    try:
        if name == "svhn":
            for split in ("train", "test"):
                tvd.SVHN(str(root), split=split, download=True)
        else:
            dataset = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100, "fashion-mnist": tvd.FashionMNIST}[name]
            for train in (True, False):
                dataset(str(root), train=train, download=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError
        raise ConfigError(f"downloading {name} into {root} failed ({error}); check the internet connection or "
                          "put the files there by hand") from None


def _load_cifar(name: str, data_dir: Path | None, download: bool) -> tuple[ImageTensors, ImageTensors]:
    folder_name, train_files, test_files, label_key = {
        "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
        "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels"),
    }[name]
    root = data_dir or DEFAULT_DATA_DIR
    candidates = [root / folder_name, root]  # the torchvision root, or the batch folder itself

    def find() -> Path | None:
        return next((c for c in candidates if all((c / f).is_file() for f in train_files + test_files)), None)

    folder = find()
    if folder is None and download:
        _download(name, root)
        folder = find()
    if folder is None:
        raise _missing(name, root / folder_name / train_files[0],
                       f"pass --data-dir with the folder holding {folder_name}/, or --download to fetch it "
                       "(needs internet)")
    return _read_cifar(folder, train_files, label_key), _read_cifar(folder, test_files, label_key)


def _load_svhn(data_dir: Path | None, download: bool) -> tuple[ImageTensors, ImageTensors]:
    root = data_dir or DEFAULT_DATA_DIR
    files = [root / "train_32x32.mat", root / "test_32x32.mat"]
    if not all(f.is_file() for f in files) and download:
        _download("svhn", root)
    for f in files:
        if not f.is_file():
            raise _missing("svhn", f, "pass --data-dir with the folder holding train_32x32.mat and test_32x32.mat, "
                                      "or --download to fetch them (needs internet)")
    return _read_svhn(files[0]), _read_svhn(files[1])


def _load_fashion_mnist(data_dir: Path | None, download: bool) -> tuple[ImageTensors, ImageTensors]:
    if data_dir is not None:
        candidates = [data_dir, data_dir / "FashionMNIST" / "raw"]
    else:
        candidates = list(FASHION_MNIST_DIRS)

    def find() -> Path | None:
        return next((c for c in candidates if all(_idx_file(c, f) for f in FASHION_MNIST_FILES)), None)

    folder = find()
    if folder is None and download:
        root = data_dir or DEFAULT_DATA_DIR
        _download("fashion-mnist", root)
        if root / "FashionMNIST" / "raw" not in candidates:
            candidates.append(root / "FashionMNIST" / "raw")
        folder = find()
    if folder is None:
        raise _missing("fashion-mnist", candidates[0] / f"{FASHION_MNIST_FILES[0]}.gz",
                       f"looked in {', '.join(map(str, candidates))}; install the Debian package "
                       "dataset-fashion-mnist (apt install dataset-fashion-mnist), pass --data-dir with the folder "
                       "holding the idx files, or --download to fetch them (needs internet)")
    return _read_fashion_mnist(folder, "train"), _read_fashion_mnist(folder, "t10k")


def _load_imagefolder(data_dir: Path | None, download: bool, image_size: int | None) -> tuple[ImageFiles, ImageFiles]:
    if download:
        raise ConfigError("imagefolder data cannot be downloaded; pass --data-dir with train/ and test/ folders")
    if data_dir is None:
        raise ConfigError("imagefolder needs --data-dir: a folder with train/<class>/* and test/<class>/* images")
    test_dir = next((data_dir / n for n in ("test", "val") if (data_dir / n).is_dir()), data_dir / "test")
    for folder in (data_dir / "train", test_dir):
        if not folder.is_dir():
            raise _missing("imagefolder", folder, "make train/<class>/ and test/<class>/ (or val/<class>/) "
                                                  "folders of images under --data-dir")
    if image_size is None:
        from torchvision.datasets import ImageFolder

        try:
            image_size = min(ImageFolder(str(data_dir / "train"))[0][0].size)
        except (FileNotFoundError, IndexError) as error:
            raise ConfigError(f"no images under {data_dir / 'train'}: {error}") from None
    try:
        train, test = ImageFiles(data_dir / "train", image_size), ImageFiles(test_dir, image_size)
    except FileNotFoundError as error:  # a folder without class folders or images
        raise ConfigError(f"imagefolder: {error}") from None
    if train.classes != test.classes:
        raise ConfigError(f"imagefolder: train classes {train.classes} differ from {test_dir.name} classes "
                          f"{test.classes}")
    return train, test


# --------------------------------------------------------------------------------------- the public API
# name -> (num_classes, in_channels, image_size, mean, std, augmentation)
_FACTS = {
    "cifar10": (10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), CropFlip(4, flip=True)),
    "cifar100": (100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), CropFlip(4, flip=True)),
    "svhn": (10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), CropFlip(4, flip=False)),
    # Fashion-MNIST items are centred and aligned (all shoes point the same way): shifts only, no flips.
    "fashion-mnist": (10, 1, 28, (0.2860,), (0.3530,), CropFlip(2, flip=False)),
}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def default_val_size(n_train: int) -> int:
    """1,000 images or 10% of the training set, whichever is smaller."""
    return min(1000, n_train // 10)


def split_indices(n: int, val_size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Disjoint sorted (train, val) indices of ``range(n)``, ``val_size`` of them drawn for val by ``seed``."""
    if not 0 <= val_size < n:
        raise ConfigError(f"val_size must be between 0 and {n - 1} (the training set has {n} images), got {val_size}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[val_size:].sort().values, order[:val_size].sort().values


def _subset(dataset: Dataset, indices: Tensor) -> Dataset:
    return dataset.subset(indices) if isinstance(dataset, ImageTensors) else Subset(dataset, indices.tolist())


def load_dataset(name: str, data_dir: str | Path | None = None, *, download: bool = False,
                 val_size: int | None = None, seed: int = 0, image_size: int | None = None) -> DataSplits:
    """Read dataset ``name`` (one of :data:`DATASETS`) and hold out a validation split of its training set.

    ``val_size`` defaults to :func:`default_val_size`; which images go to validation is fixed by ``seed``.
    ``image_size`` applies to ``imagefolder`` only (default: the shorter side of its first training image).
    Missing files raise :class:`ConfigError` saying where they must be and how to get them.
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {list(DATASETS)}")
    data_dir = Path(data_dir).expanduser() if data_dir is not None else None
    if name == "imagefolder":
        train, test = _load_imagefolder(data_dir, download, image_size)
        size = train[0][0].shape[-1]
        facts = (len(train.classes), 3, size, IMAGENET_MEAN, IMAGENET_STD, CropFlip(max(1, size // 8), flip=True))
    else:
        if name in ("cifar10", "cifar100"):
            train, test = _load_cifar(name, data_dir, download)
        elif name == "svhn":
            train, test = _load_svhn(data_dir, download)
        else:
            train, test = _load_fashion_mnist(data_dir, download)
        facts = _FACTS[name]
    num_classes, in_channels, size, mean, std, augment = facts
    train_idx, val_idx = split_indices(len(train), default_val_size(len(train)) if val_size is None else val_size, seed)
    return DataSplits(name, _subset(train, train_idx), _subset(train, val_idx), test, num_classes, in_channels,
                      size, mean, std, augment)


# ----------------------------------------------------------------------------------------- the iterator
def _seed_of(*keys: int) -> int:
    """A well-mixed 64-bit seed from integer keys (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([int(k) % 2**64 for k in keys]).generate_state(1, np.uint64)[0])


def _divide(n: int, d: int, drop_last: bool) -> int:
    return n // d if drop_last else -(-n // d)


def num_batches(n_items: int, batch_size: int, *, drop_last: bool, world_size: int = 1) -> int:
    """Batches per rank that :func:`batch_iterator` yields for ``n_items`` items."""
    return _divide(_divide(n_items, world_size, drop_last), batch_size, drop_last)


def shard_indices(n_items: int, *, shuffle: bool, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                  drop_last: bool = False) -> Tensor:
    """This rank's item order for an epoch: one permutation shared by all ranks (a pure function of
    ``seed`` and ``epoch``), dealt round-robin. Shards are equally long: with ``drop_last`` the tail that does
    not divide evenly is dropped, otherwise the first items are repeated to fill it, as DistributedSampler does."""
    if shuffle:
        order = torch.randperm(n_items, generator=torch.Generator().manual_seed(_seed_of(seed, epoch)))
    else:
        order = torch.arange(n_items)
    total = _divide(n_items, world_size, drop_last) * world_size
    if total > n_items:
        order = torch.cat([order, order[: total - n_items]])
    return order[:total][rank::world_size]


def batch_iterator(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int, epoch: int, start_batch: int = 0,
                   drop_last: bool = False, rank: int = 0, world_size: int = 1, augment: Augment | None = None,
                   num_workers: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(x, y)`` batches of this rank's shard, from batch ``start_batch`` on.

    Order and augmentation are a pure function of (``seed``, ``epoch``, batch index, ``rank``): a run resumed
    with ``start_batch=k`` gets exactly batches k, k+1, ... of the uninterrupted run, and the skipped batches
    are never loaded. In-memory datasets are gathered batch by batch in this process; others are read by a
    ``DataLoader`` with ``num_workers`` workers. ``augment(x, generator)`` runs on each batch with a generator
    seeded for that batch.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside world_size {world_size}")
    order = shard_indices(len(dataset), shuffle=shuffle, seed=seed, epoch=epoch, rank=rank, world_size=world_size,
                          drop_last=drop_last)
    count = num_batches(len(dataset), batch_size, drop_last=drop_last, world_size=world_size)
    batches = [order[i * batch_size:(i + 1) * batch_size] for i in range(start_batch, count)]
    if isinstance(dataset, ImageTensors):
        loaded = (dataset.batch(indices) for indices in batches)
    else:
        loader = DataLoader(dataset, batch_sampler=[b.tolist() for b in batches], num_workers=num_workers)
        loaded = ((x, torch.as_tensor(y)) for x, y in loader)
    for index, (x, y) in enumerate(loaded, start=start_batch):
        if augment is not None:
            x = augment(x, torch.Generator().manual_seed(_seed_of(seed, epoch, index, rank)))
        yield x, y
