"""The clean/robust trade-off of a dual-route model: one deployable model per mixture of its routes
(:func:`robust_sabn.mix_routes`), each evaluated under the single-route protocol, drawn as a Pareto plot with the
two routes and the paper's oracle routing marked."""
from __future__ import annotations

import copy
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..constants import DEFAULT_ROUTES
from ..distributed import Processes
from ..io import all_or_nothing, atomic_write, atomic_write_text
from ..mixing import describe_mixture, mix_routes, mixture_weights
from ..stats import accuracy_interval, error_bars
from ..tables import markdown_table, percent
from .evaluate import EvaluationReport, evaluate
from .recalibration import Recalibration
from .settings import EvalSettings
from .state import part


@dataclass
class FrontPoint:
    """One mixture ``(1 - t)`` clean route + ``t`` adv route and its single-route evaluation."""

    t: float
    report: EvaluationReport


def mixture_front(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tradeoffs: Sequence[float],
                  settings: EvalSettings, *, routes: tuple[str, str] = DEFAULT_ROUTES,
                  state_dir: str | os.PathLike | None = None,
                  recalibration: Recalibration | None = None) -> list[FrontPoint]:
    """:func:`~robust_sabn.eval.evaluate` (single route: one plain model each) under ``settings`` of the mixture
    ``{clean: 1 - t, adv: t}`` of the two ``routes`` (clean, adv) for every trade-off ``t``; each mixture keeps its
    finished batches in its own folder ``t-<t>`` of ``state_dir``, so an interrupted front resumes where it
    stopped. With ``recalibration`` every mixture strictly between the routes has its BN statistics re-estimated
    first; the routes themselves (t = 0, 1) stay as trained.
    """
    clean, adv = routes
    settings = settings.on(model)
    points = []
    for t in tradeoffs:
        mixed = mix_routes(model, mixture_weights(model, t, clean, adv))
        if recalibration is not None and 0 < t < 1:
            mixed = recalibrated(mixed, t, recalibration, settings.device, settings.processes)
        report = evaluate(mixed, x, y, settings, route=None, clean_route=None, state_dir=part(state_dir, f"t-{t:g}"))
        points.append(FrontPoint(t, report))
    return points


def recalibrated(model: nn.Module, t: float, recalibration: Recalibration, device: torch.device | str,
                 processes: Processes | None = None) -> nn.Module:
    """``recalibration(model, t)``, computed by the first process and sent to the others (processes with other
    thread counts could round differently, and every shard must attack the same model)."""
    if processes is None or not processes.distributed:
        return recalibration(model, t, device)
    state = processes.broadcast({k: v.cpu() for k, v in recalibration(model, t, device).state_dict().items()}
                                if processes.is_main else None)
    model = copy.deepcopy(model).to(device)
    model.load_state_dict(state)
    return model.eval()


def oracle_point(points: Sequence[FrontPoint]) -> tuple[float, float] | None:
    """Oracle routing's (clean, robust) accuracy: the clean route's (t = 0) clean accuracy and the adv route's
    (t = 1) robust accuracy; None unless both ends are on the front."""
    ends = {p.t: p.report for p in points if p.t in (0, 1)}
    return (ends[0].clean_acc, ends[1].robust_acc) if len(ends) == 2 else None


def dominating(points: Sequence[FrontPoint], tolerance: float = 0.01) -> list[FrontPoint]:
    """Mixtures that beat the adv route (t = 1) on clean accuracy while losing at most ``tolerance`` (a fraction)
    of its robust accuracy."""
    adv = next((p for p in points if p.t == 1), None)
    if adv is None:
        return []
    return [p for p in points if p.t < 1 and p.report.clean_acc > adv.report.clean_acc
            and p.report.robust_acc >= adv.report.robust_acc - tolerance]


