"""The ranges of the numeric settings that several commands share (counts of images, batch sizes, attack steps,
epochs, ...): each flag and config field refuses a value outside its range with one line naming it, the range
and an example. The bounds are far beyond what a run needs by design; they stop typos such as ``1e20`` from
starting a run that never ends or allocates without bound. (The radii of each threat model live with the threat
model, :data:`robust_sabn.threat.EPS_RANGES`.)"""
from __future__ import annotations

import os

from .parsing import Range


def cpu_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0))


IMAGES = Range(1, 100_000_000, "1000", integer=True)
BATCH_SIZE = Range(1, 65_536, "128", integer=True)
ATTACK_STEPS = Range(1, 10_000, "10", integer=True)  # evaluation-grade attacks run thousands
EPOCHS = Range(1, 100_000, "200", integer=True)
OPTIMIZER_STEPS = Range(1, 10**9, "20000", integer=True)
FRACTION = Range(0.0, 1.0, "0.5", open_high=True)
WORKERS = Range(0, lambda: 4 * cpu_cores(), "2", integer=True, shown="4 x the CPU cores this process may use",
                why="each worker is a process holding a copy of the data: more only cost memory")
REPEATS = Range(1, 1_000, "3", integer=True)  # of a benchmark's timed rounds
WARMUP_ROUNDS = REPEATS.but(low=0, example="1")
IMAGE_SIZE = Range(1, 1_024, "32", integer=True)
