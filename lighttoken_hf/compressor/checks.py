"""Checks of one setting each (an int, a number in a range, a bool, one of some strings): one clear error
that names the setting and what it accepts. No torch: the settings use them before any work starts."""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["check_bool", "check_choice", "check_int", "check_number"]


def _got(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` (numpy integers too, never a bool or a float), within the bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {_got(value)}")
    value = int(value)
    if minimum is not None and value < minimum or maximum is not None and value > maximum:
        bounds = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite ``float`` (an int or float, never a bool or a string) within the interval."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number (int or float), got {_got(value)}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or too_low or too_high:
        left = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        right = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        where = f"in {left}, {right}" if low is not None and high is not None else None
        where = where or (f"{'>' if low_open else '>='} {low:g}" if low is not None else f"<= {high:g}")
        raise ValueError(f"{name} must be a finite number {where}, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a ``bool`` (numpy bools too); strings such as ``"no"`` are refused, not truthy."""
    if isinstance(value, (str, bytes)) or value not in (True, False):
        raise TypeError(f"{name} must be True or False, got {_got(value)}")
    return bool(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value``, one of the strings ``choices`` (a ``torch.dtype`` is taken by its name)."""
    if type(value).__module__ == "torch" and type(value).__name__ == "dtype":  # torch.float16 -> "float16"
        value = str(value).removeprefix("torch.")
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {list(choices)}, got {_got(value)}")
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value
