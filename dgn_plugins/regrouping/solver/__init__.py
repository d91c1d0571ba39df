"""Size-constrained k-means: every cluster gets between ``size_min`` and ``size_max`` points.

:mod:`.kmeans` drives it (starts, Lloyd, local search), :mod:`.transport` solves the
exact assignment step, :mod:`.dp1d` the 1-D case; :mod:`.common` holds what they
share. Knows nothing about networks.
"""
from .kmeans import *  # noqa: F403  (the public names are kmeans's, listed once there)
from .kmeans import __all__  # noqa: F401
