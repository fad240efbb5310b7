"""Evaluation reports: Markdown tables for people, JSON for programs, and the adversarial points that broke as
tensors, all written atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..constants import PROTOCOLS
from ..io import all_or_nothing, atomic_write_text, save_checkpoint
from ..tables import markdown_table, percent
from .evaluate import EvaluationReport
from .settings import EvalSettings

ADVERSARIALS = ".adversarials.pt"


def _pct(value: float | None, n: int) -> str:
    """A percentage with two decimals and its 95% interval."""
    return percent(value, n, decimals=2)


def to_markdown(report: EvaluationReport) -> str:
    """The protocols table, the per-attack table (AutoAttack), the per-class table (single route) and every
    warning, as Markdown; every accuracy with its 95% Wilson interval."""
    lines = [f"**{report.attack_description}**, {report.threat.norm} eps {report.threat.eps_str}, {report.n} images, "
             f"seed {report.seed}" + (f", {report.backend}" if report.backend else "")]
    trained = report.trained_threat
    if trained is not None and trained != report.threat:
        lines += ["", f"> The model was trained at {trained.label} and is evaluated at {report.threat.label}."]
    rows = [[f"{name} ({PROTOCOLS[name]})", p.clean_route or "-", p.adv_route or "-", _pct(p.clean_acc, p.n),
             _pct(p.robust_acc, p.n)] for name, p in report.protocols.items()]
    lines += ["", markdown_table(["protocol", "clean route", "attacked route", "clean acc (%, 95% CI)",
                                  "robust acc (%, 95% CI)"], rows)]
    if report.per_attack:
        seconds = report.time["per_attack_s"]
        rows = [[attack, _pct(acc, report.n), f"{seconds[attack]:.1f}" if attack in seconds else "-"]
                for attack, acc in report.per_attack.items()]
        lines += ["", markdown_table(["after attack", "robust acc (%, 95% CI)", "time (s)"], rows)]
    if report.per_class:
        rows = [[c["class"], c["n"], _pct(c["clean_acc"], c["n"]), _pct(c["robust_acc"], c["n"])]
                for c in report.per_class]
        lines += ["", markdown_table(["class", "images", "clean acc (%, 95% CI)", "robust acc (%, 95% CI)"], rows)]
    processes = report.environment.get("processes", 1)
    resumed = report.time.get("resumed_batches", 0)
    compile_s = report.time.get("compile_s", 0.0)
    lines += ["", f"Total time {report.time['total_s']:.1f} s"
              + (f" (compile warm-up {compile_s:.1f} s)" if compile_s else "") + f" on {report.environment['device']}"
              + (f" ({report.environment['numerics']})" if "numerics" in report.environment else "")
              + (f" in {processes} processes" if processes > 1 else "")
              + (f" ({resumed} batches finished by an earlier run)" if resumed else "")
              + f"; batches of {report.batch_size}, {report.seeding}."]
    for message in report.warnings:
        lines += ["", f"> **Warning:** {message}"]
    return "\n".join(lines) + "\n"


def report_stem(folder: Path, name: str, settings: EvalSettings, label: str, radius: str | None = None) -> Path:
    """``<folder>/<name>-<attack>[-<version>]-<label>-<norm>-<eps>[-<numerics>]``: the path, without suffix, of a
    report of ``settings``; ``label`` names the route or mixtures, ``radius`` stands for the radius (e.g. "sweep")."""
    attack = settings.attack
    version = attack.options().get("version") if attack.name == "autoattack" else None
    eps = radius or settings.threat.eps_str.replace("/", "_")
    numerics = None if settings.numerics == "exact" else settings.numerics
    return folder / "-".join(p for p in (name, attack.name, version, label, settings.threat.norm, eps, numerics) if p)


def write_pair(path: str | os.PathLike, json_text: str, markdown: str) -> tuple[Path, Path]:
    """Write ``<path>.json`` and ``<path>.md`` (``path`` without suffix) atomically, both or neither (with the
    other files of an enclosing :func:`~robust_sabn.io.all_or_nothing` block); returns their paths."""
    path = Path(path)
    with all_or_nothing():
        return (atomic_write_text(path.with_name(path.name + ".json"), json_text),
                atomic_write_text(path.with_name(path.name + ".md"), markdown))


def write_report(report: EvaluationReport, path: str | os.PathLike) -> tuple[Path, ...]:
    """Write ``<path>.json``, ``<path>.md`` (``path`` without suffix) and, when the report holds adversarial points,
    ``<path>.adversarials.pt``: all or none of them; returns their paths."""
    with all_or_nothing():
        paths = write_pair(path, json.dumps(report.to_dict(), indent=2) + "\n", to_markdown(report))
        if report.adversarials is not None:
            paths += (write_adversarials(report, path),)
    return paths


def write_adversarials(report: EvaluationReport, path: str | os.PathLike) -> Path:
    """Write ``<path>.adversarials.pt``: a dict of tensors (``indices`` of the images that broke, their adversarial
    ``images``, true ``labels`` and the model's ``predictions``), loadable with ``torch.load(weights_only=True)``."""
    path = Path(path)
    return save_checkpoint(report.adversarials, path.with_name(path.name + ADVERSARIALS))
