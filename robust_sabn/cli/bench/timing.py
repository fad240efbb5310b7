"""Wall-clock timing for side-by-side benchmarks: variants run interleaved, medians compared."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tqdm.auto import tqdm


@dataclass(frozen=True)
class Timing:
    """How a benchmark times its variants: ``warmup`` rounds, then ``repeats`` rounds, each calling every variant once,
    so that load drifting on the machine during the run affects all of them alike; ``progress`` shows a bar of the
    calls (on stderr, the table goes to stdout)."""

    repeats: int = 10
    warmup: int = 2
    progress: bool = False

    def medians(self, variants: Mapping[str, Callable[[], object]], wait: Callable[[], None] = lambda: None,
                reported: bool = False) -> dict[str, float]:
        """Median seconds per call of each variant. ``wait`` finishes queued work (``torch.cuda.synchronize`` for GPU
        variants) before a clock is read. With ``reported``, each call returns its own seconds (a subprocess that
        times its work without its start-up) and those are the samples."""
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
        return {name: statistics.median(times) for name, times in samples.items()}
