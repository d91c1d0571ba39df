"""A kernel that cannot take a training run down: on failure, the composite path, once said.

Triton compiles a kernel on its first launch for a dtype and a device, on the
user's machine: an old Triton, a GPU it does not know, or a missing compiler
fail there and nowhere before. :func:`guarded` wraps such a kernel so that a
failure to compile or launch switches that (device type, dtype) to the plain
formulation, with one warning naming the device, the dtype and the error; the
result is the same within float tolerance, and later calls go straight to the
plain path. Other (device, dtype) pairs keep their compiled kernels.
"""
from __future__ import annotations

import functools
import threading
import warnings
from typing import Callable, Dict, Tuple

import torch

__all__ = ["guarded", "failed_kernels", "reset_failures"]

#: (kernel name, device type, dtype) -> the error that switched it to the plain path.
_failures: Dict[Tuple[str, str, torch.dtype], str] = {}
_lock = threading.Lock()


def failed_kernels() -> Dict[Tuple[str, str, torch.dtype], str]:
    """The kernels that fell back, and why (a copy)."""
    with _lock:
        return dict(_failures)


def reset_failures() -> None:
    """Forget the fallbacks (tests; a process that fixed its environment)."""
    with _lock:
        _failures.clear()


def guarded(kernel: Callable, fallback: Callable, name: str) -> Callable:
    """``kernel``, or ``fallback`` for the (device, dtype) of the first tensor argument once ``kernel`` failed there."""

    @functools.wraps(kernel)
    def run(*args, **kwargs):
        first = args[0]
        key = (name, first.device.type, first.dtype)
        if key not in _failures:
            try:
                return kernel(*args, **kwargs)
            except Exception as error:  # compile or launch failure: Triton's, or the driver's
                reason = f"{type(error).__name__}: {' '.join(str(error).split())[:500]}"
                with _lock:
                    first_time = key not in _failures
                    _failures[key] = reason
                if first_time:
                    warnings.warn(f"DGN's Triton kernel {name} failed on {first.device} for {first.dtype} ({reason}); "
                                  f"{first.device.type} {first.dtype} runs the plain PyTorch formulation from now on "
                                  "(same results within float tolerance, slower)", RuntimeWarning, stacklevel=2)
        return fallback(*args, **kwargs)

    return run
