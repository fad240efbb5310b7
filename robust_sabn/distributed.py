"""Processes: one, or several launched by ``torchrun`` (gloo on CPUs, NCCL on GPUs), for training (DDP) and for
sharded evaluation."""
from __future__ import annotations

import gc
import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .devices import resolve_device

# DDP's keyword for "no buffer sync at every forward" (the training loop averages BN statistics itself). Newer torch
# names it forward_sync_buffers and warns about the old broadcast_buffers; the new one still syncs once at
# construction, which changes nothing here: every process starts from the same seed or checkpoint.
NO_FORWARD_BUFFER_SYNC = ({"forward_sync_buffers": False}
                          if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                          else {"broadcast_buffers": False})


@dataclass
class Processes:
    """This process's place among the training processes (``rank 0 of 1`` without torchrun)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def broadcast(self, obj: Any) -> Any:
        """``obj`` as rank 0 has it."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        if not self.distributed:
            return [obj]
        boxes: list[Any] = [None] * self.world_size
        dist.all_gather_object(boxes, obj)
        return boxes

    def average_buffers(self, model: torch.nn.Module) -> None:
        """Average floating-point buffers (BN running statistics) over processes, so that every process holds the
        same model: each one's last forward updated its statistics from its own shard."""
        if not self.distributed:
            return
        for buffer in model.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer)
                buffer.div_(self.world_size)

    def close(self, finished: bool = True) -> None:
        """Leave the process group, first freeing the garbage that still holds it. Whatever wraps a model in DDP
        must have let go of the wrapper by now (``Trainer.release``): a gloo group that is only released during
        interpreter shutdown can abort the process at exit.

        ``finished`` (the work ended without an error on this process): wait for every process first. Otherwise the
        first one to leave closes its gloo connections while a peer may still read from them, and gloo can abort that
        peer (``Connection closed by peer``, SIGABRT). After an error nobody waits: the peers may never arrive."""
        if self.distributed and dist.is_initialized():
            if finished:
                dist.barrier()
            gc.collect()  # e.g. DDP objects pinned in reference cycles by frames of torch's lazy imports
            dist.destroy_process_group()

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        self.close(finished=error_type is None)


def start_processes(device: str) -> Processes:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1), else run alone."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device, local_rank)
    if world_size == 1:
        return Processes(0, 1, resolved)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), resolved)
