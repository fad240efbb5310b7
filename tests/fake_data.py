"""Writers of tiny fake datasets in the exact on-disk formats the data module reads (and torchvision writes).

Each writer returns what it wrote, in the order a reader yields it: ``{"train": (images, labels),
"test": (images, labels)}`` with images as uint8 ``N x C x H x W`` tensors and labels as int64 tensors.
Images are random, so every image is distinct.
"""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import torch

Written = dict[str, tuple[torch.Tensor, torch.Tensor]]


def _random(n: int, channels: int, size: int, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (n,), generator=g)
    return images, labels


def _pickle_py2_style(obj: dict, path: Path) -> None:
    """Pickle like the original CIFAR files: protocol 2, numpy arrays referenced as numpy.core.multiarray."""
    data = pickle.dumps(obj, protocol=2).replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(data)


def write_cifar10(root: str | Path, n_train: int = 50, n_test: int = 10, seed: int = 0,
                  test_labels: torch.Tensor | None = None) -> Written:
    """``root/cifar-10-batches-py/``: five training batches, a test batch (labelled ``test_labels`` if given) and
    batches.meta."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train = _random(n_train, 3, 32, 10, seed)
    test = _random(n_test, 3, 32, 10, seed + 1)
    if test_labels is not None:
        test = (test[0], test_labels.clone())
    parts = np.array_split(np.arange(n_train), 5)
    for i, idx in enumerate(parts, start=1):
        _pickle_py2_style({
            "batch_label": f"training batch {i} of 5",
            "labels": train[1][idx].tolist(),
            "data": train[0][idx].reshape(len(idx), -1).numpy(),
            "filenames": [f"img_{j}.png" for j in idx],
        }, folder / f"data_batch_{i}")
    _pickle_py2_style({"batch_label": "testing batch 1 of 1", "labels": test[1].tolist(),
                       "data": test[0].reshape(n_test, -1).numpy(),
                       "filenames": [f"test_{j}.png" for j in range(n_test)]}, folder / "test_batch")
    _pickle_py2_style({"num_cases_per_batch": 10000, "label_names": [f"class{i}" for i in range(10)],
                       "num_vis": 3072}, folder / "batches.meta")
    return {"train": train, "test": test}


def write_cifar100(root: str | Path, n_train: int = 50, n_test: int = 10, seed: int = 0) -> Written:
    """``root/cifar-100-python/``: train, test (fine and coarse labels) and meta."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    written = {"train": _random(n_train, 3, 32, 100, seed), "test": _random(n_test, 3, 32, 100, seed + 1)}
    for split, (images, labels) in written.items():
        _pickle_py2_style({
            "filenames": [f"{split}_{j}.png" for j in range(len(images))],
            "batch_label": f"{split} batch",
            "fine_labels": labels.tolist(),
            "coarse_labels": (labels // 5).tolist(),
            "data": images.reshape(len(images), -1).numpy(),
        }, folder / split)
    _pickle_py2_style({"fine_label_names": [f"fine{i}" for i in range(100)],
                       "coarse_label_names": [f"coarse{i}" for i in range(20)]}, folder / "meta")
    return written


def write_svhn(root: str | Path, n_train: int = 50, n_test: int = 10, seed: int = 0) -> Written:
    """``root/train_32x32.mat`` and ``root/test_32x32.mat``: X is 32x32x3xN uint8, y is Nx1 with 10 for digit 0."""
    import scipy.io

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    written = {"train": _random(n_train, 3, 32, 10, seed), "test": _random(n_test, 3, 32, 10, seed + 1)}
    for split, (images, labels) in written.items():
        digits = np.where(labels.numpy() == 0, 10, labels.numpy()).astype(np.uint8).reshape(-1, 1)
        scipy.io.savemat(str(root / f"{split}_32x32.mat"),
                         {"X": images.permute(2, 3, 1, 0).numpy(), "y": digits})
    return written


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist(root: str | Path, n_train: int = 60, n_test: int = 10, seed: int = 0) -> Written:
    """The four gzip-compressed idx files (28x28 gray images, labels 0-9) directly in ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    written = {"train": _random(n_train, 1, 28, 10, seed), "test": _random(n_test, 1, 28, 10, seed + 1)}
    for prefix, (images, labels) in zip(("train", "t10k"), written.values()):
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images[:, 0].numpy())
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels.numpy())
    return written


def write_imagefolder(root: str | Path, n_train: int = 24, n_test: int = 8, num_classes: int = 3, size: int = 16,
                      seed: int = 0, test_folder: str = "test") -> Written:
    """``root/train/<class>/<i>.png`` and ``root/<test_folder>/<class>/<i>.png``, RGB PNGs (lossless).

    Returned in ImageFolder's order: by class name, then by file name."""
    from PIL import Image

    written = {}
    for split, folder, n, s in (("train", "train", n_train, seed), ("test", test_folder, n_test, seed + 1)):
        images, labels = _random(n, 3, size, num_classes, s)
        labels = torch.arange(n) % num_classes  # every class present in both splits
        for c in range(num_classes):
            (Path(root) / folder / f"class{c:02d}").mkdir(parents=True, exist_ok=True)
        for i, (image, label) in enumerate(zip(images, labels)):
            path = Path(root) / folder / f"class{int(label):02d}" / f"{i:05d}.png"
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(path)
        order = sorted(range(n), key=lambda i: (int(labels[i]), i))
        written[split] = (images[order], labels[order])
    return written


def pattern_task(n: int, seed: int, num_classes: int = 4, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """An in-memory task that a tiny net learns in a few steps and PGD breaks at eps 0.1: gray images of
    0.5 plus a class-specific +-0.15 random pattern (fixed across seeds) plus Gaussian noise (sd 0.1)."""
    patterns = torch.randint(0, 2, (num_classes, 1, size, size), generator=torch.Generator().manual_seed(0)) * 2.0 - 1
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = (0.5 + 0.15 * patterns[y] + 0.1 * torch.randn(n, 1, size, size, generator=g)).clamp(0, 1)
    return x, y
