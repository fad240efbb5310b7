"""Extra training images in the layout the generated-data papers publish (Rebuffi et al. 2021's DDPM images, Wang
et al. 2023's EDM images): one ``.npz`` holding ``image``, uint8 ``N x H x W x C``, and ``label``, integers ``N``,
the two keys their loaders read. Pseudo-labelled unlabeled images take the same form (the labels a model gave).

Reading never unpickles (``allow_pickle=False``); every defect is a one-line :class:`ConfigError`.
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..io import atomic_write
from .images import ImageTensors

IMAGE_KEY, LABEL_KEY = "image", "label"
LAYOUT = f"'{IMAGE_KEY}' (uint8 N x H x W x C) and '{LABEL_KEY}' (integers N)"


def read_image_npz(path: str | os.PathLike, *, num_classes: int, in_channels: int, image_size: int) -> ImageTensors:
    """The images and labels of an ``.npz`` in the papers' layout, checked against the dataset they join: images
    of ``image_size`` x ``image_size`` pixels with ``in_channels`` channels (a 3-D array of gray images is
    accepted for one channel), labels in ``[0, num_classes)``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no extra-data file at {path}; pass an .npz holding {LAYOUT}")
    unreadable = (OSError, ValueError, zipfile.BadZipFile, EOFError)
    try:
        loaded = np.load(path, allow_pickle=False)
    except unreadable as err:
        raise _unreadable(path, err) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ConfigError(f"{path} holds a single array, not an .npz; extra data needs {LAYOUT}")
    try:
        with loaded as npz:
            names = list(npz.files)
            arrays = {key: npz[key] for key in (IMAGE_KEY, LABEL_KEY) if key in names}
    except unreadable as err:
        raise _unreadable(path, err) from None
    missing = [key for key in (IMAGE_KEY, LABEL_KEY) if key not in arrays]
    if missing:
        raise ConfigError(f"{path} holds {', '.join(map(repr, names)) or 'no arrays'}, not "
                          f"{' and '.join(map(repr, missing))}; extra data needs {LAYOUT}")
    images, labels = arrays[IMAGE_KEY], arrays[LABEL_KEY]
    if images.dtype != np.uint8:
        raise ConfigError(f"{path}: '{IMAGE_KEY}' is {images.dtype}, not uint8 (pixel values 0-255); convert it with "
                          "np.uint8(np.clip(np.round(x * 255), 0, 255)) for images in [0, 1]")
    if images.ndim == 3 and in_channels == 1:
        images = images[..., None]
    expected = (image_size, image_size, in_channels)
    if images.ndim != 4 or images.shape[1:] != expected:
        raise ConfigError(f"{path}: '{IMAGE_KEY}' has shape {images.shape}, but the dataset's images are "
                          f"N x {' x '.join(map(str, expected))} (N x H x W x C)")
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise ConfigError(f"{path}: '{LABEL_KEY}' must be a 1-D array of integers, got {labels.dtype} of shape "
                          f"{labels.shape}")
    if len(labels) != len(images) or not len(images):
        raise ConfigError(f"{path} holds {len(images)} images and {len(labels)} labels; both must be the same, "
                          "non-zero number")
    if not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        raise ConfigError(f"{path}: labels run from {int(labels.min())} to {int(labels.max())}, but the dataset has "
                          f"classes 0 to {num_classes - 1}")
    nchw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return ImageTensors(nchw, torch.from_numpy(labels.astype(np.int64)))


def _unreadable(path: Path, err: Exception) -> ConfigError:
    return ConfigError(f"cannot read {path} as an .npz of plain arrays ({str(err).splitlines()[0]}); extra data "
                       f"needs {LAYOUT}")


def write_image_npz(path: str | os.PathLike, data: ImageTensors) -> Path:
    """Write ``data`` as an ``.npz`` in the papers' layout (atomically)."""
    buffer = io.BytesIO()  # numpy's zip writer wants a real file or a path; atomic_write gives neither
    np.savez(buffer, **{IMAGE_KEY: data.images.permute(0, 2, 3, 1).contiguous().numpy(),
                        LABEL_KEY: data.labels.numpy()})
    return atomic_write(path, lambda f: f.write(buffer.getbuffer()))
