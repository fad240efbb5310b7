"""``robust-sabn train``: every field of :class:`TrainConfig` is a flag (``--step-size`` for ``step_size``)."""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from ..errors import ConfigError
from .config import TrainConfig, choices, flag_name, recipe_names

EXAMPLES = """examples:
  robust-sabn train --config fashion-mnist-small --out-dir runs/fmnist
  robust-sabn train --config sabn-paper-cifar10 --data-dir data --out-dir runs/sabn
  robust-sabn train --dataset cifar10 --norm bn --objective madry --eps 8/255 --step-size 2/255 --steps 10
  robust-sabn train --resume runs/sabn --max-steps 20000
  torchrun --nproc_per_node=2 -m robust_sabn train --config sabn-paper-cifar10 --out-dir runs/ddp
"""


def flag_help() -> dict[str, str]:
    """Help per config field: the field's ``help`` metadata, then its choices where it has a fixed set (read from
    the registries now, so registered additions show) or its range where it is a number."""
    helps = {}
    for f in dataclasses.fields(TrainConfig):
        known, limits = choices(f), f.metadata["limits"]
        helps[f.name] = (f.metadata["help"] + (f", one of: {', '.join(known)}" if known else "")
                         + (f"; range {limits}" if limits else ""))
    return helps


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, all defaulting to "not given" so that only given flags override."""
    helps = {name: text.replace("%", "%%") for name, text in flag_help().items()}  # argparse formats help with %
    for f in dataclasses.fields(TrainConfig):
        flag = flag_name(f.name)
        kind = str(f.type)
        if f.name == "amp":
            parser.add_argument(flag, nargs="?", const="bf16", default=argparse.SUPPRESS, help=helps[f.name])
        elif kind.startswith("bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=helps[f.name])
        elif kind.startswith("list"):
            parser.add_argument(flag, nargs="+", default=argparse.SUPPRESS, metavar="N", help=helps[f.name])
        else:
            parser.add_argument(flag, default=argparse.SUPPRESS, metavar=f.name.upper(), help=helps[f.name])


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields set by flags on the command line."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if "milestones" in values:
        values["milestones"] = ",".join(values["milestones"])
    return values


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, bool]:
    """The run's config and whether it resumes: flags > ``--config`` file or recipe > defaults."""
    from .run_dir import resume_config

    given = given_settings(args)
    if args.resume:
        if args.config:
            raise ConfigError("--resume takes the config of the run it continues; drop --config")
        return resume_config(args.resume, **given), True
    if args.config:
        return TrainConfig.from_file(args.config, **given), False
    return TrainConfig.from_dict(given, source="command line"), False


def run(args: argparse.Namespace) -> int:
    from .loop import train

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
