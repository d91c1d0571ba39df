"""Mean and 95% confidence half-width over a few seeds (Student's t), alone or paired."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["mean_ci", "PairedCI", "paired_ci"]


def _t_half_width(values: np.ndarray, confidence: float) -> float:
    from scipy import stats

    sem = float(values.std(ddof=1) / math.sqrt(values.size))
    return float(stats.t.ppf(0.5 + confidence / 2, values.size - 1) * sem)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Tuple[float, float]:
    """``(mean, half_width)``; half-width is NaN with fewer than two values.

    With three to five seeds the normal approximation understates the
    uncertainty, hence the t-distribution.
    """
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if values.size < 2:
        return mean, math.nan
    return mean, _t_half_width(values, confidence)


@dataclass(frozen=True)
class PairedCI:
    """``second - first`` over pairs: ``n`` pairs, their mean and SD, the t half-width
    (NaN when there is no interval) and, then, why there is none."""

    n: int
    mean: float
    sd: float
    half_width: float
    why: Optional[str] = None


def paired_ci(first: Sequence[Optional[float]], second: Sequence[Optional[float]],
              confidence: float = 0.95) -> PairedCI:
    """The paired difference ``second - first`` (e.g. DGN minus GN, seed by seed) and its t interval.

    Pairs with a missing or non-finite value are left out. An interval needs at
    least two *distinct* pairs: the same pair counted twice (a seed given twice)
    adds no information but shrinks the interval, and identical differences
    give a zero-width interval that would "exclude 0" on no evidence; both are
    reported as no interval, with the reason in :attr:`PairedCI.why`.
    """
    if len(first) != len(second):
        raise ValueError(f"paired values need equal lengths, got {len(first)} and {len(second)}")
    pairs = [(float(a), float(b)) for a, b in zip(first, second)
             if a is not None and b is not None and math.isfinite(float(a)) and math.isfinite(float(b))]
    diffs = np.asarray([b - a for a, b in pairs], dtype=np.float64)
    n, mean = len(pairs), float(diffs.mean()) if pairs else math.nan
    sd = float(diffs.std(ddof=1)) if n > 1 else math.nan
    distinct = len(set(pairs))
    if distinct < 2:
        why = ("no pair" if n == 0 else "one pair" if n == 1
               else f"{n} pairs but all identical (the same seed twice?)")
        return PairedCI(n, mean, sd, math.nan, f"{why}; a CI needs 2 or more distinct pairs")
    if sd == 0.0:
        return PairedCI(n, mean, sd, math.nan, f"all {n} pairs differ by exactly {mean:+.4g}; no spread to build a CI from")
    return PairedCI(n, mean, sd, _t_half_width(diffs, confidence))
