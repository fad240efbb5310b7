"""``robust-sabn holdout``: write the training images a config leaves out of its labeled set (``--train-size``) as
an extra-data ``.npz``, so that the extra-data path runs offline: e.g. Fashion-MNIST's 47,000 other training
images as "extra" for a run on 12,000. It takes ``robust-sabn train``'s flags, so the same flags name the same
labeled set; the validation images stay out of both."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..data import ImageTensors, fixed_subset, load_dataset, write_image_npz
from ..errors import ConfigError
from .cli import add_config_arguments, given_settings
from .config import TrainConfig, recipe_names


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


def run(args: argparse.Namespace) -> int:
    given = given_settings(args)
    config = TrainConfig.from_file(args.config, **given) if args.config else TrainConfig.from_dict(given)
    path, count = write_heldout(config, args.out)
    print(f"wrote {count} {config.dataset} training images held out of the {config.train_size} labeled ones to {path}; "
          f"train with --extra-data {path}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Write the training images a training config leaves out of its labeled set (--train-size; "
                          "the validation split stays out too) as an .npz of 'image' and 'label', the layout "
                          "--extra-data reads.")
    parser.add_argument("--out", required=True, help="the .npz file to write")
    parser.add_argument("--config", help=f"a YAML/JSON file or a recipe: {', '.join(recipe_names())}")
    add_config_arguments(parser)
