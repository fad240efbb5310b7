"""Markdown tables for reports and benchmarks, and accuracies as they print in them: with their 95% interval."""
from __future__ import annotations

from collections.abc import Sequence

from .stats import accuracy_interval


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table; floats print with 3 significant decimals."""
    def cell(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def percent(accuracy: float | None, n: int, decimals: int = 1) -> str:
    """An accuracy measured on ``n`` images in percent with its 95% Wilson interval, e.g. ``65.0 (61.9-68.0)``;
    empty for None."""
    if accuracy is None:
        return ""
    low, high = accuracy_interval(accuracy, n)
    return f"{100 * accuracy:.{decimals}f} ({100 * low:.{decimals}f}-{100 * high:.{decimals}f})"
