"""Means, standard errors, paired differences and the one verdict rule every study's claims use.

A claim holds (`HOLDS`) or fails (`FAILS`) when its measured difference is more than `k` standard errors from 0 with
the claimed (or the opposite) sign, and is `UNRESOLVED` otherwise.

Example:
    >>> mean_se([1.0, 2.0, 3.0])
    (2.0, 0.5773502691896258)
    >>> verdict(paired_differences([1.0, 2.0, 3.0], [0.0, 0.5, 1.0]), expected_sign=1)
    'holds'
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

HOLDS, FAILS, UNRESOLVED = "holds", "does not hold", "not resolved (difference within 2 standard errors)"


def mean_se(values: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error of the mean); NaN for an empty list or one holding NaN, SE NaN for a single value."""
    values = list(values)
    if not values or any(math.isnan(v) for v in values):
        return float("nan"), float("nan")
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return statistics.fmean(values), se


def paired_differences(high: Sequence[float], low: Sequence[float], absolute: bool = False) -> list[float]:
    """`high[i] - low[i]` for each pair (same seed or same frozen batch), of absolute values with `absolute`."""
    f = abs if absolute else (lambda x: x)
    return [f(a) - f(b) for a, b in zip(high, low, strict=True)]


def paired(high: Sequence[float], low: Sequence[float], absolute: bool = False) -> tuple[float, float]:
    """(mean, SE) of the paired differences: free of the spread that the pairs share."""
    return mean_se(paired_differences(high, low, absolute))


def sign_counts(values: Sequence[float]) -> list[int]:
    """[how many are < 0, how many are > 0]: the sign test beside a mean."""
    return [sum(v < 0 for v in values), sum(v > 0 for v in values)]


def sign_of(pair: Sequence[float], k: float = 2.0) -> int:
    """-1 / +1 when `(mean, se)` is more than `k` standard errors below / above 0, else 0."""
    mean, se = pair
    if math.isnan(mean) or math.isnan(se) or abs(mean) <= k * se:
        return 0
    return 1 if mean > 0 else -1


def verdict(pair: Sequence[float], expected_sign: int, k: float = 2.0) -> str:
    """`HOLDS` if `(mean, se)` is beyond `k` SE with `expected_sign`, `FAILS` if beyond with the other, else
    `UNRESOLVED`."""
    measured = sign_of(pair, k)
    return UNRESOLVED if measured == 0 else (HOLDS if measured == expected_sign else FAILS)


def combine(verdicts: Sequence[str]) -> str:
    """A claim made of several comparisons: fails if one fails, holds if all hold, else unresolved."""
    return FAILS if FAILS in verdicts else HOLDS if all(v == HOLDS for v in verdicts) else UNRESOLVED


def pearson_slope(x: Sequence[float], y: Sequence[float]) -> tuple[float, float, float]:
    """(Pearson r, least-squares slope of y on x, intercept)."""
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxx = sum((a - mx) ** 2 for a in x)
    syy = sum((b - my) ** 2 for b in y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    r = sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")
    slope = sxy / sxx if sxx > 0 else float("nan")
    return r, slope, my - slope * mx


def cell(pair: Sequence[float], digits: int = 3, sep: str = " ± ") -> str:
    """`mean ± se` for a table cell; `n/a` for a NaN mean, the mean alone for a NaN SE."""
    mean, se = pair
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if math.isnan(se) else f"{mean:.{digits}f}{sep}{se:.{digits}f}"
