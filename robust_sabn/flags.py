"""The flags every command shares, defined once: ``--device``, ``--seed``, ``--data-dir``, ``--progress``.
(``robust-sabn train`` takes the same names from its config's fields.)"""
from __future__ import annotations

import argparse


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
