"""``robust-sabn holdout``: write the training images a config leaves out of its labeled set as an extra-data
``.npz`` (:func:`robust_sabn.training.holdout.write_heldout`). It takes ``robust-sabn train``'s flags, so the same
flags name the same labeled set."""
from __future__ import annotations

import argparse

from ..training.config import TrainConfig, recipe_names
from ..training.holdout import write_heldout
from .flags import add_config_arguments, given_settings


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
