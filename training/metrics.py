"""Running averages of training statistics and the run's ``metrics.jsonl``."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import atomic_write_text


class Meter:
    """Weighted running averages; its state is a plain dict of floats, saved in checkpoints."""

    def __init__(self, state: dict[str, float] | None = None) -> None:
        self.totals: dict[str, float] = dict(state or {})

    def add(self, key: str, total: float, count: float = 1.0) -> None:
        """Add ``total`` spread over ``count`` samples (e.g. correct predictions out of a batch)."""
        self.totals[key] = self.totals.get(key, 0.0) + float(total)
        self.totals[f"{key}#n"] = self.totals.get(f"{key}#n", 0.0) + float(count)

    def averages(self) -> dict[str, float]:
        return {key: value / self.totals[f"{key}#n"] for key, value in self.totals.items()
                if not key.endswith("#n") and self.totals[f"{key}#n"] > 0}

    def state(self) -> dict[str, float]:
        return dict(self.totals)


def log_interval(steps_per_epoch: int, max_steps: int | None = None) -> int:
    """The default ``--log-every``: a tenth of an epoch, or of the whole run when ``--max-steps`` makes it shorter,
    at least 1 and at most 50 steps (a 30-step run logs every 3 steps)."""
    return max(1, min(50, min(steps_per_epoch, max_steps or steps_per_epoch) // 10))


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line, the whole file rewritten atomically on every append.

    Resuming from a checkpoint at step ``s`` keeps only the lines up to ``s``, so a run killed after its last
    checkpoint does not log the replayed steps twice; the file is rewritten at once when that drops a line (or a
    torn last line), also when the resumed run has nothing left to do.
    """

    def __init__(self, path: str | Path, keep_until_step: int | None = None) -> None:
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        if keep_until_step is not None and self.path.is_file():
            self.records = [r for r in read_records(self.path) if r.get("step", 0) <= keep_until_step]
            if self._text() != self.path.read_text(errors="replace"):
                atomic_write_text(self.path, self._text())

    def append(self, record: dict[str, Any]) -> None:
        self.records.append({k: _plain(v) for k, v in record.items()})
        atomic_write_text(self.path, self._text())

    def _text(self) -> str:
        return "".join(json.dumps(r) + "\n" for r in self.records)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl``. A torn last line, as a crash in the middle of writing it leaves, is
    dropped; any other line that is not a record is an error naming it."""
    lines = [(number, line) for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
             if line.strip()]
    records = []
    for number, line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict) or not isinstance(record.get("step", 0), (int, float)):
            if number == lines[-1][0]:
                break
            raise UserError(f"{path} line {number} is not a metrics record; repair or delete that line, then resume")
        records.append(record)
    return records


def _plain(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
