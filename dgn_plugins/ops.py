"""The DGN operators, registered with ``torch.library`` (namespace ``dgn``).

``dgn::group_norm(input, group_id, group_count, weight?, bias?, num_groups, eps,
running_mean!?, running_var!?, num_updates!?, momentum, channel_stats=True) -> (y,
channel_mean, channel_var, group_mean, group_rstd)``
    the forward; statistics are float32 (float64 for float64 input), [N, C]
    and [N, K]. Only ``y`` is differentiable. Given running statistics (a
    layer in training), it also updates them, as ``native_batch_norm`` does:
    one call per layer and step. ``channel_stats=False`` (a layer's call)
    returns the [N, C] statistics empty ([0, C]): for tokens, rows of one
    value per channel, they would be a copy of the input and zeros, and the
    CPU kernel then updates the running statistics from the batch's sums.
``dgn::group_norm_backward(grad_y, input, group_mean, group_rstd, group_id,
group_count, weight?, num_groups, output_mask) -> (dx, dweight, dbias)``
    its backward, from what ``F.group_norm`` saves; outputs not in the mask
    are empty.
``dgn::group_norm_composite(...)``
    the forward as plain differentiable PyTorch ops
    (:func:`dgn_plugins.functional.reference_forward`): what autograd
    differentiates where a second derivative or forward-mode AD is asked for.
``dgn::update_channel_stats_(running_mean!, running_var!, num_updates!,
channel_mean, channel_var, momentum) -> ()``
    the layer's EMA of its running channel statistics.

Kernels, picked by the dispatcher from the input's device:

- CPU: the C++ extension ``dgn_plugins._C`` (registered when it loads), which
  also carries the autograd kernel;
- CUDA: the Triton kernels (:mod:`dgn_plugins.kernels.triton_dgn`) when
  Triton imports; a kernel that fails to compile or launch falls back to the
  plain formulation for that device and dtype, with one warning
  (:mod:`dgn_plugins.kernels.fallback`);
- any other device, or no extension: the plain formulations of
  :mod:`dgn_plugins.functional`. Without the extension the forward is the
  composite itself, so autograd differentiates the plain ops.

Fake (meta) implementations let ``torch.compile`` and ``torch.export`` trace
the operators without running them, and ``vmap`` rules fold the vmapped
dimension into the batch, as GroupNorm's batching rule does.

Which kernels run can be changed for testing and debugging with
:func:`set_backend` / :func:`use_backend` (``DGN_BACKEND`` sets the default,
read once at import): ``"native"`` (the default: the kernels above),
``"reference"`` (the plain formulation everywhere, autograd by composition)
or ``"triton"`` (the Triton kernels on CPU tensors too, for Triton's
interpreter).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from typing import Iterator, Optional

import torch

from . import compat, functional

__all__ = ["BACKENDS", "backend", "native_available", "native_import_error", "set_backend", "use_backend",
           "triton_available"]

BACKENDS = ("native", "reference", "triton")

_library = torch.library.Library("dgn", "DEF")
_FORWARD_ARGUMENTS = ("(Tensor input, Tensor group_id, Tensor group_count, Tensor? weight, Tensor? bias, "
                      "int num_groups, float eps, Tensor(a!)? running_mean=None, Tensor(b!)? running_var=None, "
                      "Tensor(c!)? num_updates=None, float momentum=0.1, bool channel_stats=True) "
                      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)")
_library.define("group_norm" + _FORWARD_ARGUMENTS)
_library.define("group_norm_composite" + _FORWARD_ARGUMENTS)
_library.define("group_norm_backward(Tensor grad_y, Tensor input, Tensor group_mean, Tensor group_rstd, "
                "Tensor group_id, Tensor group_count, Tensor? weight, int num_groups, bool[3] output_mask) "
                "-> (Tensor, Tensor, Tensor)")
_library.define("update_channel_stats_(Tensor(a!) running_mean, Tensor(b!) running_var, Tensor(c!) num_updates, "
                "Tensor channel_mean, Tensor channel_var, float momentum) -> ()")


# ------------------------------------------------------------------ plain kernels
def _forward_kernel(x, group_id, group_count, weight, bias, num_groups, eps, running_mean=None, running_var=None,
                    num_updates=None, momentum=0.1, channel_stats=True):
    """The plain forward as a kernel (below autograd: nothing is recorded)."""
    with torch.no_grad():
        outs = functional.reference_forward(x, group_id, group_count, weight, bias, num_groups, eps)
        update_running(outs, running_mean, running_var, num_updates, momentum)
    return with_channel_stats(outs, channel_stats)


def with_channel_stats(outs, channel_stats: bool):
    """The forward's outputs, the [N, C] statistics made empty ([0, C]) unless ``channel_stats``."""
    if channel_stats:
        return outs
    empty = outs[1].new_empty((0,) + tuple(outs[1].shape[1:]))
    return (outs[0], empty, empty.clone(), *outs[3:])


