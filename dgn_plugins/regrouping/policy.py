"""``RegroupPolicy``: how a regroup decides and solves, apart from the layer's state.

A layer holds its grouping, the bounds a grouping must meet and the running
statistics. What a regroup does with them (which groups dissolve, what the
dissolved channels are clustered on, the solver's settings) is a policy. Each
layer carries the policy its config gave it (``norm_cfg=dict(type='DGN',
percentile=...)``, ``MODEL.DGN.*``); a policy handed to
:func:`~dgn_plugins.regroup_model` or the regroup controller overrides the
fields it sets (``None``: the layer's own).
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence, Tuple, Union

__all__ = ["RegroupPolicy", "CLUSTER_FEATURES", "check_momentum"]

#: Per-channel running statistics that k-means can cluster on.
CLUSTER_FEATURES = ("mean", "var", "std")


def check_momentum(momentum: float) -> float:
    """The EMA factor of the running channel statistics, checked."""
    if not 0.0 < momentum <= 1.0:
        raise ValueError(f"momentum must lie in (0, 1], got {momentum}")
    return momentum


@dataclass(frozen=True)
class RegroupPolicy:
    """The regroup settings; a field left ``None`` defers to the layer's own.

    Args:
        percentile: p in [0, 1]; groups whose intra-group variance of channel
            means exceeds the p-th percentile dissolve.
        cluster_features: the standardised running statistics the dissolved
            channels are re-clustered on, a subset of ``("mean", "var", "std")``.
        seed: base seed of the solver (regroup ``r`` of a layer uses ``seed + r``).
        n_init, max_iter: the solver's starts (``"auto"``: more for smaller
            problems) and Lloyd iterations per start.

    Example::

        >>> policy = RegroupPolicy(percentile=0.5)
        >>> regroup_model(model, policy=policy)  # other fields: each layer's own
    """

    percentile: Optional[float] = None
    cluster_features: Optional[Tuple[str, ...]] = None
    seed: Optional[int] = None
    n_init: Union[int, str, None] = None
    max_iter: Optional[int] = None

    def __post_init__(self) -> None:
        if self.percentile is not None and not 0.0 <= self.percentile <= 1.0:
            raise ValueError(f"percentile must lie in [0, 1], got {self.percentile}")
        if self.cluster_features is not None:
            features = tuple(self.cluster_features)
            if not features or set(features) - set(CLUSTER_FEATURES):
                raise ValueError(f"cluster_features must be a non-empty subset of {CLUSTER_FEATURES}, "
                                 f"got {self.cluster_features}")
            object.__setattr__(self, "cluster_features", features)
        n_init = self.n_init
        if n_init is not None and n_init != "auto" and (isinstance(n_init, bool) or not isinstance(n_init, int)
                                                        or n_init < 1):
            raise ValueError(f"n_init must be a positive integer or 'auto', got {n_init!r}")
        if self.max_iter is not None and self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")

    @classmethod
    def full(cls, percentile: float = 0.75, cluster_features: Sequence[str] = ("mean",), seed: int = 0,
             n_init: Union[int, str] = "auto", max_iter: int = 300) -> "RegroupPolicy":
        """A policy with every field set (a layer's): the defaults are the poster's rule."""
        return cls(percentile, tuple(cluster_features), seed, n_init, max_iter)

    def overridden_by(self, other: Optional["RegroupPolicy"]) -> "RegroupPolicy":
        """This policy with the fields ``other`` sets replaced."""
        if other is None:
            return self
        changes = {f.name: getattr(other, f.name) for f in fields(other) if getattr(other, f.name) is not None}
        return replace(self, **changes) if changes else self

    def as_dict(self) -> dict:
        """The fields that are set."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
