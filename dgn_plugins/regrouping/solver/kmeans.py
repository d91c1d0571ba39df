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

import math
from dataclasses import dataclass

import numpy as np

from .common import (
    _as_points,
    _check_bounds,
    _check_count,
    _check_labels,
    _cluster_means,
    _compiled,
    _inertia,
    _squared_distances,
)
from .dp1d import optimal_1d_labels
from .transport import _Transport

__all__ = [
    "ConstrainedKMeansResult",
    "auto_relocations",
    "auto_starts",
    "inertia_of",
    "size_constrained_kmeans",
]


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
        labels = optimal_1d_labels(points[:, 0], n_clusters, size_min, size_max)
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


def _result(points, labels, n_clusters, n_iter) -> ConstrainedKMeansResult:
    centers = _cluster_means(points, labels, n_clusters)
    return ConstrainedKMeansResult(labels=labels.astype(np.int64), centers=centers,
                                   inertia=_inertia(points, labels, centers), n_iter=int(n_iter))


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
