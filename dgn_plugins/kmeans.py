"""Size-constrained k-means: every cluster gets between ``size_min`` and ``size_max`` points.

The DGN regrouping rule re-clusters channels by standardised per-channel
statistics under fixed group-size bounds, which plain k-means does not keep.

* ``d == 1``: an optimal bounded partition is contiguous in sorted order, so a
  dynamic programme over the sorted values returns the global optimum.
* ``d > 1``: Lloyd iterations from k-means++ starts, the assignment step solved
  exactly as a transportation problem (warm-started successive shortest paths),
  then local search (Hartigan moves, swaps, random-swap relocations). Why this
  solver and not a library one: docs/design.md, "The k-means solver".
"""
from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

__all__ = [
    "ConstrainedKMeansResult",
    "constrained_assignment",
    "auto_relocations",
    "auto_starts",
    "inertia_of",
    "size_constrained_kmeans",
]


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
        from . import _kmeans
    except ImportError:  # not built, or built against another torch
        return None
    return _kmeans


@dataclass(frozen=True)
class ConstrainedKMeansResult:
    labels: np.ndarray  # (n,) int64, values in [0, n_clusters)
    centers: np.ndarray  # (n_clusters, d) float64
    inertia: float  # sum of squared distances of points to their cluster centre
    n_iter: int  # Lloyd iterations of the returned run (0 for the exact 1-D solver)


