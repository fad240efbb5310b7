"""The fixed batches of one evaluation shared among processes, skipping those a state folder holds finished.

The first process reads the state folder and says which batches are left; the processes take every
``world_size``-th of them, write each one they finish to their state folder, and all receive every result.
Each batch's result depends on nothing but the model, its images and its seed, so the results are the same
whatever the number of processes and however often the run was interrupted. Without a shared file system each
machine keeps its own state folder: batches only another machine holds are computed again.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from ..batching import batch_slices, shard
from ..errors import UserError
from .batches import BatchResult, robust_points
from .settings import EvalSettings
from .state import EvalState


def shared_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: EvalSettings, *,
                  state: EvalState | None = None) -> tuple[list[BatchResult], int]:
    """Every batch's result (in any order) among ``settings.processes`` and the number of them read from
    ``state``. ``settings`` are decided (:meth:`EvalSettings.on`)."""
    processes = settings.processes
    sizes = [part.stop - part.start for part in batch_slices(len(x), settings.batch_size)]
    finished: dict[int, BatchResult] = {}
    error = None
    try:
        if state is not None:
            state.open()
            if processes.is_main:
                finished = state.finished(sizes)
    except UserError as err:
        error = err
    errors = [e for e in processes.gather(error) if e is not None]
    if errors:  # every process stops with the same error, none waits for the others forever
        raise errors[0]
    left = processes.broadcast([i for i in range(len(sizes)) if i not in finished])
    mine = shard(left, processes.rank, processes.world_size)
    quiet = dataclasses.replace(settings, progress=settings.progress and processes.is_main)
    computed = robust_points(model, x, y, quiet, indices=mine, on_batch=state.save if state is not None else None)
    parts = processes.gather(list(finished.values()) + computed)
    return [result for part in parts for result in part], len(finished)
