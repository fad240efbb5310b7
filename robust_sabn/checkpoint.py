"""The training checkpoint (``last.pt``, ``best.pt``), defined once: this dataclass writes it, reads it and checks
it. Everything in it is tensors and plain values, so it loads with ``torch.load(..., weights_only=True)``.

A checkpoint has two parts. The model part (``model``, ``model_spec``, ``config``, ``input_shape``, ``ema``) is
what :func:`robust_sabn.model_files.load_trained_model` rebuilds a model from; the run part (epoch, batch, step,
optimizer, scheduler, AMP scaler, one RNG state per process, meters, best, times, number of processes) is what
``robust-sabn train --resume`` continues from, bit for bit. ``versions`` records what it was made with.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from .errors import CheckpointError
from .io import load_checkpoint, save_checkpoint

# field -> the types its value may have (None: absent in files written before the field existed)
_TYPES: dict[str, tuple[type, ...]] = {
    "model": (Mapping,), "model_spec": (Mapping,), "config": (Mapping,), "input_shape": (list, tuple, type(None)),
    "ema": (Mapping, type(None)), "epoch": (int,), "batch": (int,), "step": (int,), "optimizer": (Mapping,),
    "scheduler": (Mapping,), "scaler": (Mapping,), "rng": (list,), "meters": (Mapping,), "best": (Mapping,),
    "elapsed": (float, int), "epoch_seconds": (float, int), "world_size": (int,), "versions": (Mapping, type(None)),
}
MODEL_PART = ("model", "model_spec")
RUN_PART = ("config", "epoch", "batch", "step", "optimizer", "scheduler", "scaler", "rng", "meters", "best",
            "elapsed", "epoch_seconds")


@dataclass
class TrainingCheckpoint:
    """One training checkpoint; see the module docstring for its parts."""

    model: dict[str, Tensor]  # the live weights (state dict)
    model_spec: dict  # the architecture (robust_sabn.models.spec)
    config: dict  # the TrainConfig as a dict
    epoch: int  # completed epochs
    batch: int  # batches done in the current epoch
    step: int  # optimizer steps
    optimizer: dict
    scheduler: dict
    scaler: dict
    rng: list  # one entry per process (robust_sabn.rng.rng_state)
    meters: dict  # the running averages of the metrics ("epoch", "window")
    best: dict  # {"val_robust_acc", "epoch", "step"} of best.pt
    elapsed: float  # training seconds so far
    epoch_seconds: float  # training seconds of the current epoch
    world_size: int = 1  # processes that trained it
    input_shape: list[int] | None = None  # (channels, height, width) of its training images
    ema: dict[str, Tensor] | None = None  # the weight average (--ema-decay), with the live model's buffers
    versions: dict | None = None  # robust_sabn.provenance.provenance() of the process that wrote it

    def to_dict(self) -> dict[str, Any]:
        """The dict written to disk (absent optional parts left out); tensors are not copied."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically (:func:`robust_sabn.io.save_checkpoint`)."""
        return save_checkpoint(self.to_dict(), path)

    @classmethod
    def from_dict(cls, values: Any, source: str = "checkpoint") -> TrainingCheckpoint:
        """A checkpoint from what was read from a file; one :class:`CheckpointError` naming ``source`` for anything
        missing or of the wrong kind."""
        missing = [k for k in MODEL_PART + RUN_PART if not isinstance(values, Mapping) or k not in values]
        if missing:
            raise CheckpointError(f"{source} is not a training checkpoint of robust-sabn (it lacks "
                                  f"{', '.join(missing)}); start a new run in another --out-dir")
        _check_kinds(values, _TYPES, source)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def load(cls, path: str | os.PathLike) -> TrainingCheckpoint:
        """Read and check the checkpoint at ``path`` (weights only: no code in it runs)."""
        return cls.from_dict(load_checkpoint(path), str(path))

    @staticmethod
    def holds_model(values: Any) -> bool:
        """Whether a file's content has a checkpoint's model part (a state dict and the spec that rebuilds it)."""
        return isinstance(values, Mapping) and all(k in values for k in MODEL_PART)

    @staticmethod
    def model_part(values: Mapping[str, Any], source: str) -> dict[str, Any]:
        """The model part of a file's content that :meth:`holds_model` (``config``, ``input_shape`` and ``ema`` None
        where absent), each of the right kind, else a :class:`CheckpointError` naming ``source``."""
        names = (*MODEL_PART, "config", "input_shape", "ema")
        part = {name: values.get(name) for name in names}
        _check_kinds(part, {k: (*_TYPES[k], type(None)) if k == "config" else _TYPES[k] for k in names}, source)
        return part


def _check_kinds(values: Mapping[str, Any], kinds: Mapping[str, tuple[type, ...]], source: str) -> None:
    wrong = [k for k, allowed in kinds.items()
             if not isinstance(values.get(k), allowed) or isinstance(values.get(k), bool)]
    if wrong:
        raise CheckpointError(f"{source} is not a training checkpoint of robust-sabn ({', '.join(wrong)} of the "
                              "wrong kind); re-save it, or start a new run in another --out-dir")
