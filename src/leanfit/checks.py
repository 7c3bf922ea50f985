"""Validators of scalar parameters shared by every package.

Each returns the value in its plain Python type when it is acceptable and otherwise raises
:func:`~leanfit.exceptions.bad_value` for ``name``: the error carries the parameter, the value
and what is allowed. ``True`` and ``False`` are never accepted as numbers; numpy scalars are.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import TypeVar

from leanfit.exceptions import bad_value

T = TypeVar("T")


def is_int(value: object) -> bool:
    """Whether ``value`` is an integer (Python or numpy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """Whether ``value`` is a real number (Python or numpy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_int(name: str, value: object, *, low: int, high: int | None = None) -> int:
    """``value`` as an int if it is an integer in ``[low, high]`` (no upper bound when
    ``high`` is None).

    Raises
    ------
    BadInputError
        ``name must be an int >= low`` (or ``in [low, high]``).
    """
    allowed = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
    if not is_int(value):
        raise bad_value(name, value, allowed)
    number = int(value)  # type: ignore[call-overload]
    if number < low or (high is not None and number > high):
        raise bad_value(name, value, allowed)
    return number


def check_number(
    name: str, value: object, *, low: float | None = None, above: bool = False
) -> float:
    """``value`` as a float if it is a finite number, at least ``low`` (above it when
    ``above``).

    Raises
    ------
    BadInputError
        ``name must be a finite number > low`` (or ``>= low``, or just finite).
    """
    bound = "" if low is None else f" {'>' if above else '>='} {low:g}"
    if not is_number(value) or not math.isfinite(value):  # type: ignore[arg-type]
        raise bad_value(name, value, f"a finite number{bound}")
    number = float(value)  # type: ignore[arg-type]
    if low is not None and (number <= low if above else number < low):
        raise bad_value(name, value, f"a finite number{bound}")
    return number


def check_fraction(name: str, value: object, *, ends: str = "[]") -> float:
    """``value`` as a float if it is in the interval from 0 to 1 whose brackets are ``ends``.

    Parameters
    ----------
    ends : {"[]", "()", "(]", "[)"}
        The interval as written in mathematics: ``"[]"`` is ``0 <= value <= 1``, ``"()"``
        ``0 < value < 1``, ``"(]"`` ``0 < value <= 1`` (a share of rows, all of them allowed)
        and ``"[)"`` ``0 <= value < 1``.

    Raises
    ------
    BadInputError
        ``name must be a number in [0, 1]`` (``in the open interval (0, 1)``, ``in (0, 1]``,
        ``in [0, 1)``).
    """
    low, high = ends[0], ends[1]
    interval = f"the open interval {low}0, 1{high}" if ends == "()" else f"{low}0, 1{high}"
    allowed = f"a number in {interval}"
    if not is_number(value):
        raise bad_value(name, value, allowed)
    number = float(value)  # type: ignore[arg-type]
    above_low = number >= 0.0 if low == "[" else number > 0.0
    below_high = number <= 1.0 if high == "]" else number < 1.0
    if not (above_low and below_high):
        raise bad_value(name, value, allowed)
    return number


def check_choice(name: str, value: T, choices: Sequence[T]) -> T:
    """``value`` if it is one of ``choices``.

    Raises
    ------
    BadInputError
        ``name must be one of [choices]``.
    """
    if value not in choices:
        raise bad_value(name, value, f"one of {list(choices)}")
    return value
