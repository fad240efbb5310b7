"""Robust accuracy against the attack radius: one evaluation per eps and a PNG of the curve."""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..io import atomic_write
from ..stats import error_bars
from .evaluate import EvaluationReport, evaluate
from .settings import EvalSettings
from .state import part


def eps_sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, radii: Sequence[float | str],
              settings: EvalSettings, *, route: str | None = None, clean_route: str | None = None,
              state_dir: str | os.PathLike | None = None) -> list[EvaluationReport]:
    """:func:`evaluate` at every radius in ``radii`` (in ``settings``' threat model, with its attack: PGD-K, CW-K or
    APGD-CE; AutoAttack is too slow for a sweep), smallest first; each radius keeps its finished batches in its own
    folder ``eps-<eps>`` of ``state_dir``; with ``settings.keep_adversarials`` each report keeps its broken points."""
    if getattr(settings.attack, "name", None) == "autoattack":
        raise ConfigError("an eps sweep runs PGD or APGD-CE; pass attack 'pgd-20' or 'apgd-ce'")
    if not radii:
        raise ConfigError("an eps sweep needs at least one eps value, e.g. 0,2/255,4/255,8/255,16/255")
    threats = sorted((settings.threat.with_eps(eps) for eps in radii), key=lambda threat: threat.eps)
    return [evaluate(model, x, y, replace(settings, threat=threat), route=route, clean_route=clean_route,
                     state_dir=part(state_dir, f"eps-{threat.eps_str}")) for threat in threats]


def plot_sweep(reports: Sequence[EvaluationReport], path: str | os.PathLike, title: str = "") -> Path:
    """Draw robust accuracy (%) against eps (in 1/255 for Linf), with error bars of its 95% Wilson interval, and
    write the PNG atomically."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    norm = reports[0].threat.norm
    xs = [r.threat.eps * 255 if norm == "Linf" else r.threat.eps for r in reports]
    fig = Figure(figsize=(5, 3.5), dpi=120)
    ax = fig.add_subplot()
    ys = [100 * r.robust_acc for r in reports]
    ax.errorbar(xs, ys, yerr=error_bars([r.robust_acc for r in reports], [r.robust_acc_ci for r in reports]),
                marker="o", capsize=3, label=f"{reports[0].attack.upper()}, route {reports[0].route or '-'}, 95% CI")
    ax.set_xlabel("eps (x 1/255)" if norm == "Linf" else f"eps ({norm})")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or f"{reports[0].n} images, seed {reports[0].seed}", fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))
