"""Compiled fast path: the forward and the backward each compiled to a few fused loops.

With plain PyTorch ops every elementwise step of DGN is its own pass over
activation-sized memory (forward + backward: about 11 passes against native
GN's 8). ``torch.compile`` (Inductor) fuses each of the two graphs below so
that the forward reads ``x`` twice and writes ``y`` once, and the backward
reads ``dy`` and ``x`` twice and writes ``dx`` once: GN's memory traffic.
Everything between the two activation passes is [N, C] / [N, K] math in
float64, as in :mod:`dgn_plugins.functional`. The sums are accumulated in
float64 too: Inductor adds sequentially (no cascade summation for dynamic
sizes), which costs accuracy on long rows in float32.

Numerics. The statistics are shifted sums: each (sample, channel) is shifted
by its own first element before summing ``x - p`` and ``(x - p)^2``, so no
cancellation occurs when the channel mean dwarfs its spread. The output is
``x * scale + shift`` as in the plain path, or ``(x - m) * scale + shift``
with ``m`` the group mean when that mean is large against the spread
(``shift`` formed in float64 either way); the backward works with ``x - m``
for the saved mean ``m``. One pass each.

Compilation costs seconds on the first call for each variant (dtype, number
of dimensions, memory format, affine or not); shapes are dynamic, so varying
batch, RoI counts and image sizes reuse the compiled code. If compilation
fails (no C++ compiler, unsupported platform) a warning is issued once and the
plain path takes over.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..functional import (PIVOT_RATIO, _group_statistics, _group_sum, affine_gradients, compute_dtype,
                          save_for_group_norm_backward)

__all__ = ["CompiledDynamicGroupNormFunction", "is_available"]


class _Rows:
    """A 2-D view of (N, C, *) activations whose outer loop parallelises whatever N is.

    NCHW: ``[N*C, S]``, one row per (sample, channel); channels_last:
    ``[N*S, C]``, one row per (sample, position). Inductor splits the row loop
    across threads (a loop nest over N, C, S would be split over N alone when
    N reached the thread count at compile time, leaving threads idle for
    smaller batches).
    """

    def __init__(self, shape, channels_last: bool) -> None:
        self.shape = shape
        self.n, self.c = shape[0], shape[1]
        self.s = shape[2:].numel()
        self.channels_last = channels_last

    def of(self, x: Tensor) -> Tensor:
        if self.channels_last:
            return x.movedim(1, -1).reshape(self.n * self.s, self.c)
        return x.reshape(self.n * self.c, self.s)

    def back(self, rows: Tensor) -> Tensor:
        if self.channels_last:
            return rows.reshape((self.n,) + tuple(self.shape[2:]) + (self.c,)).movedim(-1, 1)
        return rows.reshape(self.shape)

    def channel_sum(self, rows: Tensor) -> Tensor:
        """Sum over positions, [N, C]."""
        if self.channels_last:
            return rows.reshape(self.n, self.s, self.c).sum(1)
        return rows.sum(1).reshape(self.n, self.c)

    def first_position(self, rows: Tensor) -> Tensor:
        """The pivot: first element of every (sample, channel), [N, C]."""
        if self.channels_last:
            return rows.reshape(self.n, self.s, self.c)[:, 0, :]
        return rows[:, 0].reshape(self.n, self.c)

    def per_channel(self, t: Tensor) -> Tensor:
        """[N, C] values broadcast against the rows."""
        if self.channels_last:
            return t[:, None, :].expand(self.n, self.s, self.c).reshape(self.n * self.s, self.c)
        return t.reshape(self.n * self.c, 1)


def forward_graph(
    x: Tensor, channels_last: bool, group_id: Tensor, group_count: Tensor, num_groups: int,
    weight: Optional[Tensor], bias: Optional[Tensor], eps: float,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(y, channel_mean, channel_var, group_mean, group_rstd)``: one pass for the statistics, one for y."""
    view = _Rows(x.shape, channels_last)
    stats_dtype = compute_dtype(x.dtype)
    rows = view.of(x).to(stats_dtype)
    pivot = view.first_position(rows)
    deviation = rows - view.per_channel(pivot)
    # Accumulated in float64: Inductor sums sequentially (no cascade with dynamic shapes).
    mean_deviation = view.channel_sum(deviation.double()) / view.s
    mean_square = view.channel_sum((deviation * deviation).double()) / view.s
    channel_var = (mean_square - mean_deviation * mean_deviation).clamp_min(0)
    channel_mean = pivot.double() + mean_deviation
    group_mean, group_rstd = _group_statistics(
        channel_mean, channel_var, group_id, group_count.double(), num_groups, eps)

    # y = (x - center) * scale + shift: center 0 (GN's own formula) unless the group mean is
    # large against the spread; then the group mean rounded to the compute dtype.
    mean_c, rstd_c = group_mean[:, group_id], group_rstd[:, group_id]
    center = torch.where(mean_c.abs() * rstd_c > PIVOT_RATIO, mean_c, 0.0).to(stats_dtype)
    scale = rstd_c
    if weight is not None:
        scale = scale * weight.double()
    shift = (center.double() - mean_c) * scale
    if bias is not None:
        shift = shift + bias.double()
    y = ((rows - view.per_channel(center)) * view.per_channel(scale.to(stats_dtype))
         + view.per_channel(shift.to(stats_dtype)))
    return (view.back(y.to(x.dtype)), channel_mean.to(stats_dtype), channel_var.to(stats_dtype),
            group_mean.to(stats_dtype), group_rstd.to(stats_dtype))


