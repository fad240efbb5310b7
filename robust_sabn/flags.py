"""The flags every command shares, defined once: ``--device``, ``--seed``, ``--data-dir``, ``--progress``
(``robust-sabn train`` takes the same names from its config's fields); and :class:`InRange`, the action of every
numeric flag."""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from .parsing import Range
from .rng import SEED_RANGE


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
