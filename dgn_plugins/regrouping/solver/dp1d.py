"""The exact 1-D solver: an optimal size-bounded partition is contiguous in sorted order."""
from __future__ import annotations

import numpy as np

__all__ = ["optimal_1d_labels"]


def optimal_1d_labels(values, n_clusters, size_min, size_max) -> np.ndarray:
    """Globally optimal contiguous partition of the sorted values (O(k * n * (H - L + 1)))."""
    n = values.size
    order = np.argsort(values, kind="stable")
    x = values[order] - values.mean()
    s1 = np.concatenate(([0.0], np.cumsum(x)))
    s2 = np.concatenate(([0.0], np.cumsum(x * x)))
    seg_sizes = np.arange(size_min, size_max + 1)
    best = np.full(n + 1, np.inf)
    best[0] = 0.0
    choice = np.zeros((n_clusters + 1, n + 1), dtype=np.int64)
    max_cells = 1 << 22  # bound the (ends x sizes) work matrix
    for j in range(1, n_clusters + 1):
        lo = max(j * size_min, n - (n_clusters - j) * size_max)
        hi = min(j * size_max, n - (n_clusters - j) * size_min)
        new = np.full(n + 1, np.inf)
        step = max(1, max_cells // seg_sizes.size)
        for first in range(lo, hi + 1, step):
            ends = np.arange(first, min(hi, first + step - 1) + 1)
            starts = ends[:, None] - seg_sizes[None, :]
            safe = np.maximum(starts, 0)
            seg_sum = s1[ends][:, None] - s1[safe]
            sse = s2[ends][:, None] - s2[safe] - seg_sum * seg_sum / seg_sizes
            total = np.where(starts >= 0, best[safe] + np.maximum(sse, 0.0), np.inf)
            pick = total.argmin(axis=1)
            new[ends] = total[np.arange(ends.size), pick]
            choice[j, ends] = seg_sizes[pick]
        best = new
    labels_sorted = np.empty(n, dtype=np.int64)
    end = n
    for j in range(n_clusters, 0, -1):
        size = choice[j, end]
        labels_sorted[end - size:end] = j - 1
        end -= size
    labels = np.empty(n, dtype=np.int64)
    labels[order] = labels_sorted
    return labels
