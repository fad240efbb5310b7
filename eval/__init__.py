"""Installed as ``robust_sabn.eval`` (pyproject.toml's package-dir maps this folder there): evaluation.

The real AutoAttack and PGD/CW checks on one fixed route, in fixed independently seeded batches; reports; eps
sweeps.
"""
from .attacks import EVAL_ATTACKS, EvalAttack, make_eval_attack
from .autoattack import AutoAttackOptions, autoattack_backend, run_autoattack
from .batches import BatchResult, robust_points
from .evaluate import EvaluationReport, ProtocolResult, evaluate
from .report import to_markdown, write_report
from .settings import EvalSettings
from .sweep import eps_sweep, plot_sweep

__all__ = [
    "EVAL_ATTACKS", "AutoAttackOptions", "BatchResult", "EvalAttack", "EvalSettings", "EvaluationReport",
    "ProtocolResult", "autoattack_backend", "eps_sweep", "evaluate", "make_eval_attack", "plot_sweep",
    "robust_points", "run_autoattack", "to_markdown", "write_report",
]
