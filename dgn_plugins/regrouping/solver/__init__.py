"""Size-constrained k-means: every cluster gets between ``size_min`` and ``size_max`` points.

:mod:`.kmeans` drives it (starts, Lloyd, local search), :mod:`.transport` solves the
exact assignment step, :mod:`.dp1d` the 1-D case; :mod:`.common` holds what they
share. Knows nothing about networks.
"""
from .kmeans import (
    ConstrainedKMeansResult,
    auto_relocations,
    auto_starts,
    inertia_of,
    size_constrained_kmeans,
)
from .transport import constrained_assignment

__all__ = [
    "ConstrainedKMeansResult",
    "auto_relocations",
    "auto_starts",
    "constrained_assignment",
    "inertia_of",
    "size_constrained_kmeans",
]
