"""Wall-clock timing for side-by-side benchmarks: variants run interleaved, one call of each per round, and compared
by the ratios of their times within each round (:class:`Times`), so that a change of the machine's speed between
rounds cancels."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ...limits import cpu_cores
from ...provenance import cpu_name

SPREAD_COLUMN = "ratio's quartiles over rounds"


def machine() -> str:
    """Where a table was timed, for its header: the CPU, its cores and the threads used, and torch's version."""
    return f"{cpu_name()}, {cpu_cores()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}"


@dataclass(frozen=True)
class Times:
    """Seconds per call of each variant, one sample per timed round; the variants of a round ran back to back."""

    samples: dict[str, list[float]]

    def median(self, name: str) -> float:
        """The median seconds per call of ``name``."""
        return statistics.median(self.samples[name])

    def round_ratios(self, numerator: str, denominator: str, scale: float = 1.0) -> list[float]:
        """``numerator / (scale * denominator)`` within each round."""
        return [a / (scale * b) for a, b in zip(self.samples[numerator], self.samples[denominator])]

    def ratio(self, numerator: str, denominator: str, scale: float = 1.0) -> float:
        """The median of :meth:`round_ratios`: a change of the machine's speed between rounds cancels."""
        return statistics.median(self.round_ratios(numerator, denominator, scale))

    def quartiles(self, numerator: str, denominator: str, scale: float = 1.0) -> tuple[float, float]:
        """The first and third quartiles of :meth:`round_ratios` (the one ratio twice, for one round)."""
        ratios = self.round_ratios(numerator, denominator, scale)
        if len(ratios) == 1:
            return ratios[0], ratios[0]
        low, _, high = statistics.quantiles(ratios, n=4, method="inclusive")
        return low, high

    def spread(self, numerator: str, denominator: str, scale: float = 1.0) -> str:
        """:meth:`quartiles` as a table cell, ``"low-high"``."""
        low, high = self.quartiles(numerator, denominator, scale)
        return f"{low:.3f}-{high:.3f}"


@dataclass(frozen=True)
class Timing:
    """How a benchmark times its variants: ``warmup`` rounds, then ``repeats`` rounds, each calling every variant once,
    so that load drifting on the machine during the run affects all of them alike; ``progress`` shows a bar of the
    calls (on stderr, the table goes to stdout)."""

    repeats: int = 10
    warmup: int = 2
    progress: bool = False

    @property
    def timed_rounds(self) -> str:
        """``"3 rounds"``, ``"1 round"``: how many rounds were timed, for a table's header."""
        return f"{self.repeats} round{'s' * (self.repeats != 1)}"

    def rounds(self, variants: Mapping[str, Callable[[], object]], wait: Callable[[], None] = lambda: None,
               reported: bool = False) -> Times:
        """Seconds per call of each variant in each timed round. ``wait`` finishes queued work
        (``torch.cuda.synchronize`` for GPU variants) before a clock is read. With ``reported``, each call returns its
        own seconds (a subprocess that times its work without its start-up) and those are the samples."""
        samples: dict[str, list[float]] = {name: [] for name in variants}
        rounds = ["warm-up"] * self.warmup + ["timed"] * self.repeats
        with tqdm(total=len(rounds) * len(variants), desc="benchmark", unit="call", leave=False,
                  disable=not self.progress) as bar:
            for kind in rounds:
                for name, fn in variants.items():
                    bar.set_postfix_str(f"{kind}: {name}", refresh=False)
                    wait()
                    start = time.perf_counter()
                    seconds = fn()
                    wait()
                    if kind == "timed":
                        samples[name].append(seconds if reported else time.perf_counter() - start)
                    bar.update(1)
        return Times(samples)
