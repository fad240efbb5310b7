"""The state folder of a resumable evaluation: what is evaluated, and one file per finished batch.

::

    <report>.state/
        manifest.json       the fingerprint: hashes of the folded model's tensors and of the images and labels, and
                            the settings that decide the answer (attack and options, eps, norm, seed, batch size,
                            route, numerics, versions of robust-sabn, torch and AutoAttack)
        batch-000042.pt     batch 42's result: tensors and plain values (read weights-only), the fingerprint's
                            hash and a checksum of the content

Every file is written atomically, so a process killed at any moment leaves whole files only; any process may write
its own batches. A folder or batch file of another evaluation, or one whose content no longer matches its
checksum, is refused with one line naming the folder: nothing is ever mixed in.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..io import atomic_write_text, load_checkpoint, save_checkpoint
from .batches import BatchResult

STATE = ".state"  # <report stem>.state/ holds the state of robust-sabn eval's report <report stem>.json
MANIFEST = "manifest.json"
FORMAT = 1  # the layout of these files; a folder written in another is refused
_BATCH_FILE = re.compile(r"^batch-(\d{6,})\.pt$")


def digest(value: Any) -> str:
    """A SHA-256 of tensors (dtype, shape and bytes) and plain values, nested in dicts and lists."""
    h = hashlib.sha256()
    _feed(h, value)
    return h.hexdigest()


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        h.update(f"tensor {value.dtype} {tuple(value.shape)};".encode())
        h.update(flat.view(torch.uint8).numpy() if flat.numel() else b"")
    elif isinstance(value, Mapping):
        h.update(f"dict {len(value)};".encode())
        for key in sorted(value):
            _feed(h, str(key))
            _feed(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(f"list {len(value)};".encode())
        for item in value:
            _feed(h, item)
    else:
        h.update(json.dumps(value).encode() + b";")


def fingerprint(model: nn.Module, x: torch.Tensor, y: torch.Tensor, settings: Mapping[str, Any]) -> dict[str, Any]:
    """What identifies an evaluation: hashes of ``model``'s tensors and of the images and labels, and ``settings``
    (JSON values)."""
    return {"format": FORMAT, "model": digest(model.state_dict()), "images": digest([x, y]),
            "settings": json.loads(json.dumps(settings))}


def remove_state(folder: str | Path) -> None:
    """Delete a state folder (once its report is written); one already gone is fine."""
    shutil.rmtree(folder, ignore_errors=True)


def part(state_dir: str | Path | None, key: str) -> Path | None:
    """The state folder of one evaluation (``key``, e.g. ``eps-8_255``) of a command that runs several."""
    if state_dir is None:
        return None
    return Path(state_dir) / re.sub(r"[^A-Za-z0-9_.=-]", "_", key)


class EvalState:
    """The state folder ``folder`` of the evaluation identified by ``identity`` (see :func:`fingerprint`)."""

    def __init__(self, folder: str | Path, identity: Mapping[str, Any]) -> None:
        self.folder = Path(folder)
        self.identity = dict(identity)
        self.key = digest(self.identity)
        self._restart = f"delete {self.folder} to start this evaluation over"

    def open(self) -> EvalState:
        """Check the folder's manifest against this evaluation, or start the folder."""
        manifest = self.folder / MANIFEST
        if not manifest.exists():
            atomic_write_text(manifest, json.dumps(self.identity, indent=2) + "\n")
            return self
        try:
            theirs = json.loads(manifest.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"cannot read {manifest} ({err}); {self._restart}") from None
        if theirs != self.identity:
            raise ConfigError(f"{self.folder} holds the finished batches of another evaluation "
                              f"({_difference(self.identity, theirs)}); {self._restart}")
        return self

    def path(self, index: int) -> Path:
        return self.folder / f"batch-{index:06d}.pt"

    def save(self, result: BatchResult) -> None:
        """Write one finished batch (atomically)."""
        payload = {"key": self.key, **_to_values(result)}
        save_checkpoint({**payload, "checksum": digest(payload)}, self.path(result.index))

    def finished(self, sizes: list[int]) -> dict[int, BatchResult]:
        """The finished batches, by index; ``sizes`` are the batches' numbers of images. Any file that is not a
        whole batch of this evaluation is refused."""
        results = {}
        for path in sorted(self.folder.glob("batch-*.pt")):
            match = _BATCH_FILE.match(path.name)
            if match is None:
                raise ConfigError(f"{path} is not a batch file of robust-sabn; {self._restart}")
            results[int(match[1])] = self._read(path, int(match[1]), sizes)
        return results

    def _read(self, path: Path, index: int, sizes: list[int]) -> BatchResult:
        try:
            values = load_checkpoint(path)
        except CheckpointError:
            raise ConfigError(f"{path} cannot be read (it is truncated, damaged or not a batch file); "
                              f"{self._restart}") from None
        if not isinstance(values, dict) or "checksum" not in values:
            raise ConfigError(f"{path} is not a batch file of robust-sabn; {self._restart}")
        checksum = values.pop("checksum")
        if digest(values) != checksum:
            raise ConfigError(f"{path} does not match its checksum (it was modified or damaged); {self._restart}")
        if values.get("key") != self.key:
            raise ConfigError(f"{path} belongs to another evaluation than {self.folder / MANIFEST}; {self._restart}")
        try:
            result = _from_values(values)
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{path} is not a batch file of this version of robust-sabn ({err}); "
                              f"{self._restart}") from None
        if result.index != index or index >= len(sizes) or len(result.correct) != sizes[index]:
            raise ConfigError(f"{path} does not hold batch {index} of this evaluation; {self._restart}")
        return result


def _to_values(result: BatchResult) -> dict[str, Any]:
    return {"index": result.index, "correct": result.correct, "robust": result.robust, "broken": result.broken,
            "attacks": result.attacks, "flags": result.flags, "seconds": result.seconds, "backend": result.backend,
            "adversarials": result.adversarials}


def _from_values(values: dict[str, Any]) -> BatchResult:
    correct, robust = values["correct"], values["robust"]
    if not (isinstance(correct, torch.Tensor) and isinstance(robust, torch.Tensor) and correct.dtype == torch.bool
            and robust.shape == correct.shape and not (robust & ~correct).any()):
        raise ValueError("per-image flags")
    return BatchResult(int(values["index"]), correct, robust, dict(values["broken"]), list(values["attacks"]),
                       list(values["flags"]), dict(values["seconds"]), values["backend"], values["adversarials"])


def _difference(mine: Mapping[str, Any], theirs: Any) -> str:
    """What differs between two fingerprints, in words."""
    if not isinstance(theirs, dict) or theirs.get("format") != mine["format"]:
        return "written by another version of robust-sabn"
    parts = []
    if theirs.get("model") != mine["model"]:
        parts.append("another model")
    if theirs.get("images") != mine["images"]:
        parts.append("other images or labels")
    settings, other = mine["settings"], theirs.get("settings")
    other = other if isinstance(other, dict) else {}
    parts += [f"{key} {other.get(key)!r} there, {settings.get(key)!r} here"
              for key in sorted(set(settings) | set(other)) if settings.get(key) != other.get(key)]
    return ", ".join(parts)
