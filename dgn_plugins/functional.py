"""Group normalization over an arbitrary channel grouping, with analytic backward.

The grouping is a per-channel group id, so groups need be neither contiguous
nor equal in size. Activations are never permuted into group order: the
forward takes per-channel statistics ([N, C], numerically stable), combines
them per group on [N, K] tensors, and applies one per-channel affine
``y = x * scale + shift``. The backward needs two per-channel reductions
(``sum(dy)`` and ``sum(dy * x)``) and one fused elementwise pass. Like
``F.group_norm`` it saves only the input, the weight and the [N, K] mean and
reciprocal standard deviation for backward.

Statistics are computed in float32 for float16/bfloat16 inputs (float64 for
float64) and the output has the input's dtype.

The functions below dispatch to a fused fast path when one applies
(:mod:`dgn_plugins.kernels`: Triton on CUDA, the C++ extension on the CPU,
``torch.compile`` for CPU inputs it does not run;
``DGN_BACKEND=auto|torch|native|compile|triton`` chooses) with the same
outputs and gradients; the plain ops here stay the reference.
``group_norm_by_assignment`` is the export formulation: standard operators
only, for TorchScript, tracing, ``torch.export`` and ONNX.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .kernels import select_backend
from .layout import GroupLayout

__all__ = [
    "dynamic_group_norm",
    "dynamic_group_norm_with_stats",
    "compute_dtype",
    "assignment_matrix",
    "group_norm_by_assignment",
]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the statistics: float64 stays, everything else uses float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _per_channel(t: Tensor, ndim: int) -> Tensor:
    """View an [N, C] tensor so that it broadcasts against an (N, C, *) input."""
    return t.reshape(t.shape + (1,) * (ndim - 2))


def _group_sum(values: Tensor, group_id: Tensor, num_groups: int) -> Tensor:
    """Sum [N, C] values into [N, K] by group id."""
    out = values.new_zeros(values.shape[0], num_groups)
    return out.index_add_(1, group_id, values)


def _sum_dy_x(dy: Tensor, x: Tensor, spatial: Tuple[int, ...], scratch: Optional[Tensor]) -> Tensor:
    """Per-channel ``sum(dy * x)`` without a full-size temporary where possible.

    For standard-contiguous tensors a batched dot product (bmm) reads both
    inputs once. Otherwise (channels_last, expanded gradients) the product is
    written into ``scratch``, the buffer that will hold dx anyway.
    """
    n, c = x.shape[:2]
    if x.is_contiguous() and dy.is_contiguous() and x.dtype == dy.dtype:
        s = x[0, 0].numel() if n * c else 1
        return torch.bmm(dy.reshape(n * c, 1, s), x.reshape(n * c, s, 1)).reshape(n, c)
    if scratch is None:
        return (dy * x).sum(spatial)
    torch.mul(dy, x, out=scratch)
    return scratch.sum(spatial)


#: Above this |channel mean| / group std, the affine pass first subtracts the
#: channel mean (exact in floating point when the two are close), so the
#: output does not inherit the rounding error of a product of size |mean|/std.
PIVOT_RATIO = 16.0


def _group_statistics(channel_mean, channel_var, group_id, group_count, num_groups, eps):
    """Float64 group mean and 1/std from per-channel stats ([N, C] -> [N, K])."""
    channel_mean, channel_var = channel_mean.double(), channel_var.double()
    group_mean = _group_sum(channel_mean, group_id, num_groups) / group_count
    # Within-group variance = mean over channels of (channel variance +
    # squared deviation of the channel mean from the group mean): no
    # cancellation, unlike E[x^2] - E[x]^2.
    deviation = channel_mean - group_mean[:, group_id]
    group_var = _group_sum(channel_var + deviation * deviation, group_id, num_groups) / group_count
    return group_mean, torch.rsqrt(group_var + eps)


def _needs_pivot(x, channel_mean, group_rstd, group_id) -> bool:
    # A host-side decision: free on CPU. GPU inputs take the fused kernel or
    # the single-pass path, which is as exact as native GN there.
    if x.device.type != "cpu" or channel_mean.numel() == 0:
        return False
    ratio = channel_mean.double().abs() * group_rstd[:, group_id]
    return bool(ratio.max() > PIVOT_RATIO)


def save_for_group_norm_backward(ctx, x, weight, bias, group_mean, group_rstd, channel_mean, channel_var,
                                 **grouping) -> None:
    """What every backend's Function keeps for backward: exactly ``F.group_norm``'s
    tensors (input, weight, [N, K] mean and 1/std), the grouping as plain attributes,
    and the statistics outputs marked non-differentiable."""
    ctx.save_for_backward(x, weight, group_mean, group_rstd)
    for name, value in grouping.items():
        setattr(ctx, name, value)
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(channel_mean, channel_var)


def affine_gradients(ctx, weight, grad_y, grad_weight, grad_bias):
    """``(dweight, dbias)`` in their parameters' dtype, None where autograd asked for none."""
    keep_weight = weight is not None and ctx.needs_input_grad[1]
    keep_bias = ctx.has_bias and ctx.needs_input_grad[2]
    return (grad_weight.to(weight.dtype) if keep_weight else None,
            grad_bias.to(grad_y.dtype if weight is None else weight.dtype) if keep_bias else None)


