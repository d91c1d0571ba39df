"""The one place that knows which torch this is (2.1 through 2.14).

Everything here is a feature check (``hasattr``, a signature), never a version
string: a capability the installed torch lacks is either provided another way
(a Meta kernel where ``register_fake`` is missing, ``GroupNorm(bias=)``
emulated) or turned off with one clear message (:data:`VMAP_UNSUPPORTED`).
The rest of the package imports these names instead of asking torch itself.
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
from typing import Callable, Iterable, Optional

import torch
from torch import nn

__all__ = [
    "TORCH_VERSION",
    "FAKE_KERNELS",
    "register_fake",
    "HAS_VMAP_RULES",
    "VMAP_UNSUPPORTED",
    "register_vmap",
    "IMPL_TAKES_ALLOW_OVERRIDE",
    "impl_override",
    "destroy_library",
    "FUNCTIONALIZES_MUTABLE_OPS",
    "is_compiling",
    "is_exporting",
    "EXPORT_DETECTION",
    "GROUP_NORM_TAKES_BIAS",
    "init_group_norm",
    "LOAD_DEFAULTS_TO_WEIGHTS_ONLY",
    "HAS_SAFE_GLOBALS",
    "safe_globals",
    "add_safe_globals",
    "get_safe_globals",
]

#: For messages only: features are detected, not read from the version.
TORCH_VERSION = torch.__version__.split("+")[0]


# ------------------------------------------------------------------ fake kernels
def _fake_mechanism() -> str:
    if hasattr(torch.library, "register_fake"):  # torch >= 2.4
        return "register_fake"
    if hasattr(torch.library, "impl_abstract"):  # torch 2.2-2.3
        return "impl_abstract"
    return "meta"  # a Meta kernel: FakeTensor runs it for an operator without an abstract implementation


#: How fake (shape-only) implementations are registered on this torch: ``register_fake``,
#: ``impl_abstract`` or ``meta``; each lets ``torch.compile`` trace the ``dgn::`` operators.
FAKE_KERNELS = _fake_mechanism()


def register_fake(qualname: str, fn: Callable, lib: torch.library.Library) -> None:
    """``torch.library.register_fake`` where it exists, else the older registration of the same function."""
    if FAKE_KERNELS == "register_fake":
        torch.library.register_fake(qualname, fn, lib=lib)
    elif FAKE_KERNELS == "impl_abstract":
        torch.library.impl_abstract(qualname, fn, lib=lib)
    else:
        lib.impl(qualname.split("::", 1)[1], fn, "Meta")


# ------------------------------------------------------------------ vmap
#: ``torch.library.register_vmap`` (torch >= 2.4): batching rules for custom operators.
HAS_VMAP_RULES = hasattr(torch.library, "register_vmap")

VMAP_UNSUPPORTED = (f"vmap over DGN layers needs torch >= 2.4 (torch.library.register_vmap); this is torch "
                    f"{TORCH_VERSION}: call the layer per sample, or upgrade torch")


def register_vmap(qualname: str, fn: Callable, lib: torch.library.Library) -> bool:
    """Register a batching rule; where torch has none, a rule that raises :data:`VMAP_UNSUPPORTED`.

    Without it, functorch's generic fallback would loop over the batch for some
    calls and fail deep inside others (the in-place running statistics).
    """
    if HAS_VMAP_RULES:
        torch.library.register_vmap(qualname, fn, lib=lib)
        return True

    def unsupported(*args, **kwargs):
        raise RuntimeError(VMAP_UNSUPPORTED)

    lib.impl(qualname.split("::", 1)[1], unsupported, "FuncTorchBatched")
    return False


# ------------------------------------------------------------------ libraries
#: ``Library.impl(..., allow_override=True)``: replace a kernel another Python library registered.
IMPL_TAKES_ALLOW_OVERRIDE = "allow_override" in inspect.signature(torch.library.Library.impl).parameters


def impl_override(library: torch.library.Library, name: str, fn: Callable, dispatch_key: str) -> None:
    """``library.impl``, in front of a kernel another Python library registered for the same key.

    The dispatcher stacks kernels (removing this one restores the other), but
    ``Library.impl`` refuses a key it saw from Python before unless told to
    allow it; torch without that option gets the same effect by forgetting the
    other library's claim on the key.
    """
    if IMPL_TAKES_ALLOW_OVERRIDE:
        library.impl(name, fn, dispatch_key, allow_override=True)
        return
    from torch.library import _impls

    _impls.discard(f"{library.ns}/{name}/{dispatch_key}")
    library.impl(name, fn, dispatch_key)


def destroy_library(library: torch.library.Library) -> None:
    """Remove every registration ``library`` made (``Library._destroy`` on newer torch)."""
    destroy = getattr(library, "_destroy", None)
    if destroy is not None:
        destroy()
        return
    # torch < 2.3: registrations live as long as the C++ library handle; the Python
    # side keeps a set of the (namespace, op, key) it registered, which must shrink too.
    from torch.library import _impls

    _impls.difference_update(library._op_impls)
    library._op_impls.clear()
    library.m = None


# ------------------------------------------------------------------ compile
def _functionalizes_mutable_ops() -> bool:
    try:
        return importlib.util.find_spec("torch._higher_order_ops.auto_functionalize") is not None
    except ImportError:
        return False


#: ``torch.compile`` traces custom operators that write to their inputs (auto-functionalization, torch >= 2.3).
#: Without it a DGN layer in training updates its running statistics in standard operators while compiled.
FUNCTIONALIZES_MUTABLE_OPS = _functionalizes_mutable_ops()


def _compiling_check() -> Callable[[], bool]:
    compiler = getattr(torch, "compiler", None)
    check = getattr(compiler, "is_compiling", None)  # torch >= 2.3
    # torch._utils.is_compiling before: Dynamo folds a call to either function into True while it traces,
    # so the function itself, not a wrapper around it, must be what callers call.
    return check if check is not None else torch._utils.is_compiling


#: True while ``torch.compile`` (Dynamo) traces.
is_compiling = _compiling_check()


# ------------------------------------------------------------------ export
def _export_detection() -> Optional[Callable[[], bool]]:
    compiler = getattr(torch, "compiler", None)
    return getattr(compiler, "is_exporting", None)


_is_exporting = _export_detection()

#: Whether the operator can tell ``torch.export`` from ``torch.compile`` (torch >= 2.7). Without it an
#: exported graph records the ``dgn::`` operator (loading it needs this package) instead of standard ops;
#: :func:`dgn_plugins.freeze` still gives a graph of standard operators on every torch.
EXPORT_DETECTION = _is_exporting is not None


def is_exporting() -> bool:
    """True while ``torch.export`` traces (always False where torch cannot say)."""
    return bool(_is_exporting()) if _is_exporting is not None else False


# ------------------------------------------------------------------ GroupNorm(bias=)
#: ``nn.GroupNorm(..., bias=False)`` (torch >= 2.12): a weight without a bias.
GROUP_NORM_TAKES_BIAS = "bias" in inspect.signature(nn.GroupNorm.__init__).parameters


def init_group_norm(module: nn.GroupNorm, num_groups: int, num_channels: int, eps: float, affine: bool,
                    device=None, dtype=None, bias: bool = True) -> None:
    """``nn.GroupNorm.__init__`` with 2.12's ``bias=`` on every torch: ``bias=False`` leaves ``module.bias`` None."""
    if GROUP_NORM_TAKES_BIAS:
        nn.GroupNorm.__init__(module, num_groups, num_channels, eps, affine, device=device, dtype=dtype, bias=bias)
        return
    nn.GroupNorm.__init__(module, num_groups, num_channels, eps, affine, device=device, dtype=dtype)
    if affine and not bias:
        del module.bias
        module.register_parameter("bias", None)


