"""Optional fast paths for :mod:`dgn_plugins.functional`, and which one runs.

Backends, all with the plain path's inputs, outputs and saved tensors:

``torch``
    the plain PyTorch ops of :mod:`dgn_plugins.functional`: the reference,
    always available.
``native``
    :mod:`.cpu_native`: the C++ extension ``dgn_plugins._C`` (contiguous
    float32 / float64 CPU inputs; built at install time, no run-time
    compilation).
``compile``
    :mod:`.cpu_compiled`: the same math compiled by ``torch.compile`` into a
    fused forward and a fused backward (CPU, or any device Inductor supports).
``triton``
    :mod:`.triton_dgn`: hand-written fused Triton kernels (CUDA; on the CPU
    only under Triton's interpreter, for tests).

``DGN_BACKEND`` (read on every call) chooses:

``auto`` (default)
    CUDA tensors take ``triton`` when Triton imports; CPU tensors that
    ``native`` runs take it when the extension is built (any size); other
    CPU tensors of at least ``COMPILE_MIN_ELEMENTS`` elements in float32 /
    bfloat16 / float16 (channels_last, half precision, or no extension) take
    ``compile`` (smaller ones are not worth a compilation); anything else,
    and whatever runs under TorchScript, tracing, ``torch.export`` or
    ``torch.compile``, takes ``torch``. A backend that fails to build falls
    back to ``torch`` with one warning.
``torch`` | ``native`` | ``compile`` | ``triton``
    that backend for every non-empty input; ``triton`` raises if Triton cannot
    run the input (not CUDA and not interpreting); ``native`` takes ``torch``
    for inputs it does not run, and warns once if the extension is missing.
"""
from __future__ import annotations

import os
import warnings

import torch

from . import cpu_native

__all__ = ["BACKENDS", "COMPILE_MIN_ELEMENTS", "native_available", "requested_backend", "select_backend",
           "triton_available"]

BACKENDS = ("auto", "torch", "native", "compile", "triton")

#: Below this many elements ``auto`` keeps CPU inputs on the plain path.
COMPILE_MIN_ELEMENTS = 1 << 18

_triton_import_error: "str | None" = None
_triton_checked = False
_native_warned = False


def requested_backend() -> str:
    value = os.environ.get("DGN_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"DGN_BACKEND={value!r} is not one of {', '.join(BACKENDS)}")
    return value


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


def native_available() -> bool:
    """True when the C++ extension ``dgn_plugins._C`` imports (see :mod:`.cpu_native`)."""
    return cpu_native.is_available()


def _native_can_run(x: torch.Tensor) -> bool:
    return cpu_native.is_available() and cpu_native.supports(x)


def _warn_native_missing() -> None:
    global _native_warned
    if not _native_warned:
        _native_warned = True
        warnings.warn(f"DGN_BACKEND=native but the extension dgn_plugins._C is not available "
                      f"({cpu_native.import_error()}); "
                      "using plain PyTorch ops. Build it with `pip install --no-build-isolation -e .`",
                      RuntimeWarning, stacklevel=3)


def _triton_can_run(x: torch.Tensor) -> bool:
    if not triton_available():
        return False
    from .triton_dgn import interpreting

    return x.is_cuda or (interpreting() and x.device.type == "cpu")


def _tracing() -> bool:
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_exporting()


def select_backend(x: torch.Tensor) -> str:
    """``"torch"``, ``"native"``, ``"compile"`` or ``"triton"`` for this input, per ``DGN_BACKEND``."""
    requested = requested_backend()
    if requested == "torch" or x.numel() == 0:
        return "torch"
    if requested == "triton":
        if not _triton_can_run(x):
            reason = _triton_import_error or (
                f"input on {x.device} (Triton runs CUDA tensors, or CPU ones when TRITON_INTERPRET=1)")
            raise RuntimeError(f"DGN_BACKEND=triton but Triton cannot run this input: {reason}")
        return "triton"
    if requested == "native":
        if not native_available():
            _warn_native_missing()
        return "native" if _native_can_run(x) else "torch"
    if requested == "compile":
        from .cpu_compiled import is_available

        return "compile" if is_available() else "torch"
    # auto
    if _tracing():
        return "torch"
    if x.is_cuda:
        return "triton" if _triton_can_run(x) else "torch"
    if x.device.type != "cpu":
        return "torch"
    if _native_can_run(x) and not torch.compiler.is_compiling():
        return "native"
    if x.dtype in (torch.float32, torch.bfloat16, torch.float16):
        if x.numel() >= COMPILE_MIN_ELEMENTS:
            from .cpu_compiled import is_available

            return "compile" if is_available() else "torch"
    return "torch"
