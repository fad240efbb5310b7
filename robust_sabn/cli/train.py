"""``robust-sabn train``: every field of :class:`TrainConfig` is a flag (``--step-size`` for ``step_size``)."""
from __future__ import annotations

import argparse
import os

from ..errors import ConfigError
from ..training.config import TrainConfig, recipe_names
from .flags import add_config_arguments, given_settings

EXAMPLES = """examples:
  robust-sabn train --config fashion-mnist-small --out-dir runs/fmnist
  robust-sabn train --config sabn-paper-cifar10 --data-dir data --out-dir runs/sabn
  robust-sabn train --dataset cifar10 --norm bn --objective madry --eps 8/255 --step-size 2/255 --steps 10
  robust-sabn train --resume runs/sabn --max-steps 20000
  torchrun --nproc_per_node=2 -m robust_sabn train --config sabn-paper-cifar10 --out-dir runs/ddp
"""


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """The run's config and whether it resumes: flags > ``--config`` file or recipe > defaults."""
    from ..training.run_dir import resume_config

    given = given_settings(args)
    if args.resume:
        if args.config:
            raise ConfigError("--resume takes the config of the run it continues; drop --config")
        return resume_config(args.resume, **given), True
    if args.config:
        return TrainConfig.from_file(args.config, **given), False
    return TrainConfig.from_dict(given, source="command line"), False


def run(args: argparse.Namespace) -> int:
    from ..training.loop import train

    config, resume = config_from_args(args)
    result = train(config, resume=resume)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, the first process reports
        return 0
    if resume and result.steps_run == 0:
        print(f"nothing to do: {result.run_dir} already ran {result.step} steps ({result.epoch} of {config.epochs} "
              "epochs); "
              + (f"raise --max-steps (now {config.max_steps}) to continue it" if result.epoch < config.epochs else
                 f"its --epochs {config.epochs} fix its schedule, which a resumed run keeps: start a new run for a "
                 "longer one"))
    elif result.best:
        print(f"run folder {result.run_dir}: {result.epoch} epochs, {result.step} steps; best robust validation "
              f"accuracy {100 * result.best['val_robust_acc']:.2f}% (step {result.best['step']}) in "
              f"{result.run_dir / 'best.pt'}")
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Adversarial training. Settings come from flags, over a --config file or recipe, over the "
                          "defaults; the resolved config is written to the run folder.")
    parser.epilog = EXAMPLES
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--config", help=f"a YAML/JSON file or a recipe: {', '.join(recipe_names())}")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    add_config_arguments(parser)
