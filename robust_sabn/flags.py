"""The flags every command shares, defined once: ``--device``, ``--seed``, ``--data-dir``, ``--progress``.
(``robust-sabn train`` takes the same names from its config's fields.)"""
from __future__ import annotations

import argparse
import sys
from typing import Any


def add_common_flags(parser: argparse.ArgumentParser, *, seed: int | None = 0, data: bool = True) -> None:
    """Add the shared flags; ``seed=None`` leaves the default to the command (e.g. its recipe's), ``data=False``
    leaves out ``--data-dir`` for commands that read no dataset."""
    parser.add_argument("--device", default="auto",
                        help="auto (this process's GPU when CUDA is available, else the CPU), cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=seed,
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