def size_constrained_kmeans(X, n_clusters, size_min, size_max, *, n_init="auto", max_iter=300,
                            tol=1e-4, seed=0, init_labels=None,
                            n_relocations="auto") -> ConstrainedKMeansResult:
    """Cluster the rows of ``X`` into ``n_clusters`` groups with sizes in ``[size_min, size_max]``.

    ``n_init="auto"`` and ``n_relocations="auto"`` spend more effort the smaller the
    problem (3 starts and 15 trials at n * k >= 2**18, e.g. 2048 points in 128 clusters;
    up to 30 starts and 60 trials for a few hundred points): small, tightly bounded
    problems have many local optima, and there the effort costs little.
    ``tol`` is relative, as in scikit-learn: a run stops once the summed squared centre
    shift is at most ``tol`` times the mean per-feature variance (or once the labels
    stop changing).  ``init_labels``, a feasible labelling, is one more starting point,
    so the result is never worse than it.  The result is deterministic given ``seed``.

    For ``d > 1`` the best of the ``n_init`` (+ ``init_labels``) runs is then improved by
    ``n_relocations`` "random swap" trials: one centre of the best solution so far jumps
    to a point drawn with probability proportional to its squared distance to its own
    centre, a few warm-started Lloyd steps follow, and the trial is kept only if it lowers
    the inertia.  Lloyd alone cannot move a centre across the data (how many clusters a
    dense region gets is fixed by the start); these jumps can, and they are cheap.
    """
    points = _as_points(X)
    n_points, n_features = points.shape
    n_clusters, size_min, size_max = _check_bounds(n_points, n_clusters, size_min, size_max)
    if n_init == "auto":
        n_init = auto_starts(n_points, n_clusters)
    if isinstance(n_init, bool) or not isinstance(n_init, (int, np.integer)) or n_init < 1:
        raise ValueError(f"n_init must be a positive integer or 'auto', got {n_init!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not (isinstance(tol, (int, float, np.floating, np.integer)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    if n_relocations == "auto":
        n_relocations = auto_relocations(n_points, n_clusters)
    if (isinstance(n_relocations, bool) or not isinstance(n_relocations, (int, np.integer))
            or n_relocations < 0):
        raise ValueError(f"n_relocations must be an integer >= 0 or 'auto', got {n_relocations!r}")
    if init_labels is not None:
        init_labels = _check_labels(init_labels, n_points, n_clusters, size_min, size_max)

    if n_features == 1:
        labels = _optimal_1d_labels(points[:, 0], n_clusters, size_min, size_max)
        return _result(points, labels, n_clusters, n_iter=0)

    shift_tol = float(tol) * float(points.var(axis=0).mean())
    rng = np.random.default_rng(seed)
    best, best_potentials = None, None
    starts = ([init_labels] if init_labels is not None else []) + [None] * int(n_init)
    for start in starts:
        if start is None:
            centers = _kmeans_plus_plus(points, n_clusters, rng)
        else:
            centers = _cluster_means(points, start, n_clusters)
        run, potentials = _lloyd(points, centers, start, size_min, size_max, max_iter, shift_tol)
        if best is None or run.inertia < best.inertia:
            best, best_potentials = run, potentials
    best, best_potentials = _refine(points, best, best_potentials, size_min, size_max, max_iter,
                                    shift_tol)
    return _relocate(points, best, best_potentials, int(n_relocations), rng, size_min, size_max,
                     max_iter, shift_tol)


def auto_starts(n_points: int, n_clusters: int) -> int:
    """The number of k-means++ starts ``n_init="auto"`` makes: about a fixed amount of work."""
    return int(np.clip((1 << 19) // max(1, n_points * n_clusters), 3, 30))


def auto_relocations(n_points: int, n_clusters: int) -> int:
    """The number of relocation trials ``n_relocations="auto"`` makes."""
    return int(np.clip((1 << 20) // max(1, n_points * n_clusters), 15, 60))


def inertia_of(X, labels, n_clusters) -> float:
    """Sum of squared distances of the points to the mean of their cluster."""
    points = _as_points(X)
    n_clusters = _check_count(n_clusters)
    labels = _check_labels(labels, points.shape[0], n_clusters, None, None)
    return _inertia(points, labels, _cluster_means(points, labels, n_clusters))


def constrained_assignment(sq_distances, size_min, size_max, *, potentials=None,
                           previous_labels=None):
    """Exact min-cost assignment of n points to k clusters with loads in ``[size_min, size_max]``.

    ``sq_distances[i, j]`` is the cost of putting point i in cluster j.  Returns
    ``(labels, potentials)``: the optimal labels and the cluster prices that certify
    them (every point sits in a cluster minimising ``cost - potential``; a cluster with
    a positive price is at ``size_min``, one with a negative price at ``size_max``).
    Pass both back in the next call to warm-start it; ``previous_labels`` only breaks ties.
    """
    cost = np.asarray(sq_distances, dtype=np.float64)
    if cost.ndim != 2 or cost.shape[0] < 1 or cost.shape[1] < 1:
        raise ValueError(f"sq_distances must be a non-empty 2-D array, got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("sq_distances must be finite")
    n_points, n_clusters = cost.shape
    n_clusters, size_min, size_max = _check_bounds(n_points, n_clusters, size_min, size_max)
    if potentials is not None:
        potentials = np.asarray(potentials, dtype=np.float64)
        if potentials.shape != (n_clusters,) or not np.isfinite(potentials).all():
            raise ValueError(f"potentials must be {n_clusters} finite numbers")
    if previous_labels is not None:
        previous_labels = _check_labels(previous_labels, n_points, n_clusters, None, None)
    compiled = _compiled()
    if compiled is not None:
        return compiled.assign(np.ascontiguousarray(cost), size_min, size_max, potentials, previous_labels)
    return _Transport(cost, size_min, size_max, potentials, previous_labels).solve()


# --------------------------------------------------------------------------- checks

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


# --------------------------------------------------------------------------- helpers

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


def _result(points, labels, n_clusters, n_iter) -> ConstrainedKMeansResult:
    centers = _cluster_means(points, labels, n_clusters)
    return ConstrainedKMeansResult(labels=labels.astype(np.int64), centers=centers,
                                   inertia=_inertia(points, labels, centers), n_iter=int(n_iter))


# --------------------------------------------------------------------------- 1-D: exact DP

def _optimal_1d_labels(values, n_clusters, size_min, size_max) -> np.ndarray:
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


# --------------------------------------------------------------------------- d > 1: Lloyd

def _kmeans_plus_plus(points, n_clusters, rng) -> np.ndarray:
    """Greedy k-means++ (the scikit-learn variant: best of 2 + log k candidates per centre)."""
    n = points.shape[0]
    trials = 2 + int(np.log(n_clusters))
    centers = np.empty((n_clusters, points.shape[1]))
    centers[0] = points[rng.integers(n)]
    closest = ((points - centers[0]) ** 2).sum(axis=1)
    for c in range(1, n_clusters):
        total = closest.sum()
        if total > 0.0:
            picks = np.searchsorted(np.cumsum(closest), rng.random(trials) * total, side="right")
            picks = np.minimum(picks, n - 1)
        else:  # every point already coincides with a centre
            picks = rng.integers(n, size=trials)
        candidate = np.minimum(closest[:, None], _squared_distances(points, points[picks]))
        best = int(candidate.sum(axis=0).argmin())
        centers[c] = points[picks[best]]
        closest = candidate[:, best]
    return centers


def _lloyd(points, centers, prev_labels, size_min, size_max, max_iter, shift_tol, potentials=None):
    """One Lloyd run with exact constrained assignments: (best iterate, last prices)."""
    n_clusters = centers.shape[0]
    compiled = _compiled()
    if compiled is not None:
        labels, _, _, n_iter, potentials = compiled.lloyd(
            points, np.ascontiguousarray(centers), prev_labels, size_min, size_max, max_iter, shift_tol,
            potentials)
        # centres and inertia as the numpy code sums them, so results compare exactly
        centers = _cluster_means(points, labels, n_clusters)
        run = ConstrainedKMeansResult(labels, centers, _inertia(points, labels, centers), int(n_iter))
        return run, potentials
    best = None
    if prev_labels is not None:  # a start from labels counts as an iterate
        best = ConstrainedKMeansResult(prev_labels, centers, _inertia(points, prev_labels, centers), 0)
    for iteration in range(1, max_iter + 1):
        cost = _squared_distances(points, centers)
        labels, potentials = _Transport(cost, size_min, size_max, potentials, prev_labels).solve()
        new_centers = _cluster_means(points, labels, n_clusters)
        inertia = _inertia(points, labels, new_centers)
        if best is None or inertia <= best.inertia:
            best = ConstrainedKMeansResult(labels, new_centers, inertia, iteration)
        shift = float(((new_centers - centers) ** 2).sum())
        centers = new_centers
        if (prev_labels is not None and np.array_equal(labels, prev_labels)) or shift <= shift_tol:
            break
        prev_labels = labels
    return best, potentials


def _refine(points, run, potentials, size_min, size_max, max_iter, shift_tol, max_rounds=20):
    """Alternate exchange descent and warm-started Lloyd until neither lowers the inertia.

    A Lloyd fixed point can still be improved by moving or swapping single points once
    the centre shifts are counted (Hartigan's rule); after such exchanges the centres
    move, so Lloyd may improve again.  Both steps are monotone; a round that gains less
    than ``1e-9`` of the inertia ends the loop (exchanges and Lloyd's tie-breaking can
    otherwise trade rounding-level gains for many rounds).
    """
    n_clusters = run.centers.shape[0]
    n_iter = run.n_iter
    for _ in range(max_rounds):
        exchanged = _exchange_descent(points, run.labels, n_clusters, size_min, size_max)
        centers = _cluster_means(points, exchanged, n_clusters)
        if _inertia(points, exchanged, centers) >= run.inertia * (1.0 - 1e-9):
            break
        again, potentials = _lloyd(points, centers, exchanged, size_min, size_max, max_iter,
                                   shift_tol, potentials)
        n_iter += again.n_iter
        run = ConstrainedKMeansResult(again.labels, again.centers, again.inertia, n_iter)
    return run, potentials


def _relocate(points, run, potentials, n_trials, rng, size_min, size_max, max_iter, shift_tol,
              trial_iter=6):
    """Random-swap descent: move one centre elsewhere, run a short warm Lloyd, keep if better.

    The other clusters keep their prices (a valid warm start: any prices are), the moved
    one starts at price 0.  An accepted trial is run on to a Lloyd fixed point and refined,
    so the result stays a fixed point of both Lloyd and the exchange descent.
    """
    n_points, n_clusters = points.shape[0], run.centers.shape[0]
    if n_clusters < 2:
        return run
    if potentials is None:
        potentials = np.zeros(n_clusters)
    for _ in range(n_trials):
        residual = ((points - run.centers[run.labels]) ** 2).sum(axis=1)
        total = residual.sum()
        if total <= 0.0:
            break  # every point sits on its centre: nothing to improve
        point = min(int(np.searchsorted(np.cumsum(residual), rng.random() * total, side="right")),
                    n_points - 1)
        moved = int(rng.integers(n_clusters))
        centers = run.centers.copy()
        centers[moved] = points[point]
        prices = potentials.copy()
        prices[moved] = 0.0
        trial, prices = _lloyd(points, centers, None, size_min, size_max,
                               min(max_iter, trial_iter), shift_tol, prices)
        if trial.inertia >= run.inertia:
            continue
        if trial.n_iter == min(max_iter, trial_iter):  # cut short: finish the Lloyd run
            trial, prices = _lloyd(points, trial.centers, trial.labels, size_min, size_max,
                                   max_iter, shift_tol, prices)
        trial = ConstrainedKMeansResult(trial.labels, trial.centers, trial.inertia,
                                        run.n_iter + trial.n_iter)
        run, potentials = _refine(points, trial, prices, size_min, size_max, max_iter, shift_tol)
    return run


def _exchange_descent(points, labels, n_clusters, size_min, size_max, neighbours=8,
                      max_batches=10_000):
    """Hartigan moves and two-point swaps with exact gains, applied in conflict-free batches.

    Moving x from a to b changes the inertia by ``s_b/(s_b+1)|x-c_b|^2 - s_a/(s_a-1)|x-c_a|^2``;
    swapping x (in a) with y (in b) by ``|y-c_a|^2 - |x-c_a|^2 - |x-y|^2/s_a`` plus the mirror
    term for b.  Swaps are searched between each cluster and its nearest ``neighbours``.
    A batch touches every cluster at most once, so its gains add up exactly.  (The
    compiled version applies improving moves and swaps one at a time instead.)
    """
    compiled = _compiled()
    if compiled is not None:
        return compiled.exchange(points, labels, n_clusters, size_min, size_max, neighbours)
    k, n = n_clusters, points.shape[0]
    rows = np.arange(n)
    labels = labels.copy()
    sizes = np.bincount(labels, minlength=k).astype(np.float64)
    centers = _cluster_means(points, labels, k)
    eps = 1e-12 * max(_inertia(points, labels, centers), np.finfo(float).tiny)
    changed = np.ones(k, dtype=bool)  # swap gains only change for pairs touching these
    for _ in range(max_batches):
        dist = _squared_distances(points, centers)
        own = dist[rows, labels]
        own_size = sizes[labels]
        join = dist * (sizes / (sizes + 1.0))
        join[:, sizes >= size_max] = np.inf
        join[rows, labels] = np.inf
        target = join.argmin(axis=1)
        move_gain = join[rows, target] - own_size / np.maximum(own_size - 1.0, 1.0) * own
        move_gain[own_size <= size_min] = np.inf
        movers = np.flatnonzero(move_gain < -eps)
        swap_i, swap_j, swap_gain = _best_swaps(points, labels, sizes, centers, dist, own,
                                                min(k - 1, neighbours), eps, changed)
        gains = np.concatenate([move_gain[movers], swap_gain])
        if gains.size == 0:
            break
        touched = np.zeros(k, dtype=bool)
        for pick in np.argsort(gains, kind="stable"):
            if pick < movers.size:
                i = movers[pick]
                a, b = labels[i], target[i]
            else:
                i, j = swap_i[pick - movers.size], swap_j[pick - movers.size]
                a, b = labels[i], labels[j]
            if touched[a] or touched[b]:
                continue
            touched[a] = touched[b] = True
            if pick < movers.size:
                labels[i] = b
                sizes[a] -= 1.0
                sizes[b] += 1.0
            else:
                labels[i], labels[j] = b, a
        centers = _cluster_means(points, labels, k)
        changed = touched
    return labels


def _best_swaps(points, labels, sizes, centers, dist, own, neighbours, eps, changed,
                max_pairs=1 << 21):
    """The best improving swap for each pair of neighbouring clusters, at least one of them
    ``changed`` since the last search: (i, j, gain) arrays."""
    k = centers.shape[0]
    empty = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0))
    if neighbours < 1:
        return empty
    centre_dist = _squared_distances(centers, centers)
    np.fill_diagonal(centre_dist, np.inf)
    near = np.argpartition(centre_dist, neighbours - 1, axis=1)[:, :neighbours]
    pairs = np.unique(np.sort(np.stack([np.repeat(np.arange(k), neighbours), near.ravel()], 1),
                              axis=1), axis=0)
    pairs = pairs[changed[pairs[:, 0]] | changed[pairs[:, 1]]]
    if pairs.size == 0:
        return empty
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=k)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    found = [empty]
    for pair_slice in _chunks(counts[pairs[:, 0]] * counts[pairs[:, 1]], max_pairs):
        batch = pairs[pair_slice]
        a, b = batch[:, 0], batch[:, 1]
        per_pair = counts[a] * counts[b]
        pair_id = np.repeat(np.arange(batch.shape[0]), per_pair)
        offset = np.arange(per_pair.sum()) - np.repeat(np.cumsum(per_pair) - per_pair, per_pair)
        width = counts[b][pair_id]
        i = order[first[a][pair_id] + offset // width]
        j = order[first[b][pair_id] + offset % width]
        ca, cb = a[pair_id], b[pair_id]
        close = ((points[i] - points[j]) ** 2).sum(axis=1)
        gain = (dist[j, ca] - own[i] + dist[i, cb] - own[j]
                - close * (1.0 / sizes[ca] + 1.0 / sizes[cb]))
        seg_start = np.cumsum(per_pair) - per_pair
        best = np.minimum.reduceat(gain, seg_start)
        good = best < -eps
        if good.any():
            hit = np.flatnonzero((gain == best[pair_id]) & good[pair_id])
            _, first_hit = np.unique(pair_id[hit], return_index=True)
            hit = hit[first_hit]
            found.append((i[hit], j[hit], gain[hit]))
    return tuple(np.concatenate(parts) for parts in zip(*found))


def _chunks(weights, limit):
    """Consecutive slices of ``weights`` whose sums stay under ``limit`` (at least one item)."""
    if weights.sum() <= limit:
        yield slice(0, len(weights))
        return
    start, total = 0, 0
    for index, weight in enumerate(weights):
        if index > start and total + weight > limit:
            yield slice(start, index)
            start, total = index, 0
        total += weight
    if start < len(weights):
        yield slice(start, len(weights))


_COARSE_MIN_POINTS = 256  # smallest sub-problem worth solving for a cold start's prices


class _Transport:
    """Successive shortest paths for the size-bounded assignment, on a (k + 1)-node graph.

    Nodes are the k clusters plus a slack node ``T``: ``load_j = size_min + overflow_j``
    with ``0 <= overflow_j <= size_max - size_min``, and T collects all overflow.  Moving
    a point from cluster a to b is an edge a -> b whose cost is the cheapest such move
    (``min_i cost[i, b] - cost[i, a]`` over i in a); raising or lowering ``overflow_j``
    are the edges j -> T and T -> j, at zero cost.

    Invariant (reduced-cost optimality): with node prices P, every residual edge has
    ``cost + P[tail] - P[head] >= 0``.  For point edges this means each point sits in a
    cluster minimising ``cost[i, j] - P[j]``.  The start takes the greedy labels for the
    given prices, which leaves some clusters above or below their bounds ("excess").
    Rounds then alternate: every over-full cluster pushes one unit along a shortest
    path to T or to an under-full cluster, or every under-full cluster pulls one.  A
    Dijkstra pass updates the prices so that all those tree paths have zero reduced
    cost; disjoint ones are applied together.  Once no cluster has excess the labels
    are optimal, certified by the prices.
    """

    def __init__(self, cost, size_min, size_max, potentials, previous_labels):
        self.cost = cost
        self.n_points, self.n_clusters = cost.shape
        self.size_min = size_min
        self.room = size_max - size_min
        self.tol = 1e-12 * max(1.0, float(np.abs(cost).max()))
        self.previous_labels = previous_labels
        self.start_prices = potentials

    # -- start -------------------------------------------------------------
    def _greedy_start(self, prices):
        """Greedy labels for ``prices``, then the overflow the invariant forces on each cluster."""
        reduced = self.cost - prices
        labels = reduced.argmin(axis=1)
        if self.previous_labels is not None:  # among equal reduced costs keep the old label
            rows = np.arange(self.n_points)
            kept = reduced[rows, self.previous_labels] <= reduced[rows, labels] + self.tol
            labels = np.where(kept, self.previous_labels, labels)
        sizes = np.bincount(labels, minlength=self.n_clusters)
        overflow = np.clip(sizes - self.size_min, 0, self.room)
        overflow[prices < 0] = self.room  # a cluster priced below T must be full
        overflow[prices > 0] = 0  # a cluster priced above T must be at size_min
        excess = sizes - self.size_min - overflow
        return labels, overflow, excess

    def solve(self):
        k = self.n_clusters
        if self.start_prices is None:
            prices = self._coarse_prices()
        else:
            prices = np.where(np.abs(self.start_prices) <= self.tol, 0.0, self.start_prices)
        labels, overflow, excess = self._greedy_start(prices)
        if self.start_prices is not None and np.abs(excess).sum() > max(4, k // 2):
            # stale prices (centres moved a lot): the neutral start may be much closer
            candidate = self._greedy_start(np.zeros(k))
            if np.abs(candidate[2]).sum() < np.abs(excess).sum():
                prices = np.zeros(k)
                labels, overflow, excess = candidate
        if not excess.any():
            return labels, prices
        self.labels = labels.copy()
        self.overflow = overflow
        self.excess = np.append(excess, -excess.sum())  # T balances the books
        self.prices = np.append(prices, 0.0)
        self.members = {}  # cluster -> member indices, valid until the cluster changes
        self._build_graph()
        push, idle = True, 0
        while self.excess[:k].any():
            idle = 0 if self._round(push) else idle + 1
            if idle > 2:  # cannot happen for feasible bounds; never loop forever
                raise RuntimeError("constrained assignment made no progress")
            push = not push
        return self.labels, self.prices[:k] - self.prices[k]

    def _coarse_prices(self):
        """Start prices for a cold solve: the exact prices of half the points, recursively.

        A cold start from zero prices needs a number of rounds that grows with n (the
        clusters' loads are far from their bounds and every round moves each edge's
        cheapest point only).  Prices are per unit of cost, so those of a half-size
        problem with halved bounds already balance the loads roughly; the full solve then
        only repairs what is left.  Any prices are a valid start, so this never changes
        the optimal cost, only the number of rounds (and which of tied optima is returned).
        """
        n, k = self.n_points, self.n_clusters
        half = n // 2
        if half < _COARSE_MIN_POINTS:
            return np.zeros(k)
        low = max(1, (self.size_min * half) // n)
        high = max(low, -(-(self.size_min + self.room) * half // n))
        if k * low > half or k * high < half:
            return np.zeros(k)
        subset = np.sort(np.random.default_rng(n).permutation(n)[:half])
        _, prices = _Transport(self.cost[subset], low, high, None, None).solve()
        return np.where(np.abs(prices) <= self.tol, 0.0, prices)

    # -- compact graph -------------------------------------------------------
    def _build_graph(self):
        k = self.n_clusters
        nodes = k + 1
        self.move_cost = np.full((nodes, nodes), np.inf)  # actual (not reduced) edge costs
        self.move_cost[:k, k] = 0.0
        self.move_cost[k, :k] = 0.0
        self.dirty = set(range(k))
        indptr = np.arange(0, nodes * nodes + 1, nodes, dtype=np.int32)
        indices = np.tile(np.arange(nodes, dtype=np.int32), nodes)
        self.graph = csr_matrix((np.zeros(nodes * nodes), indices, indptr), shape=(nodes, nodes))

    def _refresh_move_costs(self):
        """Recompute the cheapest-move rows of clusters whose members changed."""
        k, cost, labels = self.n_clusters, self.cost, self.labels
        if len(self.dirty) > k // 2:
            order = np.argsort(labels, kind="stable")
            sizes = np.bincount(labels, minlength=k)
            starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
            gaps = cost - cost[np.arange(self.n_points), labels][:, None]
            rows = np.full((k, k), np.inf)
            nonempty = sizes > 0
            rows[nonempty] = np.minimum.reduceat(gaps[order], starts[nonempty], axis=0)
            self.move_cost[:k, :k] = rows
        elif self.dirty:  # one batched pass over the members of the dirty clusters
            clusters = np.fromiter(self.dirty, dtype=np.int64, count=len(self.dirty))
            groups = [self._members(cluster) for cluster in clusters]
            counts = np.fromiter(map(len, groups), dtype=np.int64, count=len(groups))
            self.move_cost[clusters, :k] = np.inf
            filled = counts > 0
            if filled.any():
                members = np.concatenate(groups)
                block = cost[members]
                block -= block[np.arange(members.size), labels[members]][:, None]
                starts = np.concatenate(([0], np.cumsum(counts)[:-1]))[filled]
                self.move_cost[clusters[filled], :k] = np.minimum.reduceat(block, starts, axis=0)
        np.fill_diagonal(self.move_cost, np.inf)
        self.dirty.clear()

    def _members(self, cluster):
        members = self.members.get(cluster)
        if members is None:
            members = self.members[cluster] = np.flatnonzero(self.labels == cluster)
        return members

    def _reduced_costs(self):
        k, prices = self.n_clusters, self.prices
        reduced = self.move_cost + prices[:, None] - prices[None, :]
        reduced[:k, k] = np.where(self.overflow < self.room, reduced[:k, k], np.inf)
        reduced[k, :k] = np.where(self.overflow > 0, reduced[k, :k], np.inf)
        return np.maximum(reduced, 0.0, out=reduced)  # clip float noise below zero

    # -- one round -------------------------------------------------------------
    def _round(self, push):
        """One Dijkstra pass and the augmentations it enables; returns whether any applied."""
        k = self.n_clusters
        cluster_excess = self.excess[:k]
        sources = np.flatnonzero(cluster_excess > 0)
        sinks = np.flatnonzero(cluster_excess < 0)
        if (sources if push else sinks).size == 0:
            return False
        self._refresh_move_costs()
        reduced = self._reduced_costs()
        if push:  # distances *to* T and the under-full clusters
            self.graph.data[:] = reduced.T.ravel()
            dist, pred, _ = dijkstra(self.graph, indices=np.append(sinks, k), min_only=True,
                                     return_predecessors=True)
            finite = np.isfinite(dist)
            self.prices -= np.where(finite, dist, dist[finite].max())
            ends = sources[finite[sources]]
        else:  # distances *from* T and the over-full clusters
            self.graph.data[:] = reduced.ravel()
            dist, pred, _ = dijkstra(self.graph, indices=np.append(sources, k), min_only=True,
                                     return_predecessors=True)
            finite = np.isfinite(dist)
            self.prices += np.where(finite, dist, dist[finite].max())
            ends = sinks[finite[sinks]]
        self.prices -= self.prices[k]
        used_moves = set()
        applied = 0
        for end in ends[np.argsort(dist[ends], kind="stable")]:
            path = [int(end)]
            while pred[path[-1]] >= 0:
                path.append(int(pred[path[-1]]))
            if not push:
                path.reverse()
            applied += self._augment(path, used_moves, force=applied == 0)
        return applied > 0

    def _augment(self, path, used_moves, force):
        """Send flow along ``path`` if all its edges are still tight; returns 1 if applied."""
        k, cost, prices, labels = self.n_clusters, self.cost, self.prices, self.labels
        source, target = path[0], path[-1]
        units = self.excess[source] if source != k else -self.excess[target]
        if source != k and target != k:
            units = min(units, -self.excess[target])
        moves = []
        for tail, head in zip(path, path[1:]):
            if head == k:
                units = min(units, self.room - self.overflow[tail])
            elif tail == k:
                units = min(units, self.overflow[head])
            else:
                units = min(units, 1)
                if (tail, head) in used_moves:
                    return 0
                members = self._members(tail)
                gain = cost[members, head] - cost[members, tail]
                best = int(gain.argmin())
                if not force and gain[best] + prices[tail] - prices[head] > self.tol * 1e3:
                    return 0
                moves.append((members[best], tail, head))
        if units <= 0:
            return 0
        for tail, head in zip(path, path[1:]):
            if head == k:
                self.overflow[tail] += units
            elif tail == k:
                self.overflow[head] -= units
        for point, tail, head in moves:
            labels[point] = head
            used_moves.add((tail, head))
            self.dirty.add(tail)
            self.dirty.add(head)
            self.members.pop(tail, None)
            self.members.pop(head, None)
        self.excess[source] -= units
        self.excess[target] += units
        return 1
