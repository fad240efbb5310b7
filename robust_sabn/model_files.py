"""Trained models on disk: the one loader that rebuilds a model from a run folder, a training checkpoint, an
exported RobustBench file (a state dict with an architecture file beside it), or any state dict plus an
architecture named by the caller.

Nothing here runs code a file names: checkpoints are read with ``weights_only=True``, architecture files are JSON,
and an architecture given as ``module:callable`` is imported only when the caller names it (see
:mod:`robust_sabn.models.spec`).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .constants import ADV_ROUTE
from .errors import CheckpointError, ConfigError
from .io import atomic_write_text, extract_state_dict, load_checkpoint, load_weights
from .limits import check_eps
from .models.spec import MAX_NESTING, build_model, check_spec, is_plain, resolve_spec
from .nn import routes_of
from .parsing import parse_number

ARCH_SUFFIX = ".arch.json"
ARCH_FORMAT = "robust-sabn-arch/1"
MAX_ARCH_BYTES = 1_000_000  # an architecture file robust-sabn writes is under 2 KB
RUN_CHECKPOINTS = ("best.pt", "last.pt")


@dataclass
class LoadedModel:
    """A rebuilt model with where it came from, and what its files say about how it was trained."""

    model: nn.Module
    path: Path  # the weights file that was read
    spec: dict  # the architecture spec it was rebuilt from
    source: str  # "training checkpoint", "training checkpoint (EMA weights)", "exported model" or "state dict"
    config: dict = field(default_factory=dict)  # the training config, when the checkpoint holds one
    input_shape: tuple[int, int, int] | None = None  # (channels, height, width) of its training images, if recorded

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
        """The dataset the model was trained on: its training config's, or the one its export recorded."""
        if self.config.get("dataset"):
            return self.config["dataset"]
        if self.source == "exported model":
            record = read_arch_file(arch_file(self.path))
            return record.get("trained_on") or record.get("dataset")
        return None

    def check_images(self, images: Tensor, described: str) -> None:
        """Refuse ``images`` of another shape than the model's training images, where its file records that shape
        (a model with global pooling runs on any size, and would be scored on images it never saw the like of)."""
        if self.input_shape is not None and tuple(images.shape[1:]) != self.input_shape:
            shape, trained = ("x".join(map(str, s)) for s in (images.shape[1:], self.input_shape))
            raise ConfigError(f"{described} are {shape} (channels x height x width) but {self.path} was trained on "
                              f"{trained} images; evaluate it on images of that shape (its training set: "
                              f"{self.trained_on() or 'unknown'})")

    def threat(self, norm: str | None = None, eps: float | str | None = None) -> tuple[str, float]:
        """The threat model and radius: as given, else the training attack's, else RobustBench's (Linf, 8/255);
        the radius checked against the threat model's range."""
        norm = norm or self.config.get("attack_norm") or "Linf"
        return norm, check_eps(parse_number(eps if eps is not None else self.config.get("eps", 8 / 255), "eps"), norm)


def arch_file(weights: str | os.PathLike) -> Path:
    """The architecture file that sits beside a weights file: ``X.pt`` -> ``X.arch.json``."""
    weights = Path(weights)
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
    checkpoint = load_checkpoint(path)
    averaged = ema and isinstance(checkpoint, Mapping) and isinstance(checkpoint.get("ema"), Mapping)
    state_dict = extract_state_dict({"model": checkpoint["ema"]} if averaged else checkpoint, str(path))
    config = checkpoint.get("config") if isinstance(checkpoint, Mapping) else None
    record: Mapping = {}
    if isinstance(checkpoint, Mapping) and "model_spec" in checkpoint:
        record, source = checkpoint, f"{path} (model_spec)"
        file_spec, kind = checkpoint["model_spec"], ("training checkpoint (EMA weights)" if averaged
                                                     else "training checkpoint")
    elif arch_file(path).is_file():
        record, source = read_arch_file(arch_file(path)), str(arch_file(path))
        file_spec, kind = record["spec"], "exported model"
    else:
        file_spec, source, kind = None, str(path), "state dict"
    spec, trusted = resolve_spec(file_spec, source, arch, arch_kwargs, hint)
    model = build_model(spec, trusted, source if arch is None else None)
    load_weights(model, state_dict, str(path))
    return LoadedModel(model.eval(), path, spec, kind, dict(config) if isinstance(config, Mapping) else {},
                       _input_shape(record.get("input_shape"), source))


def _input_shape(value: Any, source: str) -> tuple[int, int, int] | None:
    """A recorded ``input_shape`` as (channels, height, width); files written before it was recorded have none."""
    if value is None:
        return None
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise CheckpointError(f"{source}: input_shape must be three positive integers (channels, height, width), "
                              f"got {value!r}; re-save or re-export the model")
    return tuple(value)
