"""Robust accuracy against the attack radius: one evaluation per eps and a PNG of the curve."""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..io import atomic_write
from ..parsing import format_eps, parse_number
from .evaluate import EvaluationReport, evaluate
from .state import part


def eps_sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_values: Sequence[float], *,
              attack: str = "pgd-20", state_dir: str | os.PathLike | None = None,
              **kwargs: Any) -> list[EvaluationReport]:
    """:func:`evaluate` at every radius in ``eps_values`` (PGD-K, CW-K or APGD-CE; AutoAttack is too slow for a
    sweep). ``kwargs`` go to :func:`evaluate` (norm, route, seed, batch_size, processes, ...); each radius keeps
    its finished batches in its own folder ``eps-<eps>`` of ``state_dir``."""
    if attack == "autoattack":
        raise ConfigError("an eps sweep runs PGD or APGD-CE; pass attack 'pgd-20' or 'apgd-ce'")
    if not eps_values:
        raise ConfigError("an eps sweep needs at least one eps value, e.g. 0,2/255,4/255,8/255,16/255")
    norm = kwargs.get("norm", "Linf")
    radii = sorted(parse_number(eps, "eps") for eps in eps_values)
    return [evaluate(model, x, y, eps, attack=attack, state_dir=part(state_dir, f"eps-{format_eps(eps, norm)}"),
                     **kwargs) for eps in radii]


def plot_sweep(reports: Sequence[EvaluationReport], path: str | os.PathLike, title: str = "") -> Path:
    """Draw robust accuracy (%) against eps (in 1/255 for Linf) and write the PNG atomically."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    linf = reports[0].norm == "Linf"
    xs = [r.eps * 255 if linf else r.eps for r in reports]
    fig = Figure(figsize=(5, 3.5), dpi=120)
    ax = fig.add_subplot()
    ax.plot(xs, [100 * r.robust_acc for r in reports], marker="o",
            label=f"{reports[0].attack.upper()}, route {reports[0].route or '-'}")
    ax.set_xlabel("eps (x 1/255)" if linf else f"eps ({reports[0].norm})")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or f"{reports[0].n} images, seed {reports[0].seed}", fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))
