"""mkdocs hook: the flag table of docs/training.md, built from ``TrainConfig``'s fields and their help metadata,
and the table of the other commands' numeric flags and their ranges in docs/faults.md, built from their parsers.

``robust-sabn train --help`` reads the same metadata (``robust_sabn.cli.flags.flag_help``), and every command's
``--help`` the same ranges, so the tables and the commands cannot disagree. A page holds a marker below where its
table goes.
"""
from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any

from robust_sabn.cli import numeric_flags
from robust_sabn.cli.flags import flag_help
from robust_sabn.training.config import TrainConfig, flag_name

MARKER = "<!-- training-flags -->"
NUMBERS_MARKER = "<!-- numeric-flags -->"


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


def numeric_flag_table() -> str:
    """A Markdown table: one row per numeric flag of every command but ``train``, with its range and default."""
    rows = ["| command | flag | range | default |", "|---|---|---|---|"]
    for command, action in numeric_flags():
        shown = "unset" if action.default is None else f"`{action.default}`"
        rows.append(f"| `{command}` | `{action.option_strings[0]}` | {markdown_text(str(action.limits))} | {shown} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, flag_table())
    if NUMBERS_MARKER in markdown:
        markdown = markdown.replace(NUMBERS_MARKER, numeric_flag_table())
    return markdown
