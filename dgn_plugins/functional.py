"""The math of DGN: group normalization over an arbitrary channel grouping.

``dynamic_group_norm`` / ``dynamic_group_norm_with_stats`` call the operator
``torch.ops.dgn.group_norm`` (:mod:`dgn_plugins.ops`): the dispatcher picks
its kernel by device (the C++ extension on the CPU, Triton on CUDA, the plain
formulation below elsewhere), and autograd, ``torch.compile``, ``vmap`` and
forward-mode AD see one operator.

This module also holds the plain-PyTorch formulations, which are

- the reference the kernels are tested against and the fallback where no
  kernel exists (:func:`reference_forward`, :func:`reference_backward`);
- written in differentiable operations only, so that where the operator needs
  more than a first derivative (double backward, forward-mode AD) autograd
  differentiates :func:`reference_forward` itself;
- the portable graph (:func:`group_norm_by_assignment`, standard operators
  only) that TorchScript, tracing, ``torch.export`` and ONNX record.

Precision: statistics are float32 for float16 / bfloat16 / float32 inputs and
float64 for float64 ones; sums over activations are accumulated in float64;
group statistics and the per-channel affine are formed in float64.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from . import compat

__all__ = [
    "dynamic_group_norm",
    "dynamic_group_norm_with_stats",
    "compute_dtype",
    "assignment_matrix",
    "group_norm_by_assignment",
    "reference_forward",
    "reference_backward",
    "update_channel_stats_reference",
]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the statistics: float64 stays, everything else uses float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _per_channel(t: Tensor, ndim: int) -> Tensor:
    """View an [N, C] tensor so that it broadcasts against an (N, C, *) input."""
    return t.reshape(t.shape + (1,) * (ndim - 2))


def _group_sum(values: Tensor, group_id: Tensor, num_groups: int) -> Tensor:
    """Sum [N, C] values into [N, K] by group id (differentiable)."""
    if compat.is_compiling():  # see _to_channels
        return values.matmul(_membership(group_id, num_groups, values.dtype))
    return values.new_zeros(values.shape[0], num_groups).index_add(1, group_id, values)


def _to_channels(values: Tensor, group_id: Tensor) -> Tensor:
    """Each channel's entry of an [N, K] tensor, [N, C] (differentiable).

    Under ``torch.compile`` both this and :func:`_group_sum` are one-hot matrix products instead of
    an index and an ``index_add``: torch 2.1's Inductor (the OpenMMLab 3.x stack's) miscompiles
    CPU scatter-adds (``index_add``, ``index_put(accumulate=True)``, the backward of an index), so a
    compiled layer gave wrong outputs and gradients there. Sums of one-hot products are exact.
    """
    if compat.is_compiling():
        return values.matmul(_membership(group_id, values.shape[1], values.dtype).t())
    return values[:, group_id]


def _membership(group_id: Tensor, num_groups: int, dtype: torch.dtype) -> Tensor:
    """The one-hot [C, K] membership matrix, by comparison: ``one_hot`` cannot be traced with fake tensors on torch 2.1."""
    return (group_id.unsqueeze(1) == torch.arange(num_groups, device=group_id.device)).to(dtype)


def _channel_moments(x: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``(pivot, mean, var)`` per (sample, channel), [N, C]; mean and var in float64.

    Two passes: the float64-accumulated mean, rounded to the compute dtype, is
    the pivot; the variance is ``mean((x - p)^2) - mean(x - p)^2`` about it,
    which does not cancel (``x - p`` is small where the mean dwarfs the spread).
    The pivot carries no gradient: the output does not depend on it.
    """
    stats_dtype = compute_dtype(x.dtype)
    spatial = tuple(range(2, x.dim()))
    xs = x.to(stats_dtype)
    pivot = xs.mean(dim=spatial, dtype=torch.float64).to(stats_dtype).detach()
    centred = xs - _per_channel(pivot, x.dim())
    offset = centred.mean(dim=spatial, dtype=torch.float64)
    var = (centred * centred).mean(dim=spatial, dtype=torch.float64) - offset * offset
    return pivot, pivot.double() + offset, var.clamp_min(0.0)