class _DynamicGroupNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, group_id, group_count, num_groups, eps):
        stats_dtype = compute_dtype(x.dtype)
        xs = x if x.dtype == stats_dtype else x.to(stats_dtype)
        spatial = tuple(range(2, x.dim()))
        ndim = x.dim()

        centered = None
        if xs.numel() and xs.is_contiguous():
            # Two-pass per-channel statistics, both passes vectorised: the mean
            # (cascade sum), then the root-mean-square of the centred input,
            # which is written into what becomes the output (no temporary).
            channel_mean = xs.mean(dim=spatial, dtype=torch.float64).to(stats_dtype)
            centered = torch.sub(xs, _per_channel(channel_mean, ndim), out=xs if xs is not x else None)
            elements = centered[0, 0].numel()
            channel_rms = torch.linalg.vector_norm(centered, 2, dim=spatial) / elements**0.5
            channel_var = channel_rms * channel_rms
        elif xs.numel():
            # Other memory layouts: torch's var_mean, a stable one-pass
            # (Welford-style) reduction, unlike sum / sum-of-squares.
            channel_var, channel_mean = torch.var_mean(xs, dim=spatial, correction=0)
        else:  # N = 0 (no RoIs): nothing to normalise, no statistics
            channel_mean = xs.new_zeros(x.shape[:2])
            channel_var = xs.new_zeros(x.shape[:2])
        group_mean, group_rstd = _group_statistics(
            channel_mean, channel_var, group_id, group_count.double(), num_groups, eps
        )

        # y = x * scale + shift, scale and shift per (sample, channel), in float64.
        scale = group_rstd[:, group_id]
        if weight is not None:
            scale = scale * weight.double()
        offset = group_mean[:, group_id]
        pivot = centered is not None or _needs_pivot(x, channel_mean, group_rstd, group_id)
        if pivot:  # y = (x - m_c) * scale + shift'
            offset = offset - channel_mean.double()
        shift = -offset * scale
        if bias is not None:
            shift = shift + bias.double()
        scale = _per_channel(scale.to(stats_dtype), ndim)
        shift = _per_channel(shift.to(stats_dtype), ndim)
        if pivot:
            if centered is None:
                centered = torch.sub(xs, _per_channel(channel_mean, ndim), out=xs if xs is not x else None)
            y = torch.addcmul(shift, centered, scale, out=centered)
        else:
            y = torch.addcmul(shift, xs, scale)
        if y.dtype != x.dtype:
            y = y.to(x.dtype)

        save_for_group_norm_backward(ctx, x, weight, bias, group_mean.to(stats_dtype), group_rstd.to(stats_dtype),
                                     channel_mean, channel_var,
                                     group_id=group_id, group_count=group_count, num_groups=num_groups)
        return y, channel_mean, channel_var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        x, weight, group_mean, group_rstd = ctx.saved_tensors
        group_mean, group_rstd = group_mean.double(), group_rstd.double()
        group_id, num_groups = ctx.group_id, ctx.num_groups
        stats_dtype = compute_dtype(x.dtype)
        ndim = x.dim()
        spatial = tuple(range(2, ndim))
        elements_per_channel = x[0, 0].numel() if x.shape[0] * x.shape[1] else 1

        xs = x if x.dtype == stats_dtype else x.to(stats_dtype)
        dys = grad_y if grad_y.dtype == stats_dtype else grad_y.to(stats_dtype)
        needs_dx = ctx.needs_input_grad[0]
        grad_x = torch.empty_like(xs) if needs_dx else None

        # Two per-channel reductions over the activations, then [N, C] math in float64.
        sum_dy = dys.sum(spatial).double()
        sum_dy_x = _sum_dy_x(dys, xs, spatial, grad_x).double()
        rstd_c = group_rstd[:, group_id]
        mean_c = group_mean[:, group_id]
        sum_dy_xhat = rstd_c * (sum_dy_x - mean_c * sum_dy)  # per channel: sum of dy * x_hat

        grad_weight, grad_bias = affine_gradients(ctx, weight, grad_y, sum_dy_xhat.sum(0), sum_dy.sum(0))

        if needs_dx:
            w = weight.double() if weight is not None else None
            weighted_dy = sum_dy * w if w is not None else sum_dy
            weighted_dy_xhat = sum_dy_xhat * w if w is not None else sum_dy_xhat
            group_elements = ctx.group_count.double() * elements_per_channel
            # dx = r*w*dy - r/M * sum_k(w dy) - r*x_hat/M * sum_k(w dy x_hat)
            mean_wdy = _group_sum(weighted_dy, group_id, num_groups) / group_elements
            mean_wdy_xhat = _group_sum(weighted_dy_xhat, group_id, num_groups) / group_elements
            coef_x = -group_rstd * group_rstd * mean_wdy_xhat  # [N, K]
            coef_const = -group_rstd * mean_wdy - group_mean * coef_x  # [N, K]
            coef_dy = rstd_c * w if w is not None else rstd_c  # [N, C]
            torch.addcmul(
                _per_channel(coef_const[:, group_id].to(stats_dtype), ndim),
                xs,
                _per_channel(coef_x[:, group_id].to(stats_dtype), ndim),
                out=grad_x,
            )
            grad_x.addcmul_(dys, _per_channel(coef_dy.to(stats_dtype), ndim))
            if grad_x.dtype != x.dtype:
                grad_x = grad_x.to(x.dtype)
        return grad_x, grad_weight, grad_bias, None, None, None, None


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


