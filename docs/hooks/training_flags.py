"""mkdocs hook: the flag table of docs/training.md, built from ``TrainConfig``'s fields and their help metadata.

``robust-sabn train --help`` reads the same metadata (``robust_sabn.cli.flags.flag_help``), so the table and
the command cannot disagree. The page holds the marker below where the table goes.
"""
from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any

from robust_sabn.cli.flags import flag_help, flag_name
from robust_sabn.training.config import TrainConfig

MARKER = "<!-- training-flags -->"


def format_default(value: Any) -> str:
    """A default as one would type it: ``8/255`` rather than 0.03137..., lists as flag arguments."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return " ".join(map(str, value)) or "none"
    if isinstance(value, float) and len(repr(value)) > 8:
        return str(Fraction(value).limit_denominator(1000))
    return str(value)


def markdown_text(text: str) -> str:
    """Plain text made safe for a Markdown table cell (no HTML tags, emphasis or column breaks)."""
    return text.replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*").replace("|", "\\|")


def flag_table() -> str:
    """A Markdown table: one row per ``TrainConfig`` field with its flag, default and help."""
    helps = flag_help()
    rows = ["| flag | default | meaning |", "|---|---|---|"]
    for f in dataclasses.fields(TrainConfig):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        flag = f"`{flag_name(f.name)}`"
        if str(f.type).startswith("bool"):
            flag += f", `--no-{flag_name(f.name)[2:]}`"
        shown = "unset" if default is None else f"`{format_default(default)}`"
        rows.append(f"| {flag} | {shown} | {markdown_text(helps[f.name])} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    return markdown.replace(MARKER, flag_table()) if MARKER in markdown else markdown
