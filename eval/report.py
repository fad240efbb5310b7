"""Evaluation reports: a Markdown table for people, JSON for programs, both written atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..constants import PROTOCOLS
from ..io import all_or_nothing, atomic_write_text
from ..tables import markdown_table
from .evaluate import EvaluationReport


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def to_markdown(report: EvaluationReport) -> str:
    """The protocols table, the per-attack table (AutoAttack) and every warning, as Markdown."""
    lines = [f"**{report.attack_description}**, {report.norm} eps {report.eps_str}, {report.n} images, "
             f"seed {report.seed}" + (f", {report.backend}" if report.backend else "")]
    rows = [[f"{name} ({PROTOCOLS[name]})", p.clean_route or "-", p.adv_route or "-", _pct(p.clean_acc),
             _pct(p.robust_acc)] for name, p in report.protocols.items()]
    lines += ["", markdown_table(["protocol", "clean route", "attacked route", "clean acc (%)", "robust acc (%)"],
                                 rows)]
    if report.per_attack:
        seconds = report.time["per_attack_s"]
        rows = [[attack, _pct(acc), f"{seconds[attack]:.1f}" if attack in seconds else "-"]
                for attack, acc in report.per_attack.items()]
        lines += ["", markdown_table(["after attack", "robust acc (%)", "time (s)"], rows)]
    lines += ["", f"Total time {report.time['total_s']:.1f} s on {report.environment['device']}; batches of "
              f"{report.batch_size}, {report.seeding}."]
    for message in report.warnings:
        lines += ["", f"> **Warning:** {message}"]
    return "\n".join(lines) + "\n"


def write_report(report: EvaluationReport, path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<path>.json`` and ``<path>.md`` (``path`` without suffix), both or neither; returns both paths."""
    path = Path(path)
    json_path, md_path = path.with_name(path.name + ".json"), path.with_name(path.name + ".md")
    with all_or_nothing():
        atomic_write_text(json_path, json.dumps(report.to_dict(), indent=2) + "\n")
        atomic_write_text(md_path, to_markdown(report))
    return json_path, md_path
