"""Datasets in their standard on-disk formats, as torchvision writes them (``download=True`` fetches them through
torchvision). CIFAR pickles are read with an unpickler that only admits numpy arrays: loading a file never runs code
from it. Every reader checks its files at load time and raises a one-line :class:`ConfigError` saying where the
files must be and how to get them.
"""
from __future__ import annotations

import gzip
import pickle
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from .images import ImageFiles, ImageTensors

FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"), Path("data/FashionMNIST/raw"))
DEFAULT_DATA_DIR = Path("data")


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
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, OSError) as error:
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
        labels = torch.from_numpy(mat["y"].astype(np.int64).reshape(-1))
        if len(labels) and not 1 <= int(labels.min()) <= int(labels.max()) <= 10:
            raise ValueError(f"labels must be 1 to 10, found {int(labels.min())} to {int(labels.max())}")
    except (ValueError, KeyError, OSError, NotImplementedError, scipy.io.matlab.MatReadError) as error:
        raise ConfigError(f"cannot read SVHN file {path}: {error}; delete it and fetch it again (--download)") from None
    return ImageTensors(images, labels % 10)  # label 10 is the digit 0


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
    except (OSError, EOFError, ValueError, zlib.error) as error:
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


def load_cifar(name: str, data_dir: Path | None, download: bool) -> tuple[ImageTensors, ImageTensors]:
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


def load_svhn(data_dir: Path | None, download: bool) -> tuple[ImageTensors, ImageTensors]:
    root = data_dir or DEFAULT_DATA_DIR
    files = [root / "train_32x32.mat", root / "test_32x32.mat"]
    if not all(f.is_file() for f in files) and download:
        _download("svhn", root)
    for f in files:
        if not f.is_file():
            raise _missing("svhn", f, "pass --data-dir with the folder holding train_32x32.mat and test_32x32.mat, "
                                      "or --download to fetch them (needs internet)")
    return _read_svhn(files[0]), _read_svhn(files[1])


def load_fashion_mnist(data_dir: Path | None, download: bool) -> tuple[ImageTensors, ImageTensors]:
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


def load_imagefolder(data_dir: Path | None, download: bool, image_size: int | None) -> tuple[ImageFiles, ImageFiles]:
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