def backward_graph(
    grad_y: Tensor, x: Tensor, channels_last: bool, weight: Optional[Tensor], group_mean: Tensor,
    group_rstd: Tensor, group_id: Tensor, group_count: Tensor, num_groups: int, needs_dx: bool,
) -> Tuple[Optional[Tensor], Tensor, Tensor]:
    """``(dx, sum over N, positions of dy * x_hat, same of dy)``: one pass for the sums, one for dx."""
    view = _Rows(x.shape, channels_last)
    stats_dtype = compute_dtype(x.dtype)
    rows, grad_rows = view.of(x).to(stats_dtype), view.of(grad_y).to(stats_dtype)
    centered = rows - view.per_channel(group_mean.to(stats_dtype)[:, group_id])  # x - mean, as saved
    sum_dy = view.channel_sum(grad_rows.double())
    rstd = group_rstd.double()
    rstd_c = rstd[:, group_id]
    sum_dy_xhat = rstd_c * view.channel_sum((grad_rows * centered).double())
    if not needs_dx:
        return None, sum_dy_xhat.sum(0), sum_dy.sum(0)

    w = weight.double() if weight is not None else None
    weighted_dy = sum_dy * w if w is not None else sum_dy
    weighted_dy_xhat = sum_dy_xhat * w if w is not None else sum_dy_xhat
    group_elements = group_count.double() * view.s
    mean_wdy = _group_sum(weighted_dy, group_id, num_groups) / group_elements
    mean_wdy_xhat = _group_sum(weighted_dy_xhat, group_id, num_groups) / group_elements
    # dx = r w dy - r mean_k(w dy) - r^2 (x - mean) mean_k(w dy x_hat)
    coef_dy = rstd_c * w if w is not None else rstd_c
    coef_centered = (-rstd * rstd * mean_wdy_xhat)[:, group_id]
    coef_const = (-rstd * mean_wdy)[:, group_id]
    grad_x = (grad_rows * view.per_channel(coef_dy.to(stats_dtype))
              + centered * view.per_channel(coef_centered.to(stats_dtype))
              + view.per_channel(coef_const.to(stats_dtype)))
    return view.back(grad_x.to(x.dtype)), sum_dy_xhat.sum(0), sum_dy.sum(0)


class _Compiled:
    """``torch.compile(fn, dynamic=True)`` on first use, eager ``fn`` once compilation has failed."""

    failed: Optional[str] = None  # shared: one failure disables every graph

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        self.compiled: Optional[Callable] = None

    def __call__(self, *args):
        if _Compiled.failed is None and not torch.compiler.is_compiling():
            try:
                if self.compiled is None:
                    self.compiled = torch.compile(self.fn, dynamic=True)
                return self.compiled(*args)
            except Exception as error:  # no compiler, unsupported platform, ...
                _Compiled.failed = f"{type(error).__name__}: {error}"
                warnings.warn(f"DGN: torch.compile fast path unavailable, using plain PyTorch ops ({_Compiled.failed})",
                              RuntimeWarning, stacklevel=2)
        return self.fn(*args)


_compiled_forward = _Compiled(forward_graph)
_compiled_backward = _Compiled(backward_graph)


def is_channels_last(x: Tensor) -> bool:
    """True for channels_last (4-D) or channels_last_3d (5-D) inputs that are not also NCHW-contiguous."""
    if x.is_contiguous():
        return False
    if x.dim() == 4:
        return x.is_contiguous(memory_format=torch.channels_last)
    if x.dim() == 5:
        return x.is_contiguous(memory_format=torch.channels_last_3d)
    return False


def is_available() -> bool:
    """False once compilation has failed in this process (then the plain path is used)."""
    return _Compiled.failed is None and hasattr(torch, "compile")


class CompiledDynamicGroupNormFunction(torch.autograd.Function):
    """Same inputs, outputs and saved tensors as the plain path's Function."""

    @staticmethod
    def forward(ctx, x, weight, bias, group_id, group_count, num_groups, eps):
        channels_last = is_channels_last(x)
        if not channels_last:
            x = x.contiguous()
        y, channel_mean, channel_var, group_mean, group_rstd = _compiled_forward(
            x, channels_last, group_id, group_count, num_groups, weight, bias, eps)
        save_for_group_norm_backward(ctx, x, weight, bias, group_mean, group_rstd, channel_mean, channel_var,
                                     group_id=group_id, group_count=group_count, num_groups=num_groups)
        return y, channel_mean, channel_var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y, _grad_mean, _grad_var):
        x, weight, group_mean, group_rstd = ctx.saved_tensors
        needs_dx = ctx.needs_input_grad[0]
        channels_last = is_channels_last(x)
        grad_y = grad_y.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        grad_x, sum_dy_xhat, sum_dy = _compiled_backward(
            grad_y, x, channels_last, weight, group_mean, group_rstd, ctx.group_id, ctx.group_count, ctx.num_groups,
            needs_dx)
        grad_weight, grad_bias = affine_gradients(ctx, weight, grad_y, sum_dy_xhat, sum_dy)
        return grad_x, grad_weight, grad_bias, None, None, None, None
