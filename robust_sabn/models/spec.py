"""Architecture specs: JSON-able dicts that rebuild a model without unpickling anything.

- ``{"arch": "resnet_small", "kwargs": {...}}`` names a registered zoo model and its ``create_model`` arguments
  (plain JSON values). Checkpoints and exports store such specs beside the weights.
- ``{"callable": "package.module:function", "kwargs": {...}}`` names any importable builder (a user's own model).

Nothing read from a file decides which Python code runs: a ``callable`` spec is built only when the caller names
that callable in the same call (``trusted=``, fed by ``--model`` or ``arch=``). A file that names one is refused
with a message saying how to load it deliberately.
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..errors import CheckpointError, ConfigError, UserError
from .arguments import FILE_FIX, check_model_arguments
from .registry import MODELS, create_model

MAX_NESTING = 8  # how deep the values of a spec's kwargs may nest (a zoo spec needs 3: norm_kwargs' values)


def spec_from_arch(arch: str, kwargs: Mapping[str, Any] | None = None) -> dict:
    """A spec from a zoo name (``"resnet18"``) or an importable ``"module:callable"`` given by the caller."""
    if not isinstance(arch, str) or not arch:
        raise ConfigError(f"arch must be a zoo model name or 'module:callable', got {arch!r}")
    key = "callable" if ":" in arch else "arch"
    return check_spec({key: arch, "kwargs": dict(kwargs or {})})


def is_plain(value: Any, levels: int = MAX_NESTING) -> bool:
    """JSON data: None, bool, int, float, str, and lists / string-keyed dicts of them, nested at most ``levels``
    deep (checked without deep recursion, however deep ``value`` is)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if levels < 1:
        return False
    if isinstance(value, (list, tuple)):
        return all(is_plain(v, levels - 1) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and is_plain(v, levels - 1) for k, v in value.items())
    return False


def check_spec(spec: Any, source: str = "architecture spec", error: type[UserError] = ConfigError) -> dict:
    """``spec`` as a plain dict, after checking its shape: one of 'arch'/'callable' (a string) and JSON kwargs,
    and for a zoo architecture every argument's type and range (:mod:`robust_sabn.models.arguments`), before
    anything is built. ``error`` is raised otherwise (:class:`CheckpointError` for a spec read from a file)."""
    if not isinstance(spec, Mapping) or ("arch" in spec) == ("callable" in spec):
        raise error(f"{source} needs exactly one of 'arch' (a zoo name) or 'callable' ('module:function')")
    name = spec.get("arch", spec.get("callable"))
    if not isinstance(name, str) or not name:
        raise error(f"{source}: the architecture must be a non-empty string, got {name!r}")
    kwargs = spec.get("kwargs", {})
    if not isinstance(kwargs, Mapping) or not is_plain(kwargs):
        raise error(f"{source}: 'kwargs' must be a mapping of plain JSON values (numbers, strings, lists), nested at "
                    f"most {MAX_NESTING} deep")
    if "arch" in spec:
        if name not in MODELS:
            raise error(f"{source}: unknown architecture {name!r}; choose one of: {', '.join(MODELS)}")
        check_model_arguments(name, MODELS[name], kwargs, error, source)
    return {**{k: v for k, v in spec.items() if k != "kwargs"}, "kwargs": dict(kwargs)}


def untrusted_callable(name: str, source: str, hint: str = "") -> CheckpointError:
    """The one-line refusal of a ``callable`` architecture named by a file."""
    return CheckpointError(
        f"{source} names the Python callable {name!r} as its architecture, and robust-sabn never runs code because "
        f"a file names it; if you trust that code, name it yourself: --model {name} on the command line, "
        f"arch={name!r} in Python{hint}")


def resolve_spec(file_spec: Mapping | None, source: str, arch: str | None = None,
                 arch_kwargs: Mapping[str, Any] | None = None, hint: str = "") -> tuple[dict, str | None]:
    """The spec to build for weights stored with ``file_spec`` (read from ``source``), given the caller's ``arch``.

    Returns ``(spec, trusted)``: ``trusted`` is the callable the caller named, the only one :func:`build_model`
    may import. A caller's ``arch`` wins over the file; when it names the same callable as the file, the file's
    kwargs are kept unless ``arch_kwargs`` are given (so exports of a user's own model keep loading). A file's
    ``callable`` spec without the caller naming it is refused (``hint`` extends the message).
    """
    if arch is None:
        if file_spec is None:
            raise CheckpointError(f"{source} holds weights but no architecture: pass --model (a zoo name or "
                                  "'module:callable', with --model-kwargs)")
        spec = check_spec(file_spec, source, CheckpointError)
        if "callable" in spec:
            raise untrusted_callable(spec["callable"], source, hint)
        return spec, None
    spec = spec_from_arch(arch, arch_kwargs)
    if arch_kwargs is None and isinstance(file_spec, Mapping) and file_spec.get("callable") == arch:
        spec = {**spec, "kwargs": check_spec(file_spec, source, CheckpointError)["kwargs"]}
    return spec, spec.get("callable")


def build_model(spec: Mapping, trusted: str | None = None, source: str | None = None) -> nn.Module:
    """Build the model a spec describes. A ``callable`` spec is built only when ``trusted`` names that callable
    (the caller's own choice); wrong keyword arguments are a :class:`ConfigError`, or a :class:`CheckpointError`
    naming ``source`` for a spec read from that file."""
    spec = check_spec(spec, source or "architecture spec", CheckpointError if source else ConfigError)
    if "callable" in spec and spec["callable"] != trusted:
        raise untrusted_callable(spec["callable"], "the architecture spec")
    try:
        if "callable" in spec:
            return import_callable(spec["callable"])(**spec["kwargs"])
        return create_model(spec["arch"], **spec["kwargs"])
    except TypeError as err:
        raise (CheckpointError if source else ConfigError)(
            f"cannot build the architecture {spec} ({err}); fix its arguments") from None
    except ConfigError as err:
        if source is None:
            raise
        raise CheckpointError(f"{source}: {err}{FILE_FIX}") from None


def import_callable(target: str):
    """``"package.module:function"`` -> the function."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"expected 'module:callable', got {target!r}")
    try:
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"cannot import {target!r} ({err}); check the module is on PYTHONPATH") from err
    if not callable(obj):
        raise ConfigError(f"{target!r} is not callable")
    return obj
