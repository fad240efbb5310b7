"""Trained models on disk: the one loader that rebuilds a model from a run folder, a training checkpoint, an
exported RobustBench file (a state dict, ``.pt`` or ``.safetensors``, with an architecture file beside it), an
export laid out as a Hugging Face model repository (``model.safetensors`` and ``config.json``, also inside the
Hugging Face cache), or any state dict plus an architecture named by the caller. An export's SHA-256 manifest is
checked before anything of it is read.

Nothing here runs code a file names: checkpoints are read with ``weights_only=True``, architecture files are JSON,
and an architecture given as ``module:callable`` is imported only when the caller names it (see
:mod:`robust_sabn.models.spec`).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .checkpoint import TrainingCheckpoint
from .checksums import check_manifest, manifest_path
from .constants import ADV_ROUTE
from .errors import CheckpointError, ConfigError
from .io import atomic_write_text, extract_state_dict, load_checkpoint, load_safetensors, load_weights
from .models.spec import MAX_NESTING, build_model, check_spec, is_plain, resolve_spec
from .nn import routes_of
from .threat import Threat

ARCH_SUFFIX = ".arch.json"
ARCH_FORMAT = "robust-sabn-arch/1"
MAX_ARCH_BYTES = 1_000_000  # an architecture file robust-sabn writes is under 2 KB
RUN_CHECKPOINTS = ("best.pt", "last.pt")
EXPORTED = "exported model"  # LoadedModel.source of a robust-sabn export
HF_WEIGHTS, HF_CONFIG = "model.safetensors", "config.json"  # a Hugging Face model folder's files
HF_FOLDER = "Hugging Face model folder"  # LoadedModel.source of one


@dataclass(frozen=True)
class TrainedFor:
    """What a model was trained for, as its files record it: the threat model, the dataset, and the shape of its
    images (channels, height, width). Each is None where the files do not say (files of older versions)."""

    threat: Threat | None = None
    dataset: str | None = None
    input_shape: tuple[int, int, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"threat": None if self.threat is None else self.threat.to_dict(), "dataset": self.dataset,
                "input_shape": None if self.input_shape is None else list(self.input_shape)}

    @classmethod
    def read(cls, record: Mapping[str, Any], config: Mapping[str, Any], source: str) -> TrainedFor:
        """From an architecture file's or checkpoint's ``record`` (``threat``, ``input_shape``, ``trained_on``) and the
        training ``config`` where there is one; a malformed entry is a :class:`CheckpointError` naming ``source``."""
        threat = record.get("threat")
        norm = config.get("threat_model", config.get("attack_norm"))  # the setting's old name in older runs
        try:
            if threat is not None:
                threat = Threat.from_dict(threat, source)
            elif norm is not None and "eps" in config:
                threat = Threat(norm, config["eps"])
        except ConfigError as err:
            raise CheckpointError(f"{source}: {err}; re-save or re-export the model") from None
        dataset = config.get("dataset") or record.get("trained_on") or record.get("dataset")
        return cls(threat, dataset, _input_shape(record.get("input_shape"), source))


@dataclass
class LoadedModel:
    """A rebuilt model with where it came from, and what its files say about how it was trained."""

    model: nn.Module
    path: Path  # the weights file that was read
    spec: dict  # the architecture spec it was rebuilt from
    source: str  # "training checkpoint", "training checkpoint (EMA weights)", EXPORTED, HF_FOLDER or "state dict"
    config: dict = field(default_factory=dict)  # the training config, when the checkpoint holds one
    trained: TrainedFor = TrainedFor()
    step: int | None = None  # the optimizer steps a training checkpoint was saved after

    @property
    def is_export(self) -> bool:
        return self.source == EXPORTED

    @property
    def input_shape(self) -> tuple[int, int, int] | None:
        return self.trained.input_shape

    def route(self, route: str | None = None) -> str | None:
        """``route`` as given; for a routed model without one, the route its training attacked (``adv_route``,
        "adv" for runs that predate the setting)."""
        routes = routes_of(self.model)
        if route is not None or not routes:
            return route
        adv = self.config.get("adv_route", ADV_ROUTE)
        if adv not in routes:
            raise ConfigError(f"this model has routes {list(routes)}; choose one with --route")
        return adv

    def trained_on(self) -> str | None:
        """The dataset the model was trained on, where its files record it."""
        return self.trained.dataset

    def check_images(self, images: Tensor, described: str) -> None:
        """Refuse ``images`` of another shape than the model's training images, where its file records that shape
        (a model with global pooling runs on any size, and would be scored on images it never saw the like of)."""
        if self.input_shape is not None and tuple(images.shape[1:]) != self.input_shape:
            shape, trained = ("x".join(map(str, s)) for s in (images.shape[1:], self.input_shape))
            raise ConfigError(f"{described} are {shape} (channels x height x width) but {self.path} was trained on "
                              f"{trained} images; evaluate it on images of that shape (its training set: "
                              f"{self.trained_on() or 'unknown'})")

    def threat(self, norm: str | None = None, eps: float | str | None = None) -> Threat:
        """The threat model to evaluate in: ``norm`` and ``eps`` where given; else the one the model was trained for;
        else ``norm``'s standard radius (Linf 8/255, L2 0.5, L1 12)."""
        trained = self.trained.threat
        norm = norm or (trained.norm if trained is not None else "Linf")
        if eps is not None:
            return Threat(norm, eps)
        if trained is not None and trained.norm == norm:
            return trained
        return Threat.standard(norm)