def plot_front(points: Sequence[FrontPoint], path: str | os.PathLike, title: str = "") -> Path:
    """Clean against robust accuracy (%) of every mixture, labelled by t, with error bars of both accuracies' 95%
    Wilson intervals; the clean route (t = 0), the adv route (t = 1) and oracle routing (clean route's clean
    accuracy, adv route's robust accuracy) marked. Atomic PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    fig = Figure(figsize=(5.5, 4), dpi=120)
    ax = fig.add_subplot()
    reports = [p.report for p in points]
    xs = [100 * r.robust_acc for r in reports]
    ys = [100 * r.clean_acc for r in reports]
    ax.errorbar(xs, ys, xerr=error_bars([r.robust_acc for r in reports], [r.robust_acc_ci for r in reports]),
                yerr=error_bars([r.clean_acc for r in reports], [r.clean_acc_ci for r in reports]), marker="o",
                color="tab:blue", ecolor="tab:blue", elinewidth=0.8, capsize=2,
                label="mixtures (1-t) clean + t adv, 95% CI")
    for p, x, y in zip(points, xs, ys):
        ax.annotate(f"{p.t:g}", (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    for t, marker, label in ((0, "s", "clean route"), (1, "D", "adv route")):
        end = next((p for p in points if p.t == t), None)
        if end is not None:
            ax.scatter([100 * end.report.robust_acc], [100 * end.report.clean_acc], marker=marker, s=60,
                       zorder=3, label=label)
    oracle = oracle_point(points)
    if oracle is not None:
        ax.scatter([100 * oracle[1]], [100 * oracle[0]], marker="*", s=120, color="tab:red", zorder=3,
                   label="oracle routing (not deployable)")
    first = points[0].report
    ax.set_xlabel(f"robust accuracy (%), {first.attack.upper()}, {first.threat.label}")
    ax.set_ylabel("clean accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(title or f"{first.n} images, seed {first.seed}", fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))


def front_table(points: Sequence[FrontPoint], clean: str, adv: str) -> str:
    """Markdown: one row per mixture (single route), then oracle routing, each accuracy with its 95% interval;
    mixtures that dominate the adv route (:func:`dominating`) are marked."""
    better = {p.t for p in dominating(points)}
    n = points[0].report.n
    rows = [[f"{p.t:g}", describe_mixture({clean: 1 - p.t, adv: p.t}), percent(p.report.clean_acc, n, 2),
             percent(p.report.robust_acc, n, 2), "yes" if p.t in better else ""] for p in points]
    oracle = oracle_point(points)
    if oracle is not None:
        rows.append(["-", f"oracle routing ({clean} for clean, {adv} for attacked; not deployable)",
                     percent(oracle[0], n, 2), percent(oracle[1], n, 2), ""])
    first = points[0].report
    return markdown_table(["t", "model", "clean acc (%, 95% CI)", f"{first.attack_description} robust acc (%, 95% CI)",
                           f"dominates the {adv} route"], rows)


def write_front(points: Sequence[FrontPoint], stem: Path, clean: str, adv: str, title: str = "",
                recalibration: Recalibration | None = None) -> list[Path]:
    """``<stem>.json`` (every mixture's full report), ``.md`` (:func:`front_table`) and ``.png``
    (:func:`plot_front`), all or nothing; ``recalibration`` is the one :func:`mixture_front` applied."""
    oracle = oracle_point(points)
    table = front_table(points, clean, adv)
    if recalibration is not None:
        table += f"\n\nMixtures strictly between the routes (0 < t < 1): {recalibration.describe()}."
        title = f"{title}; mixtures recalibrated" if title else "mixtures recalibrated"
    data = {"clean_route": clean, "adv_route": adv,
            "recalibration": None if recalibration is None else recalibration.to_dict(),
            "oracle_routing": None if oracle is None else {
                "clean_acc": oracle[0], "robust_acc": oracle[1], "n": points[0].report.n,
                "clean_acc_ci": list(accuracy_interval(oracle[0], points[0].report.n)),
                "robust_acc_ci": list(accuracy_interval(oracle[1], points[0].report.n))},
            "dominating_adv_route": [p.t for p in dominating(points)],
            "mixtures": [{"t": p.t, "weights": {clean: 1 - p.t, adv: p.t}, "report": p.report.to_dict()}
                         for p in points]}
    paths = [stem.with_name(stem.name + suffix) for suffix in (".json", ".md", ".png")]
    with all_or_nothing():
        atomic_write_text(paths[0], json.dumps(data, indent=2) + "\n")
        atomic_write_text(paths[1], table + "\n")
        plot_front(points, paths[2], title)
    return paths
