"""One small registry pattern for everything chosen by name: norms, convolutions, models, objectives, datasets
and evaluation attacks. A name is registered once (a second registration is an error, not a silent overwrite) and
an unknown name is a one-line error listing the known ones."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from .errors import ConfigError

T = TypeVar("T")
V = TypeVar("V")


def choose(value: V, options: Iterable[V], kind: str) -> V:
    """``value`` when it is one of ``options``; else the one-line error every named choice gives
    (``unknown <kind> 'x'; choose one of: a, b``)."""
    options = list(options)
    if any(value == option for option in options):
        return value
    raise ConfigError(f"unknown {kind} {value!r}; choose one of: {', '.join(map(str, options))}")


class Registry(Generic[T]):
    """Names to entries, in registration order.

    ``REGISTRY.register("name", entry)`` registers; as a decorator, ``@REGISTRY.register()`` registers the
    decorated object under its ``__name__`` (or ``@REGISTRY.register("name")`` under that name).
    ``REGISTRY["name"]`` looks an entry up, ``"name" in REGISTRY`` and ``list(REGISTRY)`` (the names) work as for
    a dict.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind  # what an entry is, for messages: "model", "norm", ...
        self._entries: dict[str, T] = {}

    def register(self, name: str | None = None, entry: T | None = None) -> Callable[[T], T] | T:
        if entry is not None:
            return self._add(name, entry)
        return lambda obj: self._add(name or obj.__name__, obj)

    def _add(self, name: str | None, entry: T) -> T:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._entries:
            raise ConfigError(f"a {self.kind} named {name!r} is registered already; choose another name")
        self._entries[name] = entry
        return entry

    def __getitem__(self, name: str) -> T:
        return self._entries[choose(name, self._entries, self.kind)]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def items(self):
        return self._entries.items()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._entries)})"