def update_running(outs, running_mean, running_var, num_updates, momentum) -> None:
    """The training step's running-statistics update, from a forward's channel statistics."""
    if running_mean is not None:
        torch.ops.dgn.update_channel_stats_(running_mean, running_var, num_updates, outs[1], outs[2], momentum)


def _composite(x, group_id, group_count, weight, bias, num_groups, eps, running_mean=None, running_var=None,
               num_updates=None, momentum=0.1, channel_stats=True):
    """The forward as plain differentiable ops: what autograd differentiates for higher derivatives."""
    outs = functional.reference_forward(x, group_id, group_count, weight, bias, num_groups, eps)
    update_running(outs, running_mean, running_var, num_updates, momentum)
    return with_channel_stats(outs, channel_stats)


def _backward_kernel(grad_y, x, group_mean, group_rstd, group_id, group_count, weight, num_groups, output_mask):
    with torch.no_grad():
        return functional.reference_backward(grad_y, x, group_mean, group_rstd, group_id, group_count, weight,
                                             num_groups, list(output_mask))


update_channel_stats_reference = functional.update_channel_stats_reference


_library.impl("group_norm_composite", _composite, "CompositeImplicitAutograd")
_library.impl("update_channel_stats_", torch.library.fallthrough_kernel, "Autograd")


# ------------------------------------------------------------------ fake implementations
def _fake_forward(x, group_id, group_count, weight, bias, num_groups, eps, running_mean=None, running_var=None,
                  num_updates=None, momentum=0.1, channel_stats=True):
    stats_dtype = functional.compute_dtype(x.dtype)
    n, c = x.shape[:2]
    if not channel_stats:
        y = torch.empty_like(x, memory_format=functional.output_memory_format(x))
        stats = [x.new_empty((0, c), dtype=stats_dtype) for _ in range(2)]
        groups = [x.new_empty((n, num_groups), dtype=stats_dtype) for _ in range(2)]
        return (y, *stats, *groups)
    y = torch.empty_like(x, memory_format=functional.output_memory_format(x))
    stats = [x.new_empty((n, c), dtype=stats_dtype) for _ in range(2)]
    groups = [x.new_empty((n, num_groups), dtype=stats_dtype) for _ in range(2)]
    return (y, *stats, *groups)


def _fake_backward(grad_y, x, group_mean, group_rstd, group_id, group_count, weight, num_groups, output_mask):
    param_dtype = weight.dtype if weight is not None else grad_y.dtype
    c = x.shape[1]
    return (torch.empty_like(x, memory_format=functional.output_memory_format(x)) if output_mask[0] else x.new_empty(0),
            x.new_empty(c, dtype=param_dtype) if output_mask[1] else x.new_empty(0),
            x.new_empty(c, dtype=param_dtype) if output_mask[2] else x.new_empty(0))


def _fake_update(running_mean, running_var, num_updates, channel_mean, channel_var, momentum):
    return None


compat.register_fake("dgn::group_norm", _fake_forward, _library)
compat.register_fake("dgn::group_norm_backward", _fake_backward, _library)
compat.register_fake("dgn::update_channel_stats_", _fake_update, _library)


# ------------------------------------------------------------------ vmap
def _fold(t, in_dim):
    """Move the vmapped dimension next to the batch and merge them: (B, N, ...) -> (B*N, ...)."""
    t = t.movedim(in_dim, 0)
    return t.reshape((t.shape[0] * t.shape[1],) + tuple(t.shape[2:])), t.shape[0]


def _loop(op, info, in_dims, *args):
    """The general rule: one call per vmapped slice, results stacked along dim 0."""
    outs = []
    for index in range(info.batch_size):
        outs.append(op(*(a.select(d, index) if d is not None else a for a, d in zip(args, in_dims))))
    stacked = tuple(torch.stack(parts) for parts in zip(*outs))
    return stacked, (0,) * len(stacked)


def _forward_vmap(info, in_dims, x, group_id, group_count, weight, bias, num_groups, eps, running_mean=None,
                  running_var=None, num_updates=None, momentum=0.1, channel_stats=True):
    outs, dims = _forward_vmap_all(info, in_dims, x, group_id, group_count, weight, bias, num_groups, eps,
                                   running_mean, running_var, num_updates, momentum)
    if channel_stats:
        return outs, dims
    empty = outs[1].new_empty((info.batch_size, 0) + tuple(outs[1].shape[2:]))
    return (outs[0], empty, empty.clone(), *outs[3:]), (0,) * 5


