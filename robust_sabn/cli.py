"""The ``robust-sabn`` command. A command's module is imported only when that command runs (so ``doctor`` works,
and says what is broken, when torchattacks or RobustBench is); each defines ``add_arguments(parser)`` and
``run(args) -> int``."""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import UserError
from .flags import InRange

# name -> (module, one-line help)
COMMANDS = {
    "quickstart": ("robust_sabn.quickstart",
                   "train a small SaBN model on Fashion-MNIST and print its clean/robust accuracy table"),
    "train": ("robust_sabn.training.cli",
              "adversarial training (PGD, hybrid SaBN, TRADES, fast) with checkpoints and resume"),
    "holdout": ("robust_sabn.training.holdout",
                "write the training images a config does not train on as an extra-data .npz (offline extra data)"),
    "eval": ("robust_sabn.eval.cli",
             "AutoAttack / APGD-CE / PGD / CW evaluation of a run folder, checkpoint or exported model"),
    "export": ("robust_sabn.exporting.cli",
               "fold a route and write the model in RobustBench's format (+ leaderboard card)"),
    "doctor": ("robust_sabn.doctor", "check the environment (exit 0 only when every check passes)"),
}
BENCHMARKS = {
    "norms": ("robust_sabn.bench.norms", "forward+backward time of BN, SaBN, AuxBN and the fused route split"),
    "train": ("robust_sabn.bench.train", "train BN, AuxBN, SaAuxBN (and more) alike; clean/PGD accuracy per protocol"),
    "eval": ("robust_sabn.bench.eval", "AutoAttack and PGD-10 through robust-sabn vs pyautoattack / torchattacks"),
    "data": ("robust_sabn.bench.data", "the batched training augmentation vs a per-image loop, per device"),
    "gpu": ("robust_sabn.bench.gpu", "on a CUDA device: training steps per precision, the fused split, AutoAttack"),
}


def _attach(parser: argparse.ArgumentParser, module_name: str, command: str) -> None:
    """Give ``parser`` the arguments of the command in ``module_name`` (imported now)."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"`robust-sabn {command}` cannot start ({type(err).__name__}: {err}); "
                        "run `robust-sabn doctor` for the fix") from None
    module.add_arguments(parser)
    parser.set_defaults(run=module.run)


def _add_commands(parser: argparse.ArgumentParser, commands: dict[str, tuple[str, str]], argv: list[str],
                  dest: str, prefix: str) -> None:
    """One subparser per command; only the one named in ``argv`` gets its arguments (and its module imported)."""
    subparsers = parser.add_subparsers(dest=dest, metavar=dest.upper(), required=True)
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, (module, help_text) in commands.items():
        sub = subparsers.add_parser(name, help=help_text)
        if name != chosen:
            continue
        if module is None:  # a group of commands: ``bench``
            rest = argv[argv.index(name) + 1:]
            _add_commands(sub, BENCHMARKS, rest, "benchmark", f"{prefix}{name} ")
        else:
            _attach(sub, module, prefix + name)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robust-sabn",
        description="Adversarial training with dual-path Sandwich BN, AutoAttack evaluation, RobustBench export.")
    parser.add_argument("--version", action="version", version=f"robust-sabn {__version__}")
    commands = {**COMMANDS, "bench": (None, "speed and quality benchmarks (print tables of ratios)")}
    _add_commands(parser, commands, argv, "command", "")
    return parser


def numeric_flags() -> list[tuple[str, argparse.Action]]:
    """Every flag that takes a number, of every command but ``train`` (whose numbers are its config's fields), as
    (the command, the flag's argparse action): for the documentation's table of ranges and for the tests."""
    found = []
    for argv in [[name] for name in COMMANDS if name != "train"] + [["bench", name] for name in BENCHMARKS]:
        parser = build_parser(argv)
        for word in argv:
            parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
        found += [(" ".join(argv), action) for action in parser._actions
                  if isinstance(action, InRange) or action.type in (int, float)]
    return found


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(argv).parse_args(argv)
        return int(args.run(args) or 0)
    except UserError as err:
        print(f"robust-sabn: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robust-sabn: interrupted", file=sys.stderr)
        return 130
