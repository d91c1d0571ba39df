"""Kernels of the ``dgn::`` operators beyond the C++ extension: the Triton ones for CUDA.

:mod:`.triton_dgn` holds fused Triton kernels (CUDA; on the CPU only under
Triton's interpreter, ``TRITON_INTERPRET=1``, for tests). They are
registered as the operators' CUDA kernels by :mod:`dgn_plugins.ops` when
Triton imports, each behind :func:`.fallback.guarded` (a kernel that fails
to compile or launch falls back to the plain formulation). The CPU kernels are
the C++ extension ``dgn_plugins._C`` (``dgn_plugins/csrc``).
"""
from __future__ import annotations

import importlib.util
from typing import Optional

__all__ = ["triton_available", "triton_import_error", "triton_interpreter_supported"]

_triton_import_error: Optional[str] = None
_triton_checked = False


def triton_available() -> bool:
    """True when ``dgn_plugins.kernels.triton_dgn`` imports (Triton installed and usable)."""
    global _triton_checked, _triton_import_error
    if not _triton_checked:
        _triton_checked = True
        try:
            from . import triton_dgn  # noqa: F401
        except Exception as error:  # ImportError, or a Triton that cannot initialise
            _triton_import_error = f"{type(error).__name__}: {error}"
    return _triton_import_error is None


def triton_import_error() -> Optional[str]:
    """Why Triton is unavailable (None when it is available)."""
    triton_available()
    return _triton_import_error


def triton_interpreter_supported() -> bool:
    """True when the installed Triton runs kernels on CPU tensors under ``TRITON_INTERPRET=1``.

    Triton 3 has that interpreter (``triton.runtime.interpreter``); Triton 2.1
    (torch 2.1's) interprets only kernels declared ``jit(interpret=True)``, so
    there the environment variable changes nothing and the kernels need a GPU.
    """
    try:
        return importlib.util.find_spec("triton.runtime.interpreter") is not None
    except ImportError:  # no triton at all
        return False