def safetensors_file(weights: str | os.PathLike) -> Path:
    """The safetensors copy an export writes beside its state dict: ``X.pt`` -> ``X.safetensors``."""
    return Path(weights).with_suffix(".safetensors")


def arch_file(weights: str | os.PathLike) -> Path:
    """The architecture file that sits beside a weights file: ``X.pt`` or ``X.safetensors`` -> ``X.arch.json``;
    a Hugging Face folder's ``config.json`` beside its ``model.safetensors``."""
    weights = Path(weights)
    if weights.name == HF_WEIGHTS and weights.with_name(HF_CONFIG).is_file():
        return weights.with_name(HF_CONFIG)
    return weights.with_name(weights.stem + ARCH_SUFFIX)


def write_arch_file(path: str | os.PathLike, spec: Mapping, **info: Any) -> Path:
    """Write an architecture file (JSON): the spec plus descriptive fields such as the folded route."""
    record = {"format": ARCH_FORMAT, "spec": check_spec(spec), **info}
    return atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False) + "\n")


def read_arch_file(path: str | os.PathLike) -> dict:
    """Read an architecture file; a malformed one is a :class:`CheckpointError` naming the file. A file over
    :data:`MAX_ARCH_BYTES` is refused unread, one nested deeper than a spec may be unparsed, and every value of
    its spec is checked (:func:`~robust_sabn.models.spec.check_spec`) before anything is built."""
    path = Path(path)

    def invalid(why: str) -> CheckpointError:
        return CheckpointError(f"{path} is not a valid architecture file ({why}); re-export the model")

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_ARCH_BYTES + 1)
        if len(data) > MAX_ARCH_BYTES:
            raise invalid(f"it holds over {MAX_ARCH_BYTES:,} bytes; robust-sabn writes under 2 KB")
        record = json.loads(data.decode())
    except FileNotFoundError:
        raise CheckpointError(f"no architecture file at {path}") from None
    except RecursionError:  # json's parser recurses once per level
        raise invalid("it is nested too deep") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise invalid(str(err).splitlines()[0]) from None
    except ValueError:  # Python reads no integer of over 4300 digits
        raise invalid("it holds a number of thousands of digits") from None
    if not isinstance(record, dict) or record.get("format") != ARCH_FORMAT:
        raise CheckpointError(f"{path} is not a robust-sabn architecture file (expected format {ARCH_FORMAT!r})")
    if not is_plain(record):
        raise invalid(f"it is nested deeper than {MAX_NESTING} levels")
    record["spec"] = check_spec(record.get("spec"), str(path), CheckpointError)
    return record


