"""Numbers and settings as users spell them (``8/255``, ``1e-3``, ``0,2/255,4/255``, ``'{"num_classes": 10}'``),
the ranges they must lie in, and radii as RobustBench spells them.
Every bad value is a one-line :class:`ConfigError`; non-finite and out-of-range numbers are refused."""
from __future__ import annotations

import dataclasses
import json
import math
import reprlib
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from .errors import ConfigError


def parse_number(value: Any, name: str = "value") -> float:
    """A finite float from a number or a string such as ``"8/255"``, ``"0.1"`` or ``"1e-3"``."""
    try:
        return float(_parse(value, name))
    except OverflowError:
        raise ConfigError(f"{name} is too large, got {shown(value)}") from None


def _parse(value: Any, name: str) -> int | float | Fraction:
    """A number from a number or its spelling, exactly when it is an integer or a fraction; finite only."""
    if isinstance(value, (bool, list, tuple, dict, set)):  # str() of a deeply nested list would recurse
        raise ConfigError(f"{name} must be a number, got {shown(value)}")
    number = value if isinstance(value, (int, float)) else _from_text(str(value).strip(), name)
    if isinstance(number, float) and not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number within float range, got {shown(value)}")
    return number


def _from_text(text: str, name: str) -> int | float | Fraction:
    """An integer exactly, else a float, else a fraction (last: it would expand "1e-999999" digit by digit)."""
    for convert in (int, float, Fraction):
        try:
            return convert(text)
        except (ValueError, ZeroDivisionError):
            continue
    raise ConfigError(f"{name} must be a number or a fraction like 8/255, got {shown(text)}")


def to_int(value: Any, name: str = "value") -> int:
    """An exact integer from a number or its spelling ("3", "3.0", "6/2")."""
    number = _parse(value, name)
    if int(number) != number:
        raise ConfigError(f"{name} must be an integer, got {shown(value)}")
    return int(number)


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: ``low`` to ``high``, both included unless open; whole numbers only
    when ``integer``. ``high`` may be computed when checked (e.g. from the CPU count), then ``shown`` is how the
    documentation names it. ``example`` is a good value, shown in the refusal with ``why`` (the reason for the
    bound, shown when a value exceeds it)."""

    low: float
    high: float | Callable[[], float]
    example: str
    integer: bool = False
    open_low: bool = False
    open_high: bool = False
    why: str = ""
    shown: str = ""

    def but(self, **changes: Any) -> Range:
        """This range with some fields changed: ``STEPS.but(example="7")``."""
        return dataclasses.replace(self, **changes)

    def upper(self) -> float:
        return self.high() if callable(self.high) else self.high

    def __str__(self) -> str:
        return self._interval(self.shown or _bound(self.upper()))

    def _interval(self, high: str) -> str:
        return f"{'(' if self.open_low else '['}{_bound(self.low)}, {high}{')' if self.open_high else ']'}"

    def contains(self, value: float) -> bool:
        low, high = self.low, self.upper()
        return ((low < value if self.open_low else low <= value)
                and (value < high if self.open_high else value <= high))

    def check(self, value: Any, name: str, flag: str | None = None) -> Any:
        """``value`` when it lies in the range, else a ConfigError naming ``name``, the range and an example
        (``flag`` and the example value: what to type instead)."""
        if not self.contains(value):
            raise ConfigError(f"{self.refusal(value, name)}; e.g. {flag or name} {self.example}")
        return value

    def refusal(self, value: Any, name: str) -> str:
        """"width must be an integer in [1, 1024], got 1000000 (why)": the words of a refusal."""
        kind = "an integer" if self.integer else "a number"
        interval = self._interval(_bound(self.upper())) + (f" ({self.shown})" if self.shown else "")
        why = f" ({self.why})" if self.why and value > self.low else ""  # above the range: say why it ends there
        return f"{name} must be {kind} in {interval}, got {shown(value)}{why}"

    def parse(self, text: Any, name: str) -> int | float:
        """``text`` as a number of the range's kind, checked (``name`` is the flag it was given with)."""
        return self.check(to_int(text, name) if self.integer else parse_number(text, name), name)


def _bound(value: float) -> str:
    return "inf" if value == math.inf else f"{value:g}" if isinstance(value, float) else str(value)


_SHORT = reprlib.Repr()  # it recurses no deeper than maxlevel, however deep the value
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 60, 60


def shown(value: Any) -> str:
    """A value as a one-line message shows it: huge integers by their size (``str`` refuses them past 4300 digits),
    floats short, long text and deep or long lists cut."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        return f"{'-' if value < 0 else ''}an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    if isinstance(value, float):
        return f"{value:g}"
    return _SHORT.repr(value)


def parse_number_list(text: str, name: str = "value") -> list[float]:
    """``"0,2/255,4/255"`` -> [0.0, 0.00784..., 0.01568...]."""
    return [parse_number(part, name) for part in str(text).split(",") if part.strip()]


def parse_json_object(text: str | None, name: str = "--model-kwargs") -> dict:
    """A JSON object such as ``'{"num_classes": 10}'`` (empty when ``text`` is empty)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as err:  # nested too deep; over 4300 digits
        why = str(err).splitlines()[0] if isinstance(err, json.JSONDecodeError) else "nested too deep or too long"
        raise ConfigError(f"{name} must be a JSON object like '{{\"num_classes\": 10}}' ({why})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object like '{{\"num_classes\": 10}}'")
    return value


def format_eps(eps: float, norm: str = "Linf") -> str:
    """A radius as people write it: a short decimal when it is one ("0.1", "0.5"), else "8/255" for a Linf multiple
    of 1/255 (RobustBench's spelling), else the number to six digits."""
    short = f"{eps:.4g}"
    if float(short) == eps:
        return short
    if norm == "Linf" and eps > 0 and math.isclose(eps * 255, round(eps * 255), abs_tol=1e-6):
        return f"{round(eps * 255)}/255"
    return f"{float(Fraction(eps).limit_denominator(10**6)):g}"