def reference_forward(
    x: Tensor, group_id: Tensor, group_count: Tensor, weight: Optional[Tensor], bias: Optional[Tensor],
    num_groups: int, eps: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The operator's forward in plain, differentiable PyTorch ops.

    Returns ``(y, channel_mean, channel_var, group_mean, group_rstd)``: y in
    x's dtype and memory format, statistics ([N, C], [N, K]) in
    :func:`compute_dtype`. ``y = (x - p_c) * scale_c + shift_c`` with ``p_c``
    the channel's pivot, so the output does not inherit the rounding error of
    a product of size ``|mean| / std``.
    """
    if x.dim() == 2:  # (N, C): one element per channel
        y, *stats = reference_forward(x.unsqueeze(-1), group_id, group_count, weight, bias, num_groups, eps)
        return (y.squeeze(-1), *stats)
    stats_dtype = compute_dtype(x.dtype)
    n, c = x.shape[:2]
    ndim = x.dim()
    if x.numel() == 0:  # no samples (no RoIs) or no positions: nothing to normalise
        empty = x.new_zeros((n, c), dtype=stats_dtype)
        y = x.clone()
        for parameter in (weight, bias):  # still part of the graph: their gradients are zeros, as GN's
            if parameter is not None:
                y = y + _per_channel(parameter.to(x.dtype).unsqueeze(0), ndim) * 0
        return (y, empty, empty.clone(), x.new_zeros((n, num_groups), dtype=stats_dtype),
                x.new_zeros((n, num_groups), dtype=stats_dtype))
    group_id = group_id.long()
    count = group_count.to(torch.float64)
    pivot, channel_mean, channel_var = _channel_moments(x)
    group_mean = _group_sum(channel_mean, group_id, num_groups) / count
    # Within-group variance = mean over channels of (channel variance + squared deviation
    # of the channel mean from the group mean): no cancellation, unlike E[x^2] - E[x]^2.
    deviation = channel_mean - _to_channels(group_mean, group_id)
    group_var = _group_sum(channel_var + deviation * deviation, group_id, num_groups) / count
    group_rstd = torch.rsqrt(group_var + eps)
    scale = _to_channels(group_rstd, group_id)
    if weight is not None:
        scale = scale * weight.double()
    shift = (pivot.double() - _to_channels(group_mean, group_id)) * scale
    if bias is not None:
        shift = shift + bias.double()
    centred = x.to(stats_dtype) - _per_channel(pivot, ndim)
    y = centred * _per_channel(scale.to(stats_dtype), ndim) + _per_channel(shift.to(stats_dtype), ndim)
    y = in_output_layout(y, x)
    return (y, channel_mean.to(stats_dtype), channel_var.to(stats_dtype), group_mean.to(stats_dtype),
            group_rstd.to(stats_dtype))


def channels_last_strides(x: Tensor) -> bool:
    """Whether (N, C, *) is stored as (N, *, C), as the native kernels walk channels last: channels-last
    2d / 3d tensors, and a transformer's (B, L, C) tokens viewed as (B, C, L) (the token layer's sequence
    domain)."""
    if x.dim() < 3 or x.stride(1) != 1:
        return False
    expected = x.shape[1]
    for d in range(x.dim() - 1, 1, -1):
        if x.shape[d] != 1 and x.stride(d) != expected:
            return False
        expected *= x.shape[d]
    return x.shape[0] == 1 or x.stride(0) == expected


def output_memory_format(x: Tensor) -> torch.memory_format:
    """The memory format outputs keep: channels-last inputs give channels-last outputs, (B, C, L) views of
    (B, L, C) tokens give outputs of the same strides (``preserve_format``, x being dense).

    Dynamo before torch 2.3 (which traces this plain formulation) cannot trace ``is_contiguous``: there the
    elementwise result keeps the input's layout (``preserve_format``)."""
    if not compat.FUNCTIONALIZES_MUTABLE_OPS and compat.is_compiling():
        return torch.preserve_format
    if not x.is_contiguous():
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            return torch.channels_last
        if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
            return torch.channels_last_3d
        if channels_last_strides(x):
            return torch.preserve_format
    return torch.contiguous_format


def in_output_layout(t: Tensor, x: Tensor) -> Tensor:
    """``t`` (x's shape) in x's dtype and the layout the operator's outputs keep (``output_memory_format``):
    the plain formulation's outputs are laid out as the native kernels' and the fake kernels' are."""
    memory_format = output_memory_format(x)
    t = t.to(dtype=x.dtype, memory_format=memory_format)
    if memory_format is torch.preserve_format and not compat.is_compiling() and t.stride() != x.stride():
        t = torch.empty_like(x).copy_(t)  # x is dense here: its strides
    return t


