"""The ``robust-sabn`` command and every subcommand, in this one package: one module per command, each defining
``add_arguments(parser)`` and ``run(args) -> int``; the flag groups they share in :mod:`robust_sabn.cli.flags`. No
command module imports another. A command's module is imported only when that command runs (so ``doctor`` works,
and says what is broken, when torchattacks or RobustBench is). Parsers never take an abbreviation of a flag."""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from typing import NoReturn

from ..devices import warn_if_oversubscribed
from ..errors import UserError
from ..version import __version__
from .flags import InRange

# name -> (module of this package, one-line help)
COMMANDS = {
    "quickstart": ("quickstart", "train a small SaBN model on Fashion-MNIST and print its clean/robust accuracy table"),
    "train": ("train", "adversarial training (PGD, hybrid SaBN, TRADES, fast) with checkpoints and resume"),
    "holdout": ("holdout", "write the training images a config does not train on as an extra-data .npz (offline)"),
    "eval": ("eval", "AutoAttack / APGD-CE / PGD / CW evaluation of a run folder, checkpoint or exported model"),
    "audit": ("audit", "the gradient-masking checklist: is a robust accuracy real? (JSON + Markdown verdict)"),
    "export": ("export", "fold a route and write the model in RobustBench's format (+ leaderboard card)"),
    "doctor": ("doctor", "check the environment (exit 0 only when every check passes)"),
}
BENCHMARKS = {
    "norms": ("bench.norms", "forward+backward time of BN, SaBN, AuxBN and the fused route split"),
    "train": ("bench.train", "train BN, AuxBN, SaAuxBN (and more) alike; clean/PGD accuracy per protocol"),
    "eval": ("bench.eval", "AutoAttack and PGD-10 through robust-sabn vs pyautoattack / torchattacks"),
    "data": ("bench.data", "the batched training augmentation vs a per-image loop, per device"),
    "gpu": ("bench.gpu", "on a CUDA device: training steps per precision, the fused split, AutoAttack"),
}


class Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors are one line naming the help to read (argparse prints the usage block
    first). Subparsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


def _attach(parser: argparse.ArgumentParser, module_name: str, command: str) -> None:
    """Give ``parser`` the arguments of the command in ``module_name`` (a module of this package, imported now)."""
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
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
        sub = subparsers.add_parser(name, help=help_text, allow_abbrev=False)  # no flag read as a longer one
        if name != chosen:
            continue
        if module is None:  # a group of commands: ``bench``
            rest = argv[argv.index(name) + 1:]
            _add_commands(sub, BENCHMARKS, rest, "benchmark", f"{prefix}{name} ")
        else:
            _attach(sub, module, prefix + name)


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    parser = Parser(
        prog="robust-sabn", allow_abbrev=False,
        description="Adversarial training with dual-path Sandwich BN, AutoAttack evaluation, RobustBench export.")
    parser.add_argument("--version", action="version", version=f"robust-sabn {__version__}")
    commands = {**COMMANDS, "bench": (None, "speed and quality benchmarks (print tables of ratios)")}
    _add_commands(parser, commands, argv, "command", "")
    return parser


def command_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    """Every command's parser, as ("eval", parser) or ("bench norms", parser)."""
    found = []
    for argv in [[name] for name in COMMANDS] + [["bench", name] for name in BENCHMARKS]:
        parser = build_parser(argv)
        for word in argv:
            parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
        found.append((" ".join(argv), parser))
    return found


def numeric_flags() -> list[tuple[str, argparse.Action]]:
    """Every flag that takes a number, of every command but ``train`` (whose numbers are its config's fields), as
    (the command, the flag's argparse action): for the documentation's table of ranges and for the tests."""
    return [(name, action) for name, parser in command_parsers() if name != "train" for action in parser._actions
            if isinstance(action, InRange) or action.type in (int, float)]


def one_line_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    """Warnings in the command's voice, one line each (Python's form adds the file, the line and its source)."""
    print(f"robust-sabn: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning
            args, unknown = build_parser(argv).parse_known_args(argv)
            if unknown:  # named with the command's own help (the top parser would name its own)
                command = " ".join(filter(None, ["robust-sabn", args.command, getattr(args, "benchmark", None)]))
                raise UserError(f"unrecognized arguments: {' '.join(unknown)}; see `{command} --help`")
            if args.command != "doctor":
                warn_if_oversubscribed()
            return int(args.run(args) or 0)
    except UserError as err:
        print(f"robust-sabn: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robust-sabn: interrupted", file=sys.stderr)
        return 130
