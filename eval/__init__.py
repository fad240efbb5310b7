"""Installed as ``robust_sabn.eval`` (pyproject.toml's package-dir maps this folder there): evaluation.

The real AutoAttack and PGD/CW checks on one fixed route, reports, eps sweeps, speed benchmarks.
"""
from .autoattack_runner import autoattack_backend, run_autoattack
from .cw import CWPGD
from .evaluate import ATTACKS, describe_attack, evaluate
from .report import to_markdown, write_report
from .sweep import eps_sweep, plot_sweep

__all__ = [
    "ATTACKS", "CWPGD", "autoattack_backend", "describe_attack", "eps_sweep", "evaluate", "plot_sweep",
    "run_autoattack", "to_markdown", "write_report",
]
