"""Evaluation reports: a Markdown table for people, JSON for programs, both written atomically."""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..io import all_or_nothing, atomic_write_text
from .tables import markdown_table

PROTOCOL_NOTES = {
    "single route": "one deterministic model; what RobustBench accepts",
    "oracle routing": "clean inputs on the clean route, attacks on the adv route; as the SaBN paper reports",
}


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f}"


def to_markdown(report: Mapping[str, Any]) -> str:
    """The protocols table, the per-attack table (AutoAttack) and every warning, as Markdown."""
    n, eps = report["n"], report["eps_str"]
    lines = [f"**{report['attack_description']}**, {report['norm']} eps {eps}, {n} images, seed {report['seed']}"
             + (f", {report['backend']}" if report.get("backend") else "")]
    rows = [[f"{name} ({PROTOCOL_NOTES[name]})", p["clean_route"] or "-", p["adv_route"] or "-",
             _pct(p["clean_acc"]), _pct(p["robust_acc"])] for name, p in report["protocols"].items()]
    lines += ["", markdown_table(["protocol", "clean route", "attacked route", "clean acc (%)", "robust acc (%)"],
                                 rows)]
    if report.get("per_attack"):
        seconds = report["time"]["per_attack_s"]
        rows = [[attack, _pct(acc), f"{seconds[attack]:.1f}" if attack in seconds else "-"]
                for attack, acc in report["per_attack"].items()]
        lines += ["", markdown_table(["after attack", "robust acc (%)", "time (s)"], rows)]
    lines += ["", f"Total time {report['time']['total_s']:.1f} s on {report['environment']['device']}."]
    for message in report.get("warnings", []):
        lines += ["", f"> **Warning:** {message}"]
    return "\n".join(lines) + "\n"


def write_report(report: Mapping[str, Any], path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``<path>.json`` and ``<path>.md`` (``path`` without suffix), both or neither; returns both paths."""
    path = Path(path)
    json_path, md_path = path.with_name(path.name + ".json"), path.with_name(path.name + ".md")
    with all_or_nothing():
        atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
        atomic_write_text(md_path, to_markdown(report))
    return json_path, md_path