def hf_snapshot(folder: Path) -> Path:
    """A Hugging Face cache folder ``models--org--name`` -> the snapshot its ``refs/main`` names (else its only
    snapshot); any other folder as it is."""
    snapshots = folder / "snapshots"
    if not (folder.name.startswith("models--") and snapshots.is_dir()):
        return folder
    ref = folder / "refs" / "main"
    if ref.is_file():
        revision = ref.read_text(errors="replace").strip()
        if not re.fullmatch(r"[0-9a-f]{7,64}", revision):
            raise CheckpointError(f"{ref} names no revision (a hexadecimal commit hash); pass the snapshot folder "
                                  f"(e.g. {snapshots}/<revision>)")
        return snapshots / revision
    found = sorted(p for p in snapshots.iterdir() if p.is_dir())
    if len(found) != 1:
        raise CheckpointError(f"{folder} holds {len(found)} snapshots and no refs/main; pass the snapshot folder "
                              f"(e.g. {snapshots}/<revision>)")
    return found[0]


def resolve_weights(target: str | os.PathLike) -> Path:
    """The weights file for ``target``: the file itself, a Hugging Face model folder's ``model.safetensors`` (also
    of a cache folder ``models--org--name``), or a run folder's best.pt (else last.pt)."""
    target = Path(target)
    if target.is_dir():
        target = hf_snapshot(target)
        if (target / HF_WEIGHTS).is_file() and (target / HF_CONFIG).is_file():
            return target / HF_WEIGHTS
        for name in RUN_CHECKPOINTS:
            if (target / name).is_file():
                return target / name
        raise CheckpointError(f"{target} is a folder without {' or '.join(RUN_CHECKPOINTS)}; pass a run folder "
                              "or a checkpoint file")
    if not target.is_file():
        raise CheckpointError(f"no checkpoint at {target}; pass a run folder, a .pt checkpoint or an exported model")
    return target


def load_trained_model(target: str | os.PathLike, arch: str | None = None,
                       arch_kwargs: Mapping[str, Any] | None = None, hint: str = "", *,
                       ema: bool = True) -> LoadedModel:
    """Rebuild the model stored at ``target`` (on the CPU, in eval mode).

    A training checkpoint of a run with ``--ema-decay`` holds the live weights (``model``) and their moving average
    (``ema``); the average is loaded, and ``source`` says so, unless ``ema=False``.

    The architecture comes from, in order: ``arch``/``arch_kwargs`` when given (a zoo name or an importable
    ``"module:callable"``); the ``model_spec`` inside a training checkpoint; the ``<name>.arch.json`` beside an
    exported ``<name>.pt``. A file may only name zoo architectures: one naming a callable loads when ``arch`` names
    that same callable (``hint`` extends the refusal). Weights load strictly.
    """
    path = resolve_weights(target)
    check_manifest(manifest_path(path), [path, arch_file(path)])
    checkpoint = load_safetensors(path) if path.suffix == ".safetensors" else load_checkpoint(path)
    step = checkpoint.get("step") if isinstance(checkpoint, Mapping) else None
    record: Mapping = {}
    if TrainingCheckpoint.holds_model(checkpoint):
        record = TrainingCheckpoint.model_part(checkpoint, str(path))
        averaged = ema and record["ema"] is not None
        checkpoint, source = {"model": record["ema" if averaged else "model"]}, f"{path} (model_spec)"
        file_spec, kind = record["model_spec"], f"training checkpoint{' (EMA weights)' if averaged else ''}"
    elif arch_file(path).is_file():
        record, source = read_arch_file(arch_file(path)), str(arch_file(path))
        file_spec, kind = record["spec"], HF_FOLDER if arch_file(path).name == HF_CONFIG else EXPORTED
    else:
        file_spec, source, kind = None, str(path), "state dict"
    state_dict = extract_state_dict(checkpoint, str(path))
    spec, trusted = resolve_spec(file_spec, source, arch, arch_kwargs, hint)
    model = build_model(spec, trusted, source if arch is None else None)
    load_weights(model, state_dict, str(path))
    config = dict(record.get("config") or {})
    return LoadedModel(model.eval(), path, spec, kind, config, TrainedFor.read(record, config, source),
                       step if isinstance(step, int) else None)


def _input_shape(value: Any, source: str) -> tuple[int, int, int] | None:
    """A recorded ``input_shape`` as (channels, height, width); files written before it was recorded have none."""
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise CheckpointError(f"{source}: input_shape must be three positive integers (channels, height, width), "
                              f"got {value!r}; re-save or re-export the model")
    return tuple(value)
