"""Argument checks shared by every constructor: each names the argument, what was expected and what came.

Hyperparameters must be finite numbers (``inf`` / ``nan`` are rejected, bools are not numbers), ints must be
real ints: a bad value fails at construction, never as a NaN at the first step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["check_int", "check_float", "check_choice", "check_bool", "check_int_sequence"]


def check_int(name: str, value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int in ``[minimum, maximum]`` (bounds optional); raises TypeError / ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise TypeError(f"{name}: expected an int{bound}, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected an int >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: expected an int <= {maximum}, got {value}")
    return value


def check_float(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite float within the bounds (``low_open`` / ``high_open`` exclude the bound)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a finite float, got {value!r} ({type(value).__name__})")
    v = float(value)
    lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
    hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
    where = f" in {lo or '(-inf'}, {hi or 'inf)'}" if (low is not None or high is not None) else ""
    if not math.isfinite(v):
        raise ValueError(f"{name}: expected a finite float{where}, got {value!r}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{name}: expected a float{where}, got {value!r}")
    if high is not None and (v > high or (high_open and v == high)):
        raise ValueError(f"{name}: expected a float{where}, got {value!r}")
    return v


def check_choice(name: str, value: object, choices: Sequence[object]) -> object:
    """``value`` if it is one of ``choices``."""
    if value not in tuple(choices):
        raise ValueError(f"{name}: expected one of {tuple(choices)}, got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    """``value`` if it is a bool (not 0/1, not None)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r} ({type(value).__name__})")
    return value


def check_int_sequence(name: str, values: object, minimum: int) -> tuple[int, ...]:
    """A non-empty sequence of ints >= ``minimum`` as a tuple."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{name}: expected a sequence of ints >= {minimum}, got {values!r}")
    if len(values) == 0:
        raise ValueError(f"{name}: expected a non-empty sequence of ints >= {minimum}, got {list(values)}")
    return tuple(check_int(f"{name}[{i}]", v, minimum) for i, v in enumerate(values))
