"""Let MMEngine 0.10.7 read its own checkpoints on torch >= 2.6.

torch 2.6 made ``torch.load`` default to ``weights_only=True``; MMEngine
0.10.7 calls ``torch.load(filename, map_location=...)`` without the argument,
so ``--resume`` (and ``load_from`` of a full training checkpoint) fails with
``UnpicklingError: Unsupported global: mmengine.logging.history_buffer.HistoryBuffer``.
Instead of turning the safety off, we allow-list exactly what MMEngine writes
into a checkpoint besides tensors:

- the message hub's ``HistoryBuffer`` and the numpy arrays/scalars inside it;
- the statistics methods ``HistoryBuffer.__getstate__`` adds to its state,
  which pickle writes as ``getattr(HistoryBuffer, 'mean')``. ``getattr`` itself
  is not allowed: a stand-in that resolves only those methods is, under
  ``getattr``'s name;
- ``collections.Counter``, the ``milestones`` of ``MultiStepLR``.

Applied by an explicit call, :func:`allow_mmengine_checkpoint_types`, that
launchers make (``tools/train.py``); the plotting tool passes
:func:`mmengine_checkpoint_globals` to :func:`dgn_plugins.data.safe_load.load_torch_file`,
which allows them for one call only.
"""
from __future__ import annotations

import collections
from typing import List

from ..compat import add_safe_globals
from ..data.safe_load import numpy_globals

__all__ = ["history_buffer_method", "mmengine_checkpoint_globals", "allow_mmengine_checkpoint_types"]

_HISTORY_BUFFER_STATISTICS = ("min", "max", "current", "mean")


def history_buffer_method(owner, name: str):
    """``getattr`` as a checkpoint may use it: ``HistoryBuffer``'s statistics methods only."""
    from mmengine.logging.history_buffer import HistoryBuffer

    if owner is HistoryBuffer and isinstance(name, str):
        registered = set(_HISTORY_BUFFER_STATISTICS) | set(HistoryBuffer._statistics_methods)
        method = getattr(HistoryBuffer, name, None) if name in registered else None
        if callable(method):
            return method
    raise AttributeError(
        f"weights-only checkpoint loading resolves only HistoryBuffer statistics methods, not {owner!r}.{name}"
    )


def mmengine_checkpoint_globals() -> List:
    """Every global an MMEngine training checkpoint references (torch's own aside)."""
    from mmengine.logging.history_buffer import HistoryBuffer

    return [
        HistoryBuffer,
        (history_buffer_method, "builtins.getattr"),
        collections.Counter,
        *numpy_globals(),
    ]


def allow_mmengine_checkpoint_types() -> bool:
    """Allow-list them for ``torch.load(weights_only=True)``; False where torch does not load weights-only
    by default (before 2.6), so MMEngine's own loads need nothing."""
    return add_safe_globals(mmengine_checkpoint_globals())
