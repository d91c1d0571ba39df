"""The exact assignment step: n points to k clusters with loads in ``[size_min, size_max]``.

A transportation problem, solved by successive shortest paths on the (k + 1)-node
graph of the clusters plus a slack node, warm-started from the previous step's
prices (docs/design.md, "The k-means solver").
"""
from __future__ import annotations

import numpy as np

from .common import _check_bounds, _check_labels, _compiled

__all__ = ["constrained_assignment"]


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
        from scipy.sparse import csr_matrix  # scipy loads at the first regroup, not with the package

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
        from scipy.sparse.csgraph import dijkstra

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