def reference_backward(
    grad_y: Tensor, x: Tensor, group_mean: Tensor, group_rstd: Tensor, group_id: Tensor, group_count: Tensor,
    weight: Optional[Tensor], num_groups: int, output_mask: List[bool],
) -> Tuple[Tensor, Tensor, Tensor]:
    """``(dx, dweight, dbias)`` from what the forward saved, in plain PyTorch ops.

    Everything is written in terms of ``x - mean`` (the saved group mean), so
    that nothing cancels when a group's mean dwarfs its spread. Outputs not
    asked for by ``output_mask`` come back empty.
    """
    if x.dim() == 2:
        dx, dw, db = reference_backward(grad_y.unsqueeze(-1), x.unsqueeze(-1), group_mean, group_rstd, group_id,
                                        group_count, weight, num_groups, output_mask)
        return (dx.squeeze(-1) if output_mask[0] else dx), dw, db
    stats_dtype = compute_dtype(x.dtype)
    ndim = x.dim()
    spatial = tuple(range(2, ndim))
    group_id = group_id.long()
    empty = x.new_empty(0)
    if x.numel() == 0:
        zeros = x.new_zeros(x.shape[1], dtype=weight.dtype if weight is not None else x.dtype)
        return (torch.zeros_like(x) if output_mask[0] else empty, zeros if output_mask[1] else empty,
                zeros.clone() if output_mask[2] else empty)
    rstd = group_rstd.double()
    rstd_c = _to_channels(rstd, group_id)
    centred = x.to(stats_dtype) - _per_channel(_to_channels(group_mean.to(stats_dtype), group_id), ndim)
    dy = grad_y.to(stats_dtype)
    sum_dy = dy.sum(dim=spatial, dtype=torch.float64)
    sum_dy_xhat = rstd_c * (dy * centred).sum(dim=spatial, dtype=torch.float64)
    param_dtype = weight.dtype if weight is not None else grad_y.dtype
    grad_weight = sum_dy_xhat.sum(0).to(param_dtype) if output_mask[1] else empty
    grad_bias = sum_dy.sum(0).to(param_dtype) if output_mask[2] else empty
    grad_x = empty
    if output_mask[0]:
        w = weight.double() if weight is not None else None
        weighted_dy = sum_dy * w if w is not None else sum_dy
        weighted_dy_xhat = sum_dy_xhat * w if w is not None else sum_dy_xhat
        elements = group_count.to(torch.float64) * x[0, 0].numel()
        # dx = r w dy - r mean_k(w dy) - r^2 (x - mean) mean_k(w dy x_hat)
        mean_wdy = _group_sum(weighted_dy, group_id, num_groups) / elements
        mean_wdy_xhat = _group_sum(weighted_dy_xhat, group_id, num_groups) / elements
        coef_dy = rstd_c * w if w is not None else rstd_c
        coef_centred = _to_channels(-rstd * rstd * mean_wdy_xhat, group_id)
        coef_const = _to_channels(-rstd * mean_wdy, group_id)
        grad_x = (dy * _per_channel(coef_dy.to(stats_dtype), ndim)
                  + centred * _per_channel(coef_centred.to(stats_dtype), ndim)
                  + _per_channel(coef_const.to(stats_dtype), ndim))
        grad_x = in_output_layout(grad_x, x)
    return grad_x, grad_weight, grad_bias


@torch.no_grad()
def update_channel_stats_reference(running_mean: Tensor, running_var: Tensor, num_updates: Tensor,
                                   channel_mean: Tensor, channel_var: Tensor, momentum: float) -> None:
    """The EMA of the running channel statistics in plain ops: batch mean and total variance per channel.

    The first update seeds them, but only from a batch whose statistics are all
    finite (a non-finite first batch would otherwise leave unseeded channels
    that later batches lerp from their initial values); later non-finite
    values leave the running ones unchanged. Written without data-dependent
    branches, so that ``torch.compile`` traces it as it stands.
    """
    if channel_mean.shape[0] == 0:
        return
    batch_mean = channel_mean.double().mean(0)
    batch_var = (channel_var.double() + (channel_mean.double() - batch_mean).pow(2)).mean(0)
    first = num_updates == 0
    seedable = torch.isfinite(batch_mean).all() & torch.isfinite(batch_var).all()
    for running, batch in ((running_mean, batch_mean), (running_var, batch_var)):
        current = running.double()
        updated = torch.lerp(current, batch, momentum)
        kept = torch.where(torch.isfinite(updated), updated, current)
        running.copy_(torch.where(first, torch.where(seedable, batch, current), kept))
    num_updates.add_((~first | seedable).to(num_updates.dtype))


def _check_input(x: Tensor, group_id: Tensor) -> None:
    if x.dim() < 2:
        raise ValueError(f"expected input of shape (N, C, *), got {tuple(x.shape)}")
    if x.shape[1] != group_id.numel():
        raise ValueError(
            f"expected input with {group_id.numel()} channels (dim 1), got {x.shape[1]} channels "
            f"in input of shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point input, got {x.dtype}")


def _check_values_per_group(x: Tensor, group_count: Tensor) -> None:
    """GroupNorm's own check: a group holding a single value has no variance to normalise by."""
    if x.shape[0] * x[0, 0].numel() == 1 and int(group_count.min()) == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)}")


_NO_RUNNING = (None, None, None, 0.1)  # the schema's defaults: no running statistics to update


