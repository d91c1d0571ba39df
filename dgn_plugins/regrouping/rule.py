"""The DGN regrouping rule (poster, "Channel Groups' Re-assignment").

Given running channel means ``mu_c`` and the current grouping:

1. intra-group variance ``var_k = mean_{c in G_k} (mu_c - mean_k)^2``;
2. threshold ``t = percentile({var_k}, p)``, ``p in [0, 1]``;
3. groups with ``var_k > t`` are dissolved, and their channels re-clustered by
   size-constrained k-means into the same number of groups, sizes in ``[L, H]``;
4. every other group keeps its channels.

This module is pure numpy: it plans a new grouping and reports what changed;
the layer validates the plan and swaps it in.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from ..grouping import GroupBounds
from .solver import inertia_of, size_constrained_kmeans

__all__ = ["RegroupReport", "RegroupPlan", "intra_group_variance", "within_group_sum_of_squares", "standardize", "plan_regroup"]


@dataclass
class RegroupReport:
    """What one regroup of one layer did.

    Two quantities, because the rule and the solver look at different ones:

    - the poster's criterion, on the running channel means ``mu_c``:
      ``mean_group_variance_*`` is ``mean_k var_k`` (what the threshold is
      taken over), ``within_group_ss_*`` is ``sum_k |G_k| var_k``, the
      within-group sum of squares of ``mu_c``;
    - ``objective_*``, the solver's objective: the within-group sum of squares
      of the standardised ``cluster_features`` over all groups.

    With the default ``cluster_features=("mean",)`` the objective is
    ``within_group_ss / var(mu)``: the solver minimises the poster's statistic
    exactly (1-D, solved to optimality), so ``within_group_ss_after <=
    within_group_ss_before`` always. ``mean_group_variance`` weights groups
    equally whatever their size, so it may still rise a little when sizes
    change. With other features the solver follows them, not ``mu_c``, and
    both criteria may rise. ``skipped`` names the reason when the grouping
    was left unchanged on purpose.
    """

    name: str = ""
    num_groups: int = 0
    groups_dissolved: int = 0
    groups_changed: int = 0
    channels_moved: int = 0
    threshold: float = float("nan")
    cluster_features: Tuple[str, ...] = ()
    objective_before: float = float("nan")
    objective_after: float = float("nan")
    mean_group_variance_before: float = float("nan")
    mean_group_variance_after: float = float("nan")
    within_group_ss_before: float = float("nan")
    within_group_ss_after: float = float("nan")
    skipped: Optional[str] = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class RegroupPlan:
    group_id: np.ndarray  # new per-channel group ids, int64 [C]
    report: RegroupReport


def intra_group_variance(channel_mean: np.ndarray, group_id: np.ndarray, num_groups: int) -> np.ndarray:
    """``var_k``: population variance of the channel means inside each group."""
    sizes = np.bincount(group_id, minlength=num_groups).astype(np.float64)
    group_mean = np.bincount(group_id, weights=channel_mean, minlength=num_groups) / sizes
    deviation = channel_mean - group_mean[group_id]
    return np.bincount(group_id, weights=deviation * deviation, minlength=num_groups) / sizes


def within_group_sum_of_squares(channel_mean: np.ndarray, group_id: np.ndarray, num_groups: int) -> float:
    """``sum_k |G_k| var_k``: the squared deviations of channel means from their group's mean."""
    sizes = np.bincount(group_id, minlength=num_groups).astype(np.float64)
    return float((sizes * intra_group_variance(channel_mean, group_id, num_groups)).sum())


