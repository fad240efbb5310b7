"""Numbers and settings as users spell them (``8/255``, ``1e-3``, ``0,2/255,4/255``, ``'{"num_classes": 10}'``),
and radii as RobustBench spells them.
Every bad value is a one-line :class:`ConfigError`; non-finite and out-of-range numbers are refused."""
from __future__ import annotations

import json
import math
from fractions import Fraction
from typing import Any

from .errors import ConfigError


def parse_number(value: Any, name: str = "value") -> float:
    """A finite float from a number or a string such as ``"8/255"``, ``"0.1"`` or ``"1e-3"``."""
    try:
        return float(_parse(value, name))
    except OverflowError:
        raise ConfigError(f"{name} is too large, got {value!r}") from None


def _parse(value: Any, name: str) -> int | float | Fraction:
    """A number from a number or its spelling, exactly when it is an integer or a fraction; finite only."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    number = value if isinstance(value, (int, float)) else _from_text(str(value).strip(), name)
    if isinstance(number, float) and not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number within float range, got {value!r}")
    return number


def _from_text(text: str, name: str) -> int | float | Fraction:
    """An integer exactly, else a float, else a fraction (last: it would expand "1e-999999" digit by digit)."""
    for convert in (int, float, Fraction):
        try:
            return convert(text)
        except (ValueError, ZeroDivisionError):
            continue
    raise ConfigError(f"{name} must be a number or a fraction like 8/255, got {text!r}")


def to_int(value: Any, name: str = "value") -> int:
    """An exact integer from a number or its spelling ("3", "3.0", "6/2")."""
    number = _parse(value, name)
    if int(number) != number:
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    return int(number)


def parse_number_list(text: str, name: str = "value") -> list[float]:
    """``"0,2/255,4/255"`` -> [0.0, 0.00784..., 0.01568...]."""
    return [parse_number(part, name) for part in str(text).split(",") if part.strip()]


def parse_json_object(text: str | None, name: str = "--model-kwargs") -> dict:
    """A JSON object such as ``'{"num_classes": 10}'`` (empty when ``text`` is empty)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{name} must be a JSON object like '{{\"num_classes\": 10}}' ({err})") from None
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
