"""Native CPU path: the C++ extension ``dgn_plugins._C`` (source in ``dgn_plugins/csrc``).

It runs contiguous float32 / float64 (N, C, *) inputs with native GN's memory
traffic: the forward makes one statistics pass over ``x`` (per-row mean and
variance: two passes over the cached row with float sums flushed to double,
or one pass with double sums for rows of at most 64 elements) and one pass
writing ``y = (x - mean_c) * scale_c + shift_c``; the backward one pass for
``sum(dy)`` and ``sum(dy * (x - group mean))`` and one writing ``dx``.
Everything between, on [N, C] / [N, K], is in float64, as in
:mod:`dgn_plugins.functional`. Rows are split across threads
(``at::parallel_for``), the row loops use the widest vector instructions the
CPU has (AVX-512, AVX2 or the baseline), and the autograd node is C++.

No compilation at run time: the extension is built by ``pip install
--no-build-isolation`` (see ``setup.py``). Without it ``is_available()`` is
False and :func:`dgn_plugins.kernels.select_backend` uses the other paths.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

try:
    from .. import _C
    _import_error: Optional[str] = None
except ImportError as error:  # not built (pure-Python install) or built against another torch
    _C = None
    _import_error = f"{type(error).__name__}: {error}"

__all__ = ["NativeDynamicGroupNormFunction", "is_available", "import_error", "supports", "ema_update_"]

_DTYPES = (torch.float32, torch.float64)


def is_available() -> bool:
    """True when the extension imported."""
    return _C is not None


def import_error() -> Optional[str]:
    """Why the extension is unavailable (None when it is available)."""
    return _import_error


def supports(x: Tensor) -> bool:
    """Inputs the kernels run: non-empty, CPU, float32 / float64, standard-contiguous."""
    return x.device.type == "cpu" and x.dtype in _DTYPES and x.numel() > 0 and x.is_contiguous()


def ema_update_(running_mean: Tensor, running_var: Tensor, num_updates: Tensor,
                channel_mean: Tensor, channel_var: Tensor, momentum: float) -> bool:
    """The layer's running-statistics update in one call; False (nothing done) where it does not apply
    (no extension, not CPU, other dtypes, non-contiguous, empty batch)."""
    return _C is not None and _C.ema_update_(running_mean, running_var, num_updates, channel_mean, channel_var,
                                             float(momentum))


class NativeDynamicGroupNormFunction:
    """Same ``apply`` inputs, outputs and saved tensors as the plain path's Function.

    The autograd node is C++ (``DynamicGroupNormFunction`` in the extension):
    no Python runs in the backward, which saves tens of microseconds per
    layer and step. Like the plain path's ``@once_differentiable`` backward,
    differentiating it twice raises.
    """

    @staticmethod
    def apply(x, weight, bias, group_id, group_count, num_groups, eps):
        return _C.apply(x, weight, bias, group_id, group_count, num_groups, eps)
