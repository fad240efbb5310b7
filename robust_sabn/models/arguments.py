"""The arguments of a zoo model, checked before anything is built: a file (an architecture file, a checkpoint's
``model_spec``) or a flag can neither crash :func:`~robust_sabn.models.create_model` nor make it allocate
without bound.

What an argument may be comes from the signatures of ``create_model``, of the builder (resnet_small's ``width``
and ``depth``) and of the norm layer (its ``norm_kwargs``): an argument annotated with ``int``, ``float``,
``bool``, ``str`` or ``None`` (or a union of them) takes a value of that type, and a number must also lie in its
entry of :data:`ARGUMENT_RANGES` (a registered builder with another numeric argument declares its range there).
Any other argument (a device, a dtype, a layer) is not taken from a spec.
"""
from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import CheckpointError, ConfigError, UserError
from ..nn import CONVS, NORMS
from ..parsing import Range, shown
from ..registry import Registry

MAX_ROUTES = 8
ARGUMENT_RANGES: dict[str, Range] = {
    "num_classes": Range(2, 100_000, "10", integer=True),
    "width": Range(1, 1024, "16", integer=True, why="resnet_small at width 1024 holds 400 million parameters, more "
                                                     "than any RobustBench model"),
    "depth": Range(1, 64, "1", integer=True),
    "eps": Range(0.0, 1.0, "1e-5", open_low=True),
    "momentum": Range(0.0, 1.0, "0.1"),
    "tau": Range(-1.0, math.inf, "0.8"),  # a cosine similarity threshold; inf never skips
    "num_groups": Range(1, 4096, "32", integer=True),
    "mean": Range(-1000.0, 1000.0, "0.5"),
    "std": Range(0.0, 1000.0, "0.25", open_low=True),
}
SIMPLE_TYPES = (bool, int, float, str, type(None))
FILE_FIX = "; the file is damaged or was not written by robust-sabn: re-export the model"  # of a spec read from one


class ArgumentError(Exception):
    """An argument a spec may not hold; :func:`check_model_arguments` turns it into the caller's error class."""


def check_model_arguments(name: str, builder: Callable, arguments: Mapping[str, Any], error: type[UserError] =
                          ConfigError, source: str = "") -> None:
    """Refuse arguments of ``create_model(name, **arguments)`` (``builder`` is the registered builder) that it does
    not take, of another type, or out of range: one line of ``error``, naming ``source`` when given (and the fix,
    for a :class:`CheckpointError`: a file)."""
    try:
        _check(name, builder, dict(arguments))
    except ArgumentError as err:
        where = f"{source}: " if source else ""
        raise error(f"{where}{err}{FILE_FIX if issubclass(error, CheckpointError) else ''}") from None


def _check(name: str, builder: Callable, arguments: dict[str, Any]) -> None:
    norm = _registered(arguments.pop("norm", "bn"), NORMS, "norm")
    _registered(arguments.pop("conv", "standard"), CONVS, "conv")
    in_channels = arguments.pop("in_channels", 3)
    if not _is(in_channels, int) or in_channels not in (1, 3):
        raise ArgumentError(f"in_channels must be 1 or 3, got {shown(in_channels)}")
    _in_range("num_classes", arguments.pop("num_classes", 10), int)
    for key in ("mean", "std"):
        _numbers(key, arguments.pop(key, None), in_channels)
    _routes(arguments.pop("routes", ("clean", "adv")))
    norm_kwargs = arguments.pop("norm_kwargs", None) or {}
    if not isinstance(norm_kwargs, Mapping):
        raise ArgumentError(f"norm_kwargs must be a mapping of argument names to values, got {shown(norm_kwargs)}")
    _typed(f"norm {norm!r}", NORMS[norm], dict(norm_kwargs), skip_first=True)
    _typed(name, builder, arguments)


def _registered(value: Any, registry: Registry, kind: str) -> str:
    if not isinstance(value, str) or value not in registry:
        raise ArgumentError(f"unknown {kind} {shown(value)}; choose one of: {', '.join(registry)}")
    return value


def _numbers(key: str, values: Any, count: int) -> None:
    """``mean`` or ``std``: None, or one number per input channel in its range."""
    if values is None:
        return
    if not isinstance(values, Sequence) or isinstance(values, str) or len(values) != count:
        raise ArgumentError(f"{key} must be a list of {count} numbers (one per input channel), got {shown(values)}")
    for value in values:
        _in_range(key, value, float)


def _routes(routes: Any) -> None:
    if (not isinstance(routes, Sequence) or isinstance(routes, str) or not 1 <= len(routes) <= MAX_ROUTES
            or not all(isinstance(r, str) and r.isidentifier() for r in routes) or len(set(routes)) != len(routes)):
        raise ArgumentError(f"routes must be 1 to {MAX_ROUTES} distinct names like 'clean' and 'adv', got "
                            f"{shown(routes)}")


def _typed(owner: str, target: Callable, values: dict[str, Any], skip_first: bool = False) -> None:
    """Each of ``values`` names a parameter of ``target`` with a simple annotation, and has its type and range."""
    hints = _simple_parameters(target, skip_first)
    for key, value in values.items():
        if key not in hints:
            raise ArgumentError(f"{owner} takes no argument {key!r} (it takes: {', '.join(hints) or 'none'})")
        kinds = _leaves(hints[key])
        if not any(_is(value, kind) for kind in kinds):
            raise ArgumentError(f"{key} of {owner} must be {' or '.join(_word(k) for k in kinds)}, "
                                f"got {shown(value)}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            _in_range(key, value, kinds[0], owner)


def _in_range(key: str, value: Any, kind: type, owner: str = "") -> None:
    if not _is(value, kind):
        raise ArgumentError(f"{key} must be {_word(kind)}, got {shown(value)}")
    limits = ARGUMENT_RANGES.get(key)
    if limits is None:
        raise ArgumentError(f"{key} of {owner} has no declared range (robust_sabn.models.arguments.ARGUMENT_RANGES), "
                            "so it is not built from a spec")
    if not limits.contains(value):
        raise ArgumentError(limits.refusal(value, key))


def _simple_parameters(target: Callable, skip_first: bool) -> dict[str, Any]:
    """The keyword parameters of ``target`` (a function or a class) annotated with simple types only."""
    function = target.__init__ if isinstance(target, type) else target
    try:
        hints = typing.get_type_hints(function)
    except (NameError, TypeError):
        hints = {}
    parameters = [p for p in inspect.signature(target).parameters.values()
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if skip_first:
        parameters = parameters[1:]  # the channel count, which the builder passes
    return {p.name: hints[p.name] for p in parameters
            if p.name in hints and all(kind in SIMPLE_TYPES for kind in _leaves(hints[p.name]))}


def _leaves(hint: Any) -> tuple:
    """``int | None`` -> (int, NoneType); ``float`` -> (float,)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _is(value: Any, kind: type) -> bool:
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float))
    return isinstance(value, kind)


def _word(kind: type) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(kind, "null")


