"""The one form of a refused setting: `<field>=<value> is not allowed: <what is allowed>.`

The validators beside the code they guard (`schedules`, `controller`, `losses`) raise through these helpers, and
`CEGPPOConfig` and the entropy-control callbacks call the same validators, so a bad value gets the same message
whichever way it comes in.

Example:
    >>> check_range("epsilon", 1.5, 0.0, 1.0)
    Traceback (most recent call last):
    ...
    ValueError: epsilon=1.5 is not allowed: expected 0.0 <= epsilon < 1.0.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn


def fail(name: str, value: Any, allowed: str) -> NoReturn:
    raise ValueError(f"{name}={value!r} is not allowed: {allowed}.")


def check_finite(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        fail(name, value, "expected a finite number")


def check_range(name: str, value: float, low: float, high: float, *, high_open: bool = True) -> None:
    check_finite(name, value)
    if value < low or (value >= high if high_open else value > high):
        fail(name, value, f"expected {low} <= {name} {'<' if high_open else '<='} {high}")
