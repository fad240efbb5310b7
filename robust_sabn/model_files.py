"""Trained models on disk: rebuild one from a run folder, a training checkpoint, an exported RobustBench file
(a state dict with an architecture file beside it), or any state dict plus an architecture named by the caller.

Nothing here unpickles code: checkpoints are read with ``weights_only=True`` and architecture files are JSON.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from .errors import CheckpointError, ConfigError
from .io import atomic_write_text, extract_state_dict, load_checkpoint, load_weights
from .models import build_model

ARCH_SUFFIX = ".arch.json"
ARCH_FORMAT = "robust-sabn-arch/1"
RUN_CHECKPOINTS = ("best.pt", "last.pt")


@dataclass
class LoadedModel:
    """A rebuilt model with where it came from."""

    model: nn.Module
    path: Path  # the weights file that was read
    spec: dict  # the architecture spec it was rebuilt from
    source: str  # "training checkpoint", "exported model" or "state dict"
    config: dict = field(default_factory=dict)  # the training config, when the checkpoint holds one


def arch_file(weights: str | os.PathLike) -> Path:
    """The architecture file that sits beside a weights file: ``X.pt`` -> ``X.arch.json``."""
    weights = Path(weights)
    return weights.with_name(weights.stem + ARCH_SUFFIX)


def spec_from_arch(arch: str, kwargs: Mapping[str, Any] | None = None) -> dict:
    """An architecture spec from a zoo name (``"resnet18"``) or an importable ``"module:callable"``."""
    if not isinstance(arch, str) or not arch:
        raise ConfigError(f"arch must be a zoo model name or 'module:callable', got {arch!r}")
    key = "callable" if ":" in arch else "arch"
    return {key: arch, "kwargs": dict(kwargs or {})}


def check_spec(spec: Any, source: str = "architecture spec") -> dict:
    if not isinstance(spec, Mapping) or ("arch" in spec) == ("callable" in spec):
        raise ConfigError(f"{source} needs exactly one of 'arch' (a zoo name) or 'callable' ('module:function')")
    if not isinstance(spec.get("kwargs", {}), Mapping):
        raise ConfigError(f"{source}: 'kwargs' must be a mapping of keyword arguments")
    return {k: (dict(v) if k == "kwargs" else v) for k, v in spec.items()}


def build(spec: Mapping) -> nn.Module:
    """``build_model(spec)``, with wrong keyword arguments reported as a :class:`ConfigError`."""
    try:
        return build_model(spec)
    except TypeError as err:
        raise ConfigError(f"cannot build the architecture {dict(spec)} ({err}); fix its arguments") from None


def write_arch_file(path: str | os.PathLike, spec: Mapping, **info: Any) -> Path:
    """Write an architecture file (JSON): the spec plus descriptive fields such as the folded route."""
    record = {"format": ARCH_FORMAT, "spec": check_spec(spec), **info}
    return atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False) + "\n")


def read_arch_file(path: str | os.PathLike) -> dict:
    """Read an architecture file; a malformed one is a :class:`CheckpointError` naming the file."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no architecture file at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not a valid architecture file ({err}); re-export the model") from None
    if not isinstance(record, dict) or record.get("format") != ARCH_FORMAT:
        raise CheckpointError(f"{path} is not a robust-sabn architecture file (expected format {ARCH_FORMAT!r})")
    try:
        record["spec"] = check_spec(record.get("spec"), str(path))
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    return record


def resolve_weights(target: str | os.PathLike) -> Path:
    """The weights file for ``target``: the file itself, or a run folder's best.pt (else last.pt)."""
    target = Path(target)
    if target.is_dir():
        for name in RUN_CHECKPOINTS:
            if (target / name).is_file():
                return target / name
        raise CheckpointError(f"{target} is a folder without {' or '.join(RUN_CHECKPOINTS)}; pass a run folder "
                              "or a checkpoint file")
    if not target.is_file():
        raise CheckpointError(f"no checkpoint at {target}; pass a run folder, a .pt checkpoint or an exported model")
    return target


def load_trained_model(target: str | os.PathLike, arch: str | None = None,
                       arch_kwargs: Mapping[str, Any] | None = None) -> LoadedModel:
    """Rebuild the model stored at ``target`` (on the CPU, in eval mode).

    The architecture comes from, in order: ``arch``/``arch_kwargs`` when given; the ``model_spec`` inside a
    training checkpoint; the ``<name>.arch.json`` file beside an exported ``<name>.pt``. Weights load strictly.
    """
    path = resolve_weights(target)
    checkpoint = load_checkpoint(path)
    state_dict = extract_state_dict(checkpoint, str(path))
    config = checkpoint.get("config") if isinstance(checkpoint, Mapping) else None
    if arch is not None:
        spec, source = spec_from_arch(arch, arch_kwargs), "state dict"
    elif isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("model_spec"), Mapping):
        spec, source = check_spec(checkpoint["model_spec"], f"{path} model_spec"), "training checkpoint"
    elif arch_file(path).is_file():
        spec, source = read_arch_file(arch_file(path))["spec"], "exported model"
    else:
        raise CheckpointError(
            f"{path} holds weights but no architecture: pass --model (a zoo name or 'module:callable', "
            f"with --model-kwargs) or put {arch_file(path).name} beside it")
    model = build(spec)
    load_weights(model, state_dict, str(path))
    return LoadedModel(model.eval(), path, spec, source, dict(config) if isinstance(config, Mapping) else {})
