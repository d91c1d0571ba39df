"""What the solver's parts share: the compiled inner loops, argument checks, cluster arithmetic."""
from __future__ import annotations

import functools
import os

import numpy as np


def _compiled():
    """The compiled inner loops (``dgn_plugins/csrc/kmeans_cpu.cpp``), or None.

    The extension is optional (built by ``pip install --no-build-isolation``);
    ``DGN_KMEANS_NATIVE=0`` forces the numpy code, which is the reference.
    """
    if os.environ.get("DGN_KMEANS_NATIVE", "1").strip() == "0":
        return None
    return _load_extension()


@functools.lru_cache(maxsize=None)
def _load_extension():
    try:
        from ... import _kmeans
    except ImportError:  # not built, or built against another torch
        return None
    return _kmeans


def _as_points(X) -> np.ndarray:
    try:
        points = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"X must be a numeric array: {err}") from None
    if points.ndim == 1:
        points = points[:, None]
    if points.ndim != 2:
        raise ValueError(f"X must have shape (n,) or (n, d), got {points.shape}")
    if points.shape[0] == 0 or points.shape[1] == 0:
        raise ValueError(f"X must have at least one point and one feature, got {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("X contains NaN or infinite values")
    return np.ascontiguousarray(points)


def _check_count(value, name="n_clusters") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _check_bounds(n_points, n_clusters, size_min, size_max):
    for name, value in (("n_clusters", n_clusters), ("size_min", size_min), ("size_max", size_max)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    k, low, high = int(n_clusters), int(size_min), int(size_max)
    if k < 1 or low < 1 or low > high or k * low > n_points or k * high < n_points:
        raise ValueError(
            f"infeasible size bounds: n={n_points}, k={k}, size_min={low}, size_max={high}; "
            f"need k >= 1, 1 <= size_min <= size_max and k*size_min <= n <= k*size_max")
    return k, low, high


def _check_labels(labels, n_points, n_clusters, size_min, size_max) -> np.ndarray:
    raw = np.asarray(labels)
    if raw.shape != (n_points,):
        raise ValueError(f"labels must have shape ({n_points},), got {raw.shape}")
    if raw.dtype.kind not in "iu":
        if raw.dtype.kind != "f" or not np.isfinite(raw).all() or (raw != np.round(raw)).any():
            raise ValueError("labels must be integers")
    out = raw.astype(np.int64)
    if out.min() < 0 or out.max() >= n_clusters:
        raise ValueError(f"labels must lie in [0, {n_clusters}), got range [{out.min()}, {out.max()}]")
    if size_min is not None:
        sizes = np.bincount(out, minlength=n_clusters)
        if sizes.min() < size_min or sizes.max() > size_max:
            raise ValueError(f"init_labels violate the size bounds [{size_min}, {size_max}]: "
                             f"cluster sizes range over [{sizes.min()}, {sizes.max()}]")
    return out


def _cluster_means(points, labels, n_clusters) -> np.ndarray:
    sizes = np.bincount(labels, minlength=n_clusters).astype(np.float64)
    sums = np.stack([np.bincount(labels, weights=points[:, j], minlength=n_clusters)
                     for j in range(points.shape[1])], axis=1)
    return sums / np.maximum(sizes, 1.0)[:, None]


def _inertia(points, labels, centers) -> float:
    return float(((points - centers[labels]) ** 2).sum())


def _squared_distances(points, centers) -> np.ndarray:
    """Column-by-feature accumulation: exact in float64 and cheap for the small d we see."""
    out = np.subtract.outer(points[:, 0], centers[:, 0])
    np.square(out, out=out)
    for j in range(1, points.shape[1]):
        diff = np.subtract.outer(points[:, j], centers[:, j])
        np.square(diff, out=diff)
        out += diff
    return out
