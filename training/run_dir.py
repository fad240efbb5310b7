r"""Run folders: where a run writes, how it is resumed.

A run folder holds ``config.yaml`` (the resolved config, headed by the versions it was made with),
``metrics.jsonl``, ``curves.png``, ``last.pt`` (every epoch, and every ``--save-every`` steps), ``best.pt``
(best robust validation accuracy), and the logs of ``--log``'s trackers (:mod:`robust_sabn.training.trackers`).
Both checkpoints are :class:`robust_sabn.checkpoint.TrainingCheckpoint`\ s.

One process at a time trains in a run folder: while it runs, it holds a lock on ``<run>/.lock``, a file naming it.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
import warnings
from pathlib import Path
from shlex import quote
from typing import Any

from ..checkpoint import TrainingCheckpoint
from ..errors import CheckpointError, ConfigError
from ..io import remove_temp_files
from .config import TrainConfig
from .trackers import CSV_FILE

LAST, BEST, CONFIG, METRICS, CURVES = "last.pt", "best.pt", "config.yaml", "metrics.jsonl", "curves.png"
RUN_FILES = (LAST, BEST, CONFIG, METRICS, CURVES, CSV_FILE)
RESUMABLE = (LAST, BEST)  # the checkpoints a resumed run continues from, in order (see resume_file)
LOCK = ".lock"

# Settings a resumed run may change: they decide how far and where it runs, not what it computes.
RESUME_OVERRIDES = ("max_steps", "device", "save_every", "log_every", "log", "num_workers", "progress", "data_dir",
                    "compile")


def default_run_dir(config: TrainConfig) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return str(Path("runs") / f"{config.dataset}-{config.arch}-{config.norm}-{config.objective}-{stamp}")


class RunDirLock:
    """This process's exclusive use of a run folder: an advisory lock (``flock``) on ``<run>/.lock``, a file naming
    the holder, removed on release. The system drops the lock when the process ends, however it ends."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK
        self.fd: int | None = None
        while self.fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "a process that just started"
                os.close(fd)
                if err.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):  # a file system without locks
                    warnings.warn(f"cannot lock {run_dir} ({err.strerror}); make sure no other run uses it",
                                  stacklevel=2)
                    return
                raise ConfigError(f"{run_dir} is in use by another training run ({holder}); wait for it to end, "
                                  "or choose another --out-dir") from None
            if _is_file_at(fd, self.path):
                self.fd = fd
            else:  # its holder removed the file while we locked it: lock the one at the path now
                os.close(fd)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)
            self.fd = None


def _is_file_at(fd: int, path: Path) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def claim_run_dir(run_dir: Path, resume: bool) -> RunDirLock:
    """Create ``run_dir`` if needed and lock it for this process. A new run refuses a folder holding files of an
    earlier one; a new or resumed run deletes the temporary files that interrupted saves left there."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunDirLock(run_dir)
    except OSError as err:
        raise ConfigError(f"cannot write to the output folder {run_dir} ({err.strerror or err}); "
                          "choose a writable --out-dir") from None
    try:
        found = [name for name in RUN_FILES if (run_dir / name).exists()]
        if not resume and set(found) & set(RESUMABLE):
            raise ConfigError(f"{run_dir} already holds a run; continue it with --resume {quote(str(run_dir))} "
                              "or choose another --out-dir")
        if not resume and found:
            raise ConfigError(f"{run_dir} holds files of an earlier run ({', '.join(found)}) but no checkpoint to "
                              "resume from; choose another --out-dir, or delete them to start again there: rm "
                              + " ".join(quote(str(run_dir / name)) for name in found))
        remove_temp_files(run_dir, RUN_FILES)
    except BaseException:
        lock.release()
        raise
    return lock


def resume_file(run_dir: Path) -> Path:
    """The checkpoint a resumed run continues from: ``last.pt``; else ``best.pt``, which a run leaves alone when
    the disk filled while it wrote its first ``last.pt`` (both hold the same state then)."""
    if not run_dir.is_dir():
        raise CheckpointError(f"cannot resume: {run_dir} is not a folder (pass the run folder given as --out-dir)")
    for name in RESUMABLE:
        if (run_dir / name).is_file():
            return run_dir / name
    raise CheckpointError(f"cannot resume: {run_dir} holds no {LAST} (the run stopped before its first "
                          "checkpoint); start it again without --resume after deleting the folder (rm -r "
                          f"{quote(str(run_dir))}), or in another --out-dir")


def load_last(run_dir: str | Path) -> TrainingCheckpoint:
    """The checkpoint of a run folder that a resumed run continues from (:func:`resume_file`); a clear error when
    there is nothing to resume."""
    path = resume_file(Path(run_dir))
    try:
        return TrainingCheckpoint.load(path)
    except CheckpointError as err:
        raise CheckpointError(f"cannot resume: {err}") from None


def resume_config(run_dir: str | Path, **overrides: Any) -> TrainConfig:
    """The config of the run in ``run_dir`` with ``overrides``: the settings of :data:`RESUME_OVERRIDES` may
    change; any other must keep the run's value (so the original command plus ``--resume`` works)."""
    saved, _ = TrainConfig.upgrade(load_last(run_dir).config)
    config = TrainConfig.from_dict({**saved, **overrides, "out_dir": str(run_dir)},
                                   source=str(resume_file(Path(run_dir))))
    changed = sorted(k for k, v in config.to_dict().items()
                     if k not in (*RESUME_OVERRIDES, "out_dir") and v != saved.get(k))
    if changed:
        raise ConfigError(f"--resume continues a run with its own config; {', '.join(changed)} cannot change "
                          f"(only {', '.join(RESUME_OVERRIDES)} can); start a new run to change them")
    return config
