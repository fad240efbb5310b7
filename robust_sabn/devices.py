"""The one device rule: which device a name means, and where a model lives. Every command, config and evaluation
takes the same names: ``auto``, ``cpu``, ``cuda`` and ``cuda:N``. And whether the CPU threads fit the cores. A leaf
module (torch only)."""
from __future__ import annotations

import os
import re
import sys

import torch
from torch import nn

from .errors import ConfigError

DEVICE_NAMES = "auto, cpu, cuda or cuda:N"
_NAME = re.compile(r"auto|cpu|cuda(:\d{1,4})?")


def check_device_name(name: str) -> str:
    """``name`` when it is a device name of :func:`resolve_device` (whether that device exists is checked when it is
    resolved, on the machine that runs)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(f"unknown device {name!r}; use {DEVICE_NAMES}")
    return name


def visible_devices() -> str:
    """The devices this process can use, in words: "cpu, cuda:0 (NVIDIA H100)"."""
    gpus = [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
    return ", ".join(["cpu", *gpus])


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: this process's GPU when CUDA is available, else the CPU; ``"cpu"``; ``"cuda"``: this process's
    GPU (``local_rank`` modulo the visible GPUs); ``"cuda:N"``: GPU N. A device that is not there is a one-line
    error naming those that are."""
    check_device_name(name)
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was asked for but no CUDA device is available (visible: "
                          f"{visible_devices()}); use --device cpu")
    device = torch.device("cuda" if name == "auto" else name)
    count = torch.cuda.device_count()
    if device.index is None:
        return torch.device("cuda", local_rank % count)
    if device.index >= count:
        raise ConfigError(f"device {name!r} does not exist (visible: {visible_devices()}); choose one of those")
    return device


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters (or buffers) live; the CPU for a model without any."""
    tensor = next(iter(list(model.parameters()) + list(model.buffers())), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def oversubscription(threads: int, processes: int, cores: int, load: float | None) -> str | None:
    """Why ``processes`` processes of ``threads`` CPU threads each would oversubscribe ``cores`` cores already
    running ``load`` (the 1-minute load average: other work; None: not known), or None. PyTorch's threads spin
    while they wait for each other, so a thread without a core of its own slows every step: measured, one PGD
    evaluation ran 16 times slower than with a single thread on a loaded machine."""
    wanted = threads * processes
    if wanted > cores:
        return f"{processes} process(es) x {threads} threads on {cores} cores"
    if load is not None and load >= 1 and wanted + load > cores + 0.5:
        return f"{threads} threads per process on {cores} cores already running a load of {load:.1f}"
    return None


def warn_if_oversubscribed() -> None:
    """One line on stderr, with the fix, when this process's CPU threads would oversubscribe the cores (see
    :func:`oversubscription`). The machine's load counts only for a person at a terminal: in a batch job or a test
    run the load average is mostly the job itself."""
    try:
        cores = len(os.sched_getaffinity(0))
        load = os.getloadavg()[0] if sys.stderr.isatty() else None
    except (AttributeError, OSError):
        return
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    reason = oversubscription(torch.get_num_threads(), processes, cores, load)
    if reason is not None:
        fair = max(1, int((cores - max(0.0, (load or 0.0) - 0.5)) // processes))
        print(f"robust-sabn: warning: CPU threads oversubscribed ({reason}), which can slow attacks many times over; "
              f"set OMP_NUM_THREADS={fair} (or fewer processes)", file=sys.stderr)
