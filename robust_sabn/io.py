"""Checkpoint I/O: atomic writes, weights-only reads, and one clear error for every way a file can be wrong."""
from __future__ import annotations

import errno
import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from .errors import CheckpointError, ConfigError, DiskFullError

TEMP_SUFFIX = ".tmp"
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class _CountingFile:
    """The temporary file being written, counting the bytes it is given. Once the disk is full it only counts, so
    that the error can say how much space the whole file needs."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.size = 0
        self.full: OSError | None = None

    def write(self, data: bytes) -> int:
        size = memoryview(data).nbytes
        self.size += size
        if self.full is None:
            try:
                self.file.write(data)
            except OSError as err:
                if err.errno not in DISK_FULL:
                    raise
                self.full = err
        return size

    def flush(self) -> None:
        if self.full is None:
            self.file.flush()

    def sync(self) -> None:
        """Everything written on disk, or the disk-full error a write met."""
        if self.full is not None:
            raise self.full
        self.file.flush()
        os.fsync(self.file.fileno())


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> Path:
    """Write a file through ``write(f)`` so that ``path`` holds either its old content or the complete new one.

    The data goes to a temporary file ``.<name>.<random>.tmp`` in the same folder, is flushed to disk, then renamed
    over ``path`` (inside :func:`all_or_nothing`, when the block ends); on any error the temporary file is removed.
    The file gets the usual permissions (0666 less the umask). A full disk is a :class:`DiskFullError` naming the
    file and the space it needs.
    """
    path = Path(path)
    staged = (_write_temp(path, write), path)
    group = _GROUP.get()
    if group is None:
        _rename([staged])
    else:
        group.append(staged)
    return path


_GROUP: ContextVar[list[tuple[Path, Path]] | None] = ContextVar("robust_sabn_atomic_group", default=None)


@contextmanager
def all_or_nothing() -> Iterator[None]:
    """Make the atomic writes inside the block one change: each file is written to its temporary file as usual,
    and only when the block ends without an error are they all renamed into place; else they are all removed.
    Reads inside the block see the old files."""
    if _GROUP.get() is not None:  # nested: part of the enclosing change
        yield
        return
    staged: list[tuple[Path, Path]] = []
    token = _GROUP.set(staged)
    try:
        yield
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _GROUP.reset(token)
    _rename(staged)


def staged(path: str | os.PathLike) -> Path:
    """Where ``path``'s newest content is: the temporary file an enclosing :func:`all_or_nothing` block wrote it to
    and has not renamed yet, else ``path`` itself."""
    path = Path(path)
    return next((tmp for tmp, target in reversed(_GROUP.get() or []) if target == path), path)


def _write_temp(path: Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Write ``path``'s temporary file to disk; remove it on any error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    file = _CountingFile(os.fdopen(fd, "wb"))
    try:
        with file.file:
            write(file)
            file.sync()
        os.chmod(tmp, 0o666 & ~_umask())
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            raise DiskFullError(path, file.size, shutil.disk_usage(path.parent).free) from None
        raise
    return Path(tmp)


def _rename(staged: list[tuple[Path, Path]]) -> None:
    """Rename temporary files over their targets, in order; those an error leaves behind are removed."""
    try:
        for tmp, path in staged:
            os.replace(tmp, path)
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    for folder in dict.fromkeys(path.parent for _, path in staged):
        _fsync_dir(folder)


def check_writable(path: str | os.PathLike) -> Path:
    """Refuse, before any work, a file that could not be written: its path is a folder, runs through a file, or
    ends in a folder (or the nearest existing one) that is not writable."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"cannot write {path}: it is a folder; give a file path")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"cannot write {path}: {folder} is a file, not a folder; choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {path}: the folder {folder} is not writable; choose another path")
    return path


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def remove_temp_files(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete the temporary files that interrupted :func:`atomic_write` calls to ``folder/<name>`` left behind
    (call it only where no other process is writing those files). Returns what was deleted."""
    folder = Path(folder)
    stale = [p for name in names for p in folder.glob(f".{name}.*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` ``obj`` to ``path`` atomically."""
    return atomic_write(path, lambda f: torch.save(obj, f))


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write a state dict as safetensors, atomically: the tensors alone, read without running code."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata={"format": "pt"})
    return atomic_write(path, lambda f: f.write(data))


def load_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (a format that holds tensors only); a damaged file is one error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no safetensors file at {path}")
    try:
        return load_file(path)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err}); re-download or re-export it") \
            from None


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only, no code is run."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path} is not a weights-only checkpoint (it holds pickled objects that could run code), so it "
            "was not loaded; re-save it as a state dict of tensors"
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as err:
        raise CheckpointError(
            f"{path} is corrupt or truncated ({type(err).__name__}); re-save or re-download it") from err


def extract_state_dict(checkpoint: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model state dict of a checkpoint: a raw state dict, or one under 'model' / 'state_dict'."""
    if isinstance(checkpoint, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
        if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
            return dict(checkpoint)
    raise CheckpointError(f"{source} holds no model state dict (tensors by name, or under 'model'/'state_dict')")


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> nn.Module:
    """Load ``state_dict`` into ``model`` strictly; a mismatch is one error naming what differs."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
              for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = [f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''} ({len(items)})"
                 for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)) if items]
        raise CheckpointError(
            f"{source} does not match the architecture ({'; '.join(parts)}); build the model it was saved from"
        )
    model.load_state_dict(state_dict)
    return model
