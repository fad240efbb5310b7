"""The clean/robust trade-off of a dual-route model: one deployable model per mixture of its routes
(:func:`robust_sabn.mix_routes`), each evaluated under the single-route protocol, drawn as a Pareto plot with the
two routes and the paper's oracle routing marked."""
from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..constants import ORACLE_ROUTING
from ..io import atomic_write
from ..mixing import mix_routes, mixture_weights
from .evaluate import EvaluationReport


@dataclass
class FrontPoint:
    """One mixture ``(1 - t)`` clean route + ``t`` adv route and its single-route evaluation."""

    t: float
    report: EvaluationReport


def mixture_front(model: nn.Module, tradeoffs: Sequence[float], evaluate_one: Callable[[nn.Module], EvaluationReport],
                  clean: str, adv: str) -> list[FrontPoint]:
    """``evaluate_one`` (an evaluation of a plain model, e.g. ``functools.partial`` of
    :func:`~robust_sabn.eval.evaluate` with images, eps and attack) on the mixture of each trade-off ``t``."""
    return [FrontPoint(t, evaluate_one(mix_routes(model, mixture_weights(model, t, clean, adv)))) for t in tradeoffs]


def dominating(points: Sequence[FrontPoint], tolerance: float = 0.01) -> list[FrontPoint]:
    """Mixtures that beat the adv route (t = 1) on clean accuracy while losing at most ``tolerance`` (a fraction)
    of its robust accuracy."""
    adv = next((p for p in points if p.t == 1), None)
    if adv is None:
        return []
    return [p for p in points if p.t < 1 and p.report.clean_acc > adv.report.clean_acc
            and p.report.robust_acc >= adv.report.robust_acc - tolerance]


def plot_front(points: Sequence[FrontPoint], path: str | os.PathLike, oracle: EvaluationReport | None = None,
               title: str = "") -> Path:
    """Clean against robust accuracy (%) of every mixture, labelled by t; the clean route (t = 0), the adv route
    (t = 1) and oracle routing (clean route's clean accuracy, adv route's robust accuracy) marked. Atomic PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    fig = Figure(figsize=(5.5, 4), dpi=120)
    ax = fig.add_subplot()
    xs = [100 * p.report.robust_acc for p in points]
    ys = [100 * p.report.clean_acc for p in points]
    ax.plot(xs, ys, marker="o", color="tab:blue", label="mixtures (1-t) clean + t adv")
    for p, x, y in zip(points, xs, ys):
        ax.annotate(f"{p.t:g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    for t, marker, label in ((0, "s", "clean route"), (1, "D", "adv route")):
        end = next((p for p in points if p.t == t), None)
        if end is not None:
            ax.scatter([100 * end.report.robust_acc], [100 * end.report.clean_acc], marker=marker, s=60,
                       zorder=3, label=label)
    if oracle is not None and ORACLE_ROUTING in oracle.protocols:
        point = oracle.protocols[ORACLE_ROUTING]
        ax.scatter([100 * point.robust_acc], [100 * point.clean_acc], marker="*", s=120, color="tab:red", zorder=3,
                   label="oracle routing (not deployable)")
    first = points[0].report
    ax.set_xlabel(f"robust accuracy (%), {first.attack_description.split(',')[0]}, {first.norm} {first.eps_str}")
    ax.set_ylabel("clean accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or f"{first.n} images, seed {first.seed}", fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))