def dynamic_group_norm_with_stats(
    x: Tensor,
    group_id: Tensor,
    num_groups: int,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    group_count: Optional[Tensor] = None,
    *,
    layout: Optional[GroupLayout] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """Normalize ``x`` (N, C, *) over groups given by ``group_id`` ([C]).

    Returns ``(y, channel_mean, channel_var)``: the per-sample, per-channel
    statistics ([N, C], biased variance) come for free from the forward and
    feed DGN's running channel statistics. ``group_count`` ([K], floating) may
    be passed to avoid recounting group sizes on every call, and ``layout``
    (the same grouping as a :class:`GroupLayout`) to spare the Triton path
    sorting the channels by group on every call.
    """
    _check_input(x, group_id)
    group_id = group_id.long()
    if group_count is None:
        group_count = torch.bincount(group_id, minlength=num_groups)
    group_count = group_count.to(x.device)
    squeeze = x.dim() == 2
    if squeeze:  # (N, C): each channel is one element
        x = x.unsqueeze(-1)
    backend = select_backend(x)
    if backend == "triton":
        from .kernels.triton_dgn import dynamic_group_norm_triton

        if layout is None or layout.offsets.device != x.device:
            layout = GroupLayout.from_group_ids(group_id.to(x.device), num_groups)
        y, channel_mean, channel_var = dynamic_group_norm_triton(x, layout, weight, bias, eps)
    else:
        if backend == "native":
            from .kernels.cpu_native import NativeDynamicGroupNormFunction as function
        elif backend == "compile":
            from .kernels.cpu_compiled import CompiledDynamicGroupNormFunction as function
        else:
            function = _DynamicGroupNormFunction
        y, channel_mean, channel_var = function.apply(x, weight, bias, group_id, group_count, num_groups, eps)
    if squeeze:
        y = y.squeeze(-1)
    return y, channel_mean, channel_var


def dynamic_group_norm(
    x: Tensor,
    group_id: Tensor,
    num_groups: int,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    group_count: Optional[Tensor] = None,
    *,
    layout: Optional[GroupLayout] = None,
) -> Tensor:
    """Group normalization where group ``k`` is ``{c : group_id[c] == k}``."""
    return dynamic_group_norm_with_stats(x, group_id, num_groups, weight, bias, eps, group_count, layout=layout)[0]


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
