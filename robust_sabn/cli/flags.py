"""Flag groups shared by commands, defined once in this module that no command owns: the common flags
(``--device``, ``--seed``, ``--data-dir``, ``--progress``), the model a command loads with its route and threat
model (``eval``, ``export``), ``--recalibrate``, the training config's flags (``train``, ``holdout``), and old flag
names kept for a version; and :class:`InRange`, the action of every numeric flag."""
from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any

from ..constants import AA_VERSIONS
from ..limits import BATCH_SIZE, IMAGES
from ..parsing import Range
from ..rng import SEED_RANGE
from ..threat import THREAT_MODELS


class InRange(argparse.Action):
    """A numeric flag with a range (``add_argument("--n", action=InRange, limits=Range(...))``): its help shows the
    range, and a value that is no number or lies outside it is one ConfigError line naming the flag, the range and
    an example (raised through argparse, which would print its usage instead)."""

    def __init__(self, option_strings: Sequence[str], dest: str, limits: Range, help: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(option_strings, dest, help=f"{help + '; ' if help else ''}range {limits}", **kwargs)
        self.limits = limits

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        flag = option_string or self.dest
        parsed = ([self.limits.parse(v, flag) for v in values] if isinstance(values, list)
                  else self.limits.parse(values, flag))
        setattr(namespace, self.dest, parsed)


def add_common_flags(parser: argparse.ArgumentParser, *, seed: int | None = 0, data: bool = True) -> None:
    """Add the shared flags; ``seed=None`` leaves the default to the command (e.g. its recipe's), ``data=False``
    leaves out ``--data-dir`` for commands that read no dataset."""
    parser.add_argument("--device", default="auto",
                        help="auto (this process's GPU when CUDA is available, else the CPU), cpu, cuda or cuda:N")
    parser.add_argument("--seed", action=InRange, limits=SEED_RANGE, default=seed,
                        help="seed of everything random" + (f" (default {seed})" if seed is not None else ""))
    if data:
        parser.add_argument("--data-dir", help="folder holding the dataset (default: the dataset's usual place)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help="progress bars (default: on)")


class DeprecatedAlias(argparse.Action):
    """An old flag name that still works for a version: it stores into the new flag's setting and says, in one line
    on stderr, to use the new name."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, help=argparse.SUPPRESS, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"robust-sabn: warning: {option_string} is deprecated and will be removed; use {self.new}",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model to load, and the route and threat model to use: shared by ``eval``, ``audit`` and ``export``."""
    parser.add_argument("checkpoint", metavar="RUN_DIR_OR_CHECKPOINT",
                        help="run folder (best.pt, else last.pt), training checkpoint, exported <name>.pt or "
                             "<name>.safetensors, or a Hugging Face model folder (also models--org--name in its cache)")
    parser.add_argument("--model", help="architecture for a plain state dict, or the Python callable an architecture "
                                        "file names, if you trust it: zoo name or 'module:callable'")
    parser.add_argument("--model-kwargs", help="JSON keyword arguments for --model, e.g. '{\"num_classes\": 10}'")
    parser.add_argument("--route", help="route to evaluate / fold (default: the route training attacked, adv)")
    parser.add_argument("--dataset", help="default: the dataset the model was trained on, else cifar10")
    parser.add_argument("--threat-model", choices=THREAT_MODELS, help="default: the training attack's, else Linf")
    parser.add_argument("--eps", help="attack radius, e.g. 8/255 (default: the training eps, else 8/255)")
    parser.add_argument("--n-examples", action=InRange, limits=IMAGES, default=1000,
                        help="first N test images (default 1000)")
    parser.add_argument("--version", default="standard", choices=[v for v in AA_VERSIONS if v != "custom"],
                        help="AutoAttack version (default standard)")
    parser.add_argument("--batch-size", action=InRange, limits=BATCH_SIZE.but(example="256"), default=256,
                        help="images per batch; each batch is attacked with its own seed (default 256)")


def add_recalibrate_flag(parser: argparse.ArgumentParser) -> None:
    """``--recalibrate N``, shared by ``eval --route-mix`` and ``export --route-mix``."""
    parser.add_argument("--recalibrate", action=InRange, limits=IMAGES.but(example="2000"), metavar="N",
                        help="with --route-mix: re-estimate each mixture's BN statistics on N training images, a share "
                             "t of them PGD-5 adversarials (docs/route-mixing.md; e.g. 2000)")


def add_plus_images_flag(parser: argparse.ArgumentParser, default: int) -> None:
    """``--plus-images N``: the first images the audit's convergence check attacks with AutoAttack's plus version
    (``audit``, ``export --audit``)."""
    parser.add_argument("--plus-images", action=InRange, limits=IMAGES.but(example="100"), default=default,
                        help=f"the audit attacks the first N images with AutoAttack's plus version (default {default})")


def flag_help() -> dict[str, str]:
    """Help per config field: the field's ``help`` metadata, then its choices where it has a fixed set (read from
    the registries now, so registered additions show)."""
    from ..training.config import TrainConfig, choices

    helps = {}
    for f in dataclasses.fields(TrainConfig):
        known, limits = choices(f), f.metadata["limits"]
        helps[f.name] = (f.metadata["help"] + (f", one of: {', '.join(known)}" if known else "")
                         + (f"; range {limits}" if limits else ""))
    return helps


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, all defaulting to "not given" so that only given flags override; a renamed field's
    old flag too, with a warning (:data:`~robust_sabn.training.config.RENAMED`)."""
    from ..training.config import RENAMED, TrainConfig, flag_name

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
            parser.add_argument(flag, nargs="+", default=argparse.SUPPRESS, metavar="N" if "int" in kind else "NAME",
                                help=helps[f.name])
        else:
            parser.add_argument(flag, default=argparse.SUPPRESS, metavar=f.name.upper(), help=helps[f.name])
    for old, new in RENAMED.items():
        parser.add_argument(flag_name(old), dest=new, action=DeprecatedAlias, new=flag_name(new),
                            default=argparse.SUPPRESS)


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields set by flags on the command line."""
    from ..training.config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    if "milestones" in values:
        values["milestones"] = ",".join(values["milestones"])
    return values
