"""The fixed batches of one evaluation shared among processes, skipping those a state folder holds finished.

The first process reads the state folder and says which batches are left; the processes take every
``world_size``-th of them, write each one they finish to their state folder, and all receive every result.
Each batch's result depends on nothing but the model, its images and its seed, so the results are the same
whatever the number of processes and however often the run was interrupted. Without a shared file system each
machine keeps its own state folder: batches only another machine holds are computed again.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..distributed import Processes
from ..errors import UserError
from .attacks import EvalAttack
from .batches import BatchResult, num_batches, robust_points
from .state import EvalState


def shared_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attack: EvalAttack | None, *,
                  state: EvalState | None, processes: Processes, batch_size: int, progress: bool,
                  **common: Any) -> tuple[list[BatchResult], int]:
    """Every batch's result (in any order) and the number of them read from ``state``; ``common`` goes to
    :func:`~robust_sabn.eval.batches.robust_points` (eps, norm, seed, device, keep_adversarials)."""
    total = num_batches(len(x), batch_size)
    finished: dict[int, BatchResult] = {}
    error = None
    try:
        if state is not None:
            state.open()
            if processes.is_main:
                finished = state.finished([min(batch_size, len(x) - i * batch_size) for i in range(total)])
    except UserError as err:
        error = err
    errors = [e for e in processes.gather(error) if e is not None]
    if errors:  # every process stops with the same error, none waits for the others forever
        raise errors[0]
    left = processes.broadcast([i for i in range(total) if i not in finished])
    mine = left[processes.rank::processes.world_size]
    computed = robust_points(model, x, y, attack, batch_size=batch_size, indices=mine,
                             progress=progress and processes.is_main,
                             on_batch=state.save if state is not None else None, **common)
    parts = processes.gather(list(finished.values()) + computed)
    return [result for part in parts for result in part], len(finished)