def _forward_vmap_all(info, in_dims, x, group_id, group_count, weight, bias, num_groups, eps, running_mean,
                      running_var, num_updates, momentum):
    running = (running_mean, running_var, num_updates)
    if any(d is not None for d in in_dims[7:10]):
        raise RuntimeError("vmap over DynamicGroupNorm's running statistics themselves is not supported: "
                           "put the layer in eval mode or pass track_channel_stats=False")
    # Per-sample statistics: a vmapped input is a bigger batch (GroupNorm's own rule), for the
    # running statistics too.
    if in_dims[0] is not None and all(d is None for d in in_dims[1:5]):
        folded, size = _fold(x, in_dims[0])
        outs = torch.ops.dgn.group_norm(folded, group_id, group_count, weight, bias, num_groups, eps, *running,
                                        momentum)
        return tuple(o.reshape((size, -1) + tuple(o.shape[1:])) for o in outs), (0,) * 5
    args = (x, group_id, group_count, weight, bias)
    outs = _loop(lambda *a: torch.ops.dgn.group_norm(*a, num_groups, eps), info, in_dims[:5], *args)
    if running_mean is not None:
        batch_mean, batch_var = (o.reshape((-1,) + tuple(o.shape[2:])) for o in outs[0][1:3])
        torch.ops.dgn.update_channel_stats_(*running, batch_mean, batch_var, momentum)
    return outs


def _backward_vmap(info, in_dims, grad_y, x, group_mean, group_rstd, group_id, group_count, weight, num_groups,
                   output_mask):
    args = (grad_y, x, group_mean, group_rstd, group_id, group_count, weight)
    return _loop(lambda *a: torch.ops.dgn.group_norm_backward(*a, num_groups, output_mask), info, in_dims[:7], *args)


def _update_vmap(info, in_dims, running_mean, running_var, num_updates, channel_mean, channel_var, momentum):
    if any(d is not None for d in in_dims[:3]):
        raise RuntimeError("vmap over DynamicGroupNorm's running statistics themselves is not supported: "
                           "put the layer in eval mode or pass track_channel_stats=False")
    # A vmapped batch of statistics is one bigger batch, as without vmap.
    mean = _fold(channel_mean, in_dims[3])[0] if in_dims[3] is not None else channel_mean
    var = _fold(channel_var, in_dims[4])[0] if in_dims[4] is not None else channel_var
    torch.ops.dgn.update_channel_stats_(running_mean, running_var, num_updates, mean, var, momentum)
    return None, None


# Without torch.library.register_vmap (torch < 2.4) these register a rule that says vmap is unsupported.
compat.register_vmap("dgn::group_norm", _forward_vmap, _library)
compat.register_vmap("dgn::group_norm_backward", _backward_vmap, _library)
compat.register_vmap("dgn::update_channel_stats_", _update_vmap, _library)


# ------------------------------------------------------------------ kernels per device
_BUILD = "pip install --no-build-isolation ."  # (-e for a checkout): builds the extensions against this torch


def _native_unavailable(error: ImportError) -> str:
    """Why ``dgn_plugins._C`` did not import, in the words of its fix: not built, or built for another torch."""
    try:
        built = importlib.util.find_spec("dgn_plugins._C") is not None
    except ImportError:  # a finder that refuses the name: report its error
        built = True
    if not built:
        return ("dgn_plugins._C is not built (no compiled dgn_plugins/_C*.so: pip's isolated build had no torch, "
                f"DGN_BUILD_EXT=0 was set, or compiling failed); build it with `{_BUILD}`")
    return (f"dgn_plugins._C is built but does not load on torch {compat.TORCH_VERSION} "
            f"({type(error).__name__}: {error}); rebuild it with `{_BUILD}`")


def _load_native():
    """The C++ extension with its CPU and autograd kernels registered; None (and why) if it is unusable."""
    try:
        from . import _C
    except ImportError as error:  # not built (pure-Python install) or built against another torch
        return None, _native_unavailable(error)
    try:
        _C.register_kernels()
    except RuntimeError as error:  # built from other sources than these schemas
        reason = (f"dgn_plugins._C does not match this version of dgn_plugins ({str(error).splitlines()[0]}); "
                  f"rebuild it with `{_BUILD}`")
        warnings.warn(f"{reason}; using the plain PyTorch kernels", RuntimeWarning, stacklevel=2)
        return None, reason
    return _C, None


_native, _native_error = _load_native()
if _native is None and not _native_error.startswith("dgn_plugins._C does not match"):
    # Said once, at import, unless the user chose the plain kernels.
    if os.environ.get("DGN_BUILD_EXT", "").strip() != "0" and os.environ.get("DGN_BACKEND", "").strip() != "reference":
        warnings.warn(f"{_native_error}. Meanwhile the plain PyTorch kernels run (several times slower); set "
                      "DGN_BUILD_EXT=0 to use them without this warning.", RuntimeWarning, stacklevel=2)


