"""The ``robust-sabn`` command. Each subcommand lives beside the code it drives and registers itself here."""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import UserError

# Modules defining ``add_commands(subparsers)`` and/or ``add_benchmarks(subparsers)`` (``robust-sabn bench ...``).
COMMAND_MODULES = (
    "robust_sabn.eval.bench_norms",
    "robust_sabn.doctor",
    "robust_sabn.eval.cli",
    "robust_sabn.eval.export_cli",
    "robust_sabn.eval.bench_eval",
    "robust_sabn.training.cli",
    "robust_sabn.training.bench",
    "robust_sabn.quickstart",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robust-sabn",
        description="Adversarial training with dual-path Sandwich BN, AutoAttack evaluation, RobustBench export.",
    )
    parser.add_argument("--version", action="version", version=f"robust-sabn {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench = subparsers.add_parser("bench", help="speed and quality benchmarks (print tables of ratios)")
    benchmarks = bench.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        for hook, target in (("add_commands", subparsers), ("add_benchmarks", benchmarks)):
            if hasattr(module, hook):
                getattr(module, hook)(target)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except UserError as err:
        print(f"robust-sabn: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robust-sabn: interrupted", file=sys.stderr)
        return 130