def standardize(features: np.ndarray) -> np.ndarray:
    """Z-score each column over all channels; constant columns become 0."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim == 1:
        features = features[:, None]
    centred = features - features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale == 0] = 1.0
    return centred / scale


def _match_labels(old_labels: np.ndarray, new_labels: np.ndarray, num_clusters: int) -> np.ndarray:
    """Relabel ``new_labels`` to overlap ``old_labels`` as much as possible.

    So that a group keeps its id when most of its channels stay together, and
    "channels moved" counts real moves rather than label permutations.
    """
    from scipy.optimize import linear_sum_assignment  # scipy loads at the first regroup, not with the package

    overlap = np.zeros((num_clusters, num_clusters), dtype=np.int64)
    np.add.at(overlap, (new_labels, old_labels), 1)
    new_idx, old_idx = linear_sum_assignment(-overlap)
    mapping = np.empty(num_clusters, dtype=np.int64)
    mapping[new_idx] = old_idx
    return mapping[new_labels]


def _check_solver_labels(labels: np.ndarray, num_points: int, num_clusters: int, bounds: GroupBounds) -> None:
    """Refuse a solver answer that is not a partition within the bounds."""
    if labels.shape != (num_points,) or labels.min(initial=0) < 0 or labels.max(initial=0) >= num_clusters:
        raise ValueError(f"solver returned labels of shape {labels.shape} outside [0, {num_clusters})")
    sizes = np.bincount(labels, minlength=num_clusters)
    if sizes.min() < bounds.size_min or sizes.max() > bounds.size_max:
        raise ValueError(
            f"solver returned group sizes in [{sizes.min()}, {sizes.max()}], outside "
            f"[L={bounds.size_min}, H={bounds.size_max}]"
        )


def plan_regroup(
    channel_mean: np.ndarray,
    features: np.ndarray,
    group_id: np.ndarray,
    num_groups: int,
    bounds: GroupBounds,
    percentile: float,
    *,
    seed: int = 0,
    n_init="auto",
    max_iter: int = 300,
    name: str = "",
    cluster_features: Sequence[str] = (),
) -> RegroupPlan:
    """Apply the poster's rule once; never returns an invalid grouping.

    ``channel_mean`` ([C]) decides which groups dissolve; ``features`` ([C, d],
    already standardised) is what k-means clusters, ``cluster_features`` its
    columns' names (for the report). Raises ``ValueError`` on
    bad arguments; the caller decides what a failure means for the layer.
    """
    if not 0.0 <= percentile <= 1.0:
        raise ValueError(f"percentile must lie in [0, 1], got {percentile}")
    group_id = np.asarray(group_id, dtype=np.int64)
    channel_mean = np.asarray(channel_mean, dtype=np.float64)
    features = np.asarray(features, dtype=np.float64)
    if features.ndim == 1:
        features = features[:, None]
    report = RegroupReport(name=name, num_groups=num_groups, cluster_features=tuple(cluster_features))

    group_var = intra_group_variance(channel_mean, group_id, num_groups)
    report.threshold = float(np.quantile(group_var, percentile))
    report.objective_before = report.objective_after = inertia_of(features, group_id, num_groups)
    report.mean_group_variance_before = report.mean_group_variance_after = float(group_var.mean())
    report.within_group_ss_before = report.within_group_ss_after = within_group_sum_of_squares(
        channel_mean, group_id, num_groups)
    dissolved = np.flatnonzero(group_var > report.threshold)
    report.groups_dissolved = int(dissolved.size)
    if dissolved.size < 2:  # one group re-clustered into one group is itself
        return RegroupPlan(group_id.copy(), report)

    # Local problem: the dissolved groups' channels, labelled 0..m-1.
    local_of_group = np.full(num_groups, -1, dtype=np.int64)
    local_of_group[dissolved] = np.arange(dissolved.size)
    candidates = np.flatnonzero(local_of_group[group_id] >= 0)
    old_local = local_of_group[group_id[candidates]]
    result = size_constrained_kmeans(
        features[candidates],
        int(dissolved.size),
        bounds.size_min,
        bounds.size_max,
        n_init=n_init,
        max_iter=max_iter,
        seed=seed,
        init_labels=old_local,  # the current grouping is a start: never worse than now
    )
    labels = np.asarray(result.labels, dtype=np.int64)
    _check_solver_labels(labels, candidates.size, int(dissolved.size), bounds)
    new_local = _match_labels(old_local, labels, int(dissolved.size))

    new_group_id = group_id.copy()
    new_group_id[candidates] = dissolved[new_local]
    objective_after = inertia_of(features, new_group_id, num_groups)
    if objective_after > report.objective_before * (1 + 1e-12) + 1e-12:
        report.skipped = "re-clustering did not lower the objective"
        return RegroupPlan(group_id.copy(), report)

    moved = new_group_id != group_id
    report.channels_moved = int(moved.sum())
    report.groups_changed = int(np.unique(np.concatenate([group_id[moved], new_group_id[moved]])).size)
    report.objective_after = objective_after
    report.mean_group_variance_after = float(intra_group_variance(channel_mean, new_group_id, num_groups).mean())
    report.within_group_ss_after = within_group_sum_of_squares(channel_mean, new_group_id, num_groups)
    return RegroupPlan(new_group_id, report)
