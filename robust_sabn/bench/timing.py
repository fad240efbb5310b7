"""Wall-clock timing for side-by-side benchmarks: variants run interleaved, medians compared."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping


def interleaved_medians(variants: Mapping[str, Callable[[], object]], repeats: int = 10, warmup: int = 2,
                        wait: Callable[[], None] = lambda: None, reported: bool = False) -> dict[str, float]:
    """Median seconds per call of each variant; one call of every variant per round, so that machine load
    drifting during the run affects all of them alike. ``wait`` finishes queued work (``torch.cuda.synchronize``
    for GPU variants) before a clock is read. With ``reported``, each call returns its own seconds (a subprocess
    that times its work without its start-up) and those are the samples."""
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            wait()
            start = time.perf_counter()
            seconds = fn()
            wait()
            samples[name].append(seconds if reported else time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}
