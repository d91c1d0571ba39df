"""Mean and 95% confidence half-width over a few seeds (Student's t)."""
from __future__ import annotations

import math
from typing import Sequence, Tuple

import numpy as np

__all__ = ["mean_ci"]


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Tuple[float, float]:
    """``(mean, half_width)``; half-width is NaN with fewer than two values.

    With three to five seeds the normal approximation understates the
    uncertainty, hence the t-distribution.
    """
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean())
    if values.size < 2:
        return mean, math.nan
    sem = float(values.std(ddof=1) / math.sqrt(values.size))
    return mean, float(stats.t.ppf(0.5 + confidence / 2, values.size - 1) * sem)