# ------------------------------------------------------------------ safe globals
def _load_defaults_to_weights_only() -> bool:
    default = inspect.signature(torch.load).parameters.get("weights_only")
    return default is not None and default.default is not False


#: ``torch.load`` loads weights-only unless told otherwise (torch >= 2.6; ``False`` before).
LOAD_DEFAULTS_TO_WEIGHTS_ONLY = _load_defaults_to_weights_only()

#: The allow-list of weights-only loads as torch >= 2.6 has it: a ``safe_globals`` context and
#: ``(callable, "module.name")`` entries. Without it :mod:`dgn_plugins.data.safe_load` restricts
#: the unpickler itself.
HAS_SAFE_GLOBALS = LOAD_DEFAULTS_TO_WEIGHTS_ONLY and hasattr(torch.serialization, "safe_globals")


def safe_globals(allowed: Iterable) -> contextlib.AbstractContextManager:
    """``torch.serialization.safe_globals(allowed)``; needs :data:`HAS_SAFE_GLOBALS`."""
    if not HAS_SAFE_GLOBALS:
        raise RuntimeError(f"torch.serialization.safe_globals with named entries needs torch >= 2.6; this is torch "
                           f"{TORCH_VERSION}")
    return torch.serialization.safe_globals(list(allowed))


def add_safe_globals(allowed: Iterable) -> bool:
    """Allow-list ``allowed`` process-wide for weights-only loads; False where nothing needs it.

    Before torch 2.6 ``torch.load`` loads with ``weights_only=False`` by default, so a
    toolkit's own checkpoints need no allow-list there (and older allow-lists do not
    take named entries).
    """
    if not HAS_SAFE_GLOBALS:
        return False
    torch.serialization.add_safe_globals(list(allowed))
    return True


def get_safe_globals() -> list:
    """The process-wide allow-list (empty where torch keeps none)."""
    get = getattr(torch.serialization, "get_safe_globals", None)
    return list(get()) if get is not None else []