def dynamic_group_norm_with_stats(
    x: Tensor,
    group_id: Tensor,
    num_groups: int,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    group_count: Optional[Tensor] = None,
    running_stats: Optional[Tuple[Tensor, Tensor, Tensor, float]] = None,
    channel_stats: bool = True,
) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Normalize ``x`` (N, C, *) over groups given by ``group_id`` ([C]).

    Returns ``(y, channel_mean, channel_var)``: the per-sample, per-channel
    statistics ([N, C], biased variance, not differentiable) come for free
    from the forward and feed DGN's running channel statistics.
    ``group_count`` ([K] group sizes) may be passed to avoid recounting them
    on every call. ``running_stats`` = ``(running_mean, running_var,
    num_updates, momentum)`` are updated in place from this batch's
    statistics (a layer's training step). ``channel_stats=False`` returns
    ``(y, None, None)`` and spares the kernel the [N, C] statistics (for
    tokens, rows of one value per channel, a copy of the input and zeros);
    the running statistics are updated all the same. Under tracing and ``torch.export``
    the portable formulation is recorded instead (standard operators only, so
    the graph runs without this package; no statistics, no update).
    """
    if torch.jit.is_tracing() or compat.is_exporting():
        return group_norm_by_assignment(x, assignment_matrix(group_id, num_groups), weight, bias, eps), None, None
    _check_input(x, group_id)
    if group_count is None:
        group_count = torch.bincount(group_id.long(), minlength=num_groups)
    if x.numel() == x.shape[1]:  # one value per channel in the whole batch
        _check_values_per_group(x, group_count)
    if not compat.FUNCTIONALIZES_MUTABLE_OPS and compat.is_compiling():
        # torch.compile before torch 2.3 cannot trace an operator whose schema writes to its inputs
        # (the running statistics): it compiles the plain formulation and its EMA instead.
        outs = reference_forward(x, group_id, group_count, weight, bias, num_groups, eps)
        if running_stats is not None:
            update_channel_stats_reference(*running_stats[:3], outs[1], outs[2], running_stats[3])
    else:
        # The overload, every argument positional: the packet's keyword path costs about a microsecond a call.
        running_mean, running_var, num_updates, momentum = running_stats if running_stats is not None else _NO_RUNNING
        outs = torch.ops.dgn.group_norm.default(x, group_id, group_count, weight, bias, num_groups, eps, running_mean,
                                                running_var, num_updates, momentum, channel_stats)
    if not channel_stats:
        return outs[0], None, None
    return outs[0], outs[1], outs[2]


def dynamic_group_norm(
    x: Tensor,
    group_id: Tensor,
    num_groups: int,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    group_count: Optional[Tensor] = None,
) -> Tensor:
    """Group normalization where group ``k`` is ``{c : group_id[c] == k}``."""
    return dynamic_group_norm_with_stats(x, group_id, num_groups, weight, bias, eps, group_count)[0]


def assignment_matrix(group_id: Tensor, num_groups: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """One-hot [C, K] matrix: entry (c, k) is 1 where channel c belongs to group k."""
    return torch.nn.functional.one_hot(group_id.long(), num_groups).to(dtype)


def group_norm_by_assignment(
    x: Tensor, assignment: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = 1e-5
) -> Tensor:
    """The same normalization in standard operators only, for export and inference.

    Per-channel mean and variance (two passes: no cancellation), combined per
    group by a matrix product with the one-hot ``assignment`` ([C, K]),
    broadcast back by its transpose, then one per-channel affine. It exports
    to ONNX as ReduceMean / MatMul / elementwise ops, and scripts and traces.
    No backward of its own (autograd differentiates it) and no running
    statistics.
    """
    ndim = x.dim()
    stats_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xs = x.to(stats_dtype)
    flat = xs.flatten(2) if ndim > 2 else xs.unsqueeze(2)
    channel_mean = flat.mean(dim=2)
    centered = flat - channel_mean.unsqueeze(2)
    channel_var = (centered * centered).mean(dim=2)
    assignment = assignment.to(stats_dtype)
    group_count = assignment.sum(dim=0)
    group_mean = channel_mean.matmul(assignment) / group_count
    mean_c = group_mean.matmul(assignment.t())
    spread = channel_mean - mean_c
    group_var = (channel_var + spread * spread).matmul(assignment) / group_count
    scale = torch.rsqrt(group_var + eps).matmul(assignment.t())
    if weight is not None:
        scale = scale * weight.to(stats_dtype)
    shape = [x.shape[0], x.shape[1]] + [1] * (ndim - 2)
    y = (xs - mean_c.reshape(shape)) * scale.reshape(shape)
    if bias is not None:
        y = y + bias.to(stats_dtype).reshape([1, x.shape[1]] + [1] * (ndim - 2))
    return y.to(x.dtype)