def native_available() -> bool:
    """True when the C++ extension ``dgn_plugins._C`` is loaded (its kernels are registered)."""
    return _native is not None


def native_import_error() -> Optional[str]:
    """Why the extension is unavailable (None when it is available)."""
    return _native_error


def triton_available() -> bool:
    """True when the Triton kernels import."""
    from .kernels import triton_available as available

    return available()


def _triton_kernels():
    """The Triton forward and backward, each falling back to the plain kernel where it fails to compile or launch."""
    from .kernels import triton_dgn
    from .kernels.fallback import guarded

    return (guarded(triton_dgn.forward_kernel, _forward_kernel, "forward"),
            guarded(triton_dgn.backward_kernel, _backward_kernel, "backward"))


if _native is not None:
    # Devices the extension has no kernel for run the plain formulation under its autograd kernel.
    _library.impl("group_norm", _forward_kernel, "CompositeExplicitAutograd")
    _library.impl("group_norm_backward", _backward_kernel, "CompositeExplicitAutograd")
    _library.impl("update_channel_stats_", update_channel_stats_reference, "CompositeExplicitAutograd")
    if triton_available():
        _triton_forward, _triton_backward = _triton_kernels()
        _library.impl("group_norm", _triton_forward, "CUDA")
        _library.impl("group_norm_backward", _triton_backward, "CUDA")
else:
    # No autograd kernel without the extension: the composite is the operator, on every device.
    _library.impl("group_norm", _composite, "CompositeImplicitAutograd")
    _library.impl("group_norm_backward", _backward_kernel, "CompositeExplicitAutograd")
    _library.impl("update_channel_stats_", update_channel_stats_reference, "CompositeExplicitAutograd")


# ------------------------------------------------------------------ backend choice
_backend = "native"
_override: Optional[torch.library.Library] = None


def _override_library(name: str, device_types) -> torch.library.Library:
    """A library whose registrations put ``name``'s kernels in front for these devices."""
    library = torch.library.Library("dgn", "IMPL")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Oo]verrid.*")
        for device in device_types:
            if name == "reference":
                # Autograd differentiates the plain ops (double backward, forward AD included).
                compat.impl_override(library, "group_norm", _composite, f"Autograd{device}")
                compat.impl_override(library, "group_norm", _forward_kernel, device)
                compat.impl_override(library, "group_norm_backward", _backward_kernel, device)
                compat.impl_override(library, "update_channel_stats_", update_channel_stats_reference, device)
            else:  # triton
                forward, backward = _triton_kernels()
                compat.impl_override(library, "group_norm", forward, device)
                compat.impl_override(library, "group_norm_backward", backward, device)
    return library


def _check_backend(name: str) -> str:
    name = (name or "native").strip().lower()
    if name in ("auto", "default"):
        name = "native"
    if name not in BACKENDS:
        raise ValueError(f"unknown DGN backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if name == "triton":
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("the Triton backend puts Triton's kernels on CPU tensors, which needs its interpreter "
                               "(TRITON_INTERPRET=1 before triton is imported); CUDA tensors take them by default")
        if not triton_available():
            from .kernels import triton_import_error

            raise RuntimeError(f"the Triton backend is unavailable: {triton_import_error()}")
        from .kernels import triton_interpreter_supported

        if not triton_interpreter_supported():
            import triton

            raise RuntimeError(f"the Triton backend on CPU tensors needs Triton's interpreter, which Triton "
                               f"{triton.__version__} does not have (TRITON_INTERPRET=1 runs kernels on the CPU from "
                               "Triton 3.0)")
        if _native is None:
            raise RuntimeError(f"the Triton backend on CPU tensors needs the C++ extension's autograd kernel "
                               f"({_native_error})")
    return name


def set_backend(name: str) -> None:
    """Choose the kernels for the rest of the process: ``"native"``, ``"reference"`` or ``"triton"``.

    ``"native"`` (default) lets the dispatcher pick the fastest kernel per
    device; ``"reference"`` runs the plain PyTorch formulation everywhere
    (the reference the kernels are tested against, differentiated by
    autograd); ``"triton"`` runs the Triton kernels on CPU tensors too (with
    ``TRITON_INTERPRET=1``). Changing it re-registers kernels: choose once,
    not per call.
    """
    global _backend, _override
    name = _check_backend(name)
    if _override is not None:
        compat.destroy_library(_override)
        _override = None
    if name == "reference" and _native is not None:
        _override = _override_library("reference", ("CPU", "CUDA"))
    elif name == "triton":
        _override = _override_library("triton", ("CPU",))
    _backend = name


def backend() -> str:
    """The backend chosen by :func:`set_backend` (or ``DGN_BACKEND``)."""
    return _backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """:func:`set_backend` for a ``with`` block, restoring the previous choice after it."""
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


set_backend(os.environ.get("DGN_BACKEND", "native"))
