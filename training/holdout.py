"""The training images a config leaves out of its labeled set (``--train-size``), written as an extra-data ``.npz``
(``robust-sabn holdout``), so that the extra-data path runs offline: e.g. Fashion-MNIST's 47,000 other training
images as "extra" for a run on 12,000. The validation images stay out of both."""
from __future__ import annotations

import os
from pathlib import Path

from ..data import ImageTensors, fixed_subset, load_dataset, write_image_npz
from ..errors import ConfigError
from .config import TrainConfig


def write_heldout(config: TrainConfig, path: str | os.PathLike) -> tuple[Path, int]:
    """Write the training images ``config`` does not train on (outside its ``train_size`` subset and its validation
    split) to ``path`` in the generated-data papers' layout; returns the path and the number of images."""
    if config.train_size is None:
        raise ConfigError("the config trains on every training image, so none is left to hold out; set --train-size")
    splits = load_dataset(config.dataset, config.data_dir, download=config.download, val_size=config.val_size,
                          seed=config.seed)
    rest = fixed_subset(splits.train, config.train_size, config.seed, rest=True)
    if not isinstance(rest, ImageTensors):
        raise ConfigError(f"{config.dataset} is read from image files, not into memory, so its images cannot be "
                          "written out; use its folder as a dataset of its own")
    if not len(rest):
        raise ConfigError(f"--train-size {config.train_size} takes every training image of {config.dataset}, so none "
                          "is left to hold out; lower --train-size")
    return write_image_npz(path, rest), len(rest)
