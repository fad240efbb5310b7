"""``robust-sabn train``: every field of :class:`TrainConfig` is a flag (``--step-size`` for ``step_size``)."""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from ..errors import ConfigError
from ..models import CONV_LAYERS, list_models
from ..nn import norm_kinds
from .config import AMP_MODES, ATTACK_NORMS, BN_MODES, DEVICES, TrainConfig, recipe_names
from .data import DATASETS
from .objectives import OBJECTIVES

EXAMPLES = """examples:
  robust-sabn train --config fashion-mnist-small --out-dir runs/fmnist
  robust-sabn train --config sabn-paper-cifar10 --data-dir data --out-dir runs/sabn
  robust-sabn train --dataset cifar10 --norm bn --objective madry --eps 8/255 --step-size 2/255 --steps 10
  robust-sabn train --resume runs/sabn --max-steps 20000
  torchrun --nproc_per_node=2 -m robust_sabn train --config sabn-paper-cifar10 --out-dir runs/ddp
"""


def flag_help() -> dict[str, str]:
    """Help per config field; the lists of choices are read from the registries when the parser is built."""
    return {
        "dataset": f"one of: {', '.join(DATASETS)}",
        "data_dir": "folder holding the dataset (default: the dataset's usual place)",
        "download": "download the dataset if missing (needs internet)",
        "val_size": "validation images held out of the training set (default: min(1000, 10%%))",
        "train_size": "train on a fixed random subset of this many images",
        "arch": f"one of: {', '.join(list_models())}",
        "norm": f"normalization layer, one of: {', '.join(norm_kinds())}",
        "conv": f"convolution layer, one of: {', '.join(CONV_LAYERS)}",
        "width": "base width of resnet_small",
        "objective": f"one of: {', '.join(OBJECTIVES)}",
        "eps": "attack radius; fractions allowed (8/255)",
        "step_size": "training attack step (default eps/4; 1.25*eps for fast)",
        "steps": "training attack steps",
        "attack_norm": f"one of: {', '.join(ATTACK_NORMS)}",
        "beta": "TRADES trade-off",
        "bn_mode": f"BN mode while crafting training attacks, one of: {', '.join(BN_MODES)}",
        "val_steps": "PGD steps of the per-epoch validation attack (adv route, eval mode)",
        "epochs": "epochs; fixes the length of the learning-rate schedule",
        "max_steps": "stop after this many optimizer steps in total (never changes the schedule)",
        "batch_size": "batch size per process",
        "lr": "base learning rate of SGD",
        "momentum": "SGD momentum",
        "weight_decay": "SGD weight decay",
        "milestones": "epochs at which the learning rate is multiplied by --lr-gamma (e.g. 50 150)",
        "lr_gamma": "learning-rate decay factor at each milestone",
        "warmup_steps": "linear learning-rate warm-up over this many steps",
        "out_dir": "run folder (default: runs/<dataset>-<arch>-<norm>-<objective>-<time>)",
        "seed": "seed of everything random",
        "device": f"one of: {', '.join(DEVICES)}",
        "amp": f"mixed precision on CUDA, one of: {', '.join(AMP_MODES)} (--amp alone: bf16)",
        "channels_last": "channels-last memory format (default: on CUDA with --amp; on CPU, where it is faster, "
                         "unless oneDNN mishandles the model there: see docs/memory-format.md)",
        "deterministic": "deterministic algorithms only (torch.use_deterministic_algorithms)",
        "sync_bn": "synchronize batch statistics across processes (SyncBatchNorm; CUDA)",
        "save_every": "also write last.pt every N optimizer steps (0: once per epoch)",
        "log_every": "write a metrics.jsonl line every N optimizer steps",
        "num_workers": "data-loading worker processes",
        "progress": "show tqdm progress bars",
    }


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, all defaulting to "not given" so that only given flags override."""
    helps = flag_help()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
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
    if result.best and os.environ.get("RANK", "0") == "0":  # under torchrun, the first process reports
        print(f"run folder {result.run_dir}: {result.epoch} epochs, {result.step} steps; best robust validation "
              f"accuracy {100 * result.best['val_robust_acc']:.2f}% (step {result.best['step']}) in "
              f"{result.run_dir / 'best.pt'}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="adversarial training (PGD, hybrid SaBN, TRADES, fast) with checkpoints and resume",
        description="Adversarial training. Settings come from flags, over a --config file or recipe, over the "
                    "defaults; the resolved config is written to the run folder.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=f"a YAML/JSON file or a recipe: {', '.join(recipe_names())}")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    add_config_arguments(parser)
    parser.set_defaults(run=run)
