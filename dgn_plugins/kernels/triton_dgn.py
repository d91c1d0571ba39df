"""Fused Triton kernels for DGN on the GPU: forward and backward, any grouping.

Three launches each way, the memory traffic of native GN:

forward
    1. ``_channel_moments``: per (sample, channel) shifted sums of ``x - p`` and
       ``(x - p)^2``, ``p`` the channel's first element, so that no
       cancellation occurs when the mean dwarfs the spread (the CPU path is
       tested at channel mean / std = 1000). The spatial axis is split across
       programs when N * C alone would leave the GPU idle. Reads ``x`` once.
    2. ``_group_statistics``: one program per (sample, group) walks the group's
       channels through the grouping buffers (``offsets`` and the channel list
       sorted by group, cached per regroup) and forms, in float64, the channel
       statistics (for the running statistics), the group mean and 1/std, and
       each channel's affine.
    3. ``_affine``: ``y = (x - m) * scale + shift``, ``m`` 0 (GN's formula) or,
       when the group mean is large against the spread, the group mean as
       stored. Reads ``x``, writes ``y``.

backward
    4. ``_channel_grad_sums``: per channel ``sum(dy)`` and ``sum(dy * (x - m))``.
    5. ``_group_grad_coefficients``: per (sample, group), float64:
       ``dx = a * dy + d * (x - m) + e`` with per-channel ``a, d, e``, and the
       per-sample weight and bias gradients.
    6. ``_grad_input``: ``dx``. Reads ``dy`` and ``x``, writes ``dx``.

Activations are never permuted: kernels 1, 3, 4 and 6 read them in place, in
NCHW or channels_last (any (N, C, *) tensor whose spatial dimensions flatten
to one stride), and only [N, C] / [N, K] statistics are gathered by group.
Arithmetic is float32 for float16 / bfloat16 / float32 inputs (float64 for
float64); outputs keep the input's dtype. Only ``x``, the weight and the
[N, K] mean and 1/std are saved for backward, as in ``F.group_norm``.

Registered as the CUDA kernels of the ``dgn::`` operators (:mod:`dgn_plugins.ops`).
Tests run these kernels on the CPU through Triton's interpreter
(``TRITON_INTERPRET=1``, which must be set before triton is imported).
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

from ..functional import compute_dtype
from ..grouping import Grouping

__all__ = ["forward_kernel", "backward_kernel"]

#: Above this |group mean| / group std, the apply passes subtract the group mean first.
PIVOT_RATIO = 16.0


# --------------------------------------------------------------------- kernels
@triton.jit
def _channel_moments(
    x_ptr, partial_ptr, N, C, S, stride_n, stride_c, stride_s, chunk,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """partial[0|1, split, n, c] = sum over this split's positions of (x - p), (x - p)^2."""
    num_channel_blocks = tl.cdiv(C, BLOCK_C)
    n = tl.program_id(0) // num_channel_blocks
    channel = (tl.program_id(0) % num_channel_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(1)
    channel_mask = channel < C
    row = x_ptr + n.to(tl.int64) * stride_n + channel.to(tl.int64) * stride_c
    pivot = tl.load(row, mask=channel_mask, other=0.0).to(ACC)
    sum1 = tl.zeros([BLOCK_C, BLOCK_S], dtype=ACC)
    sum2 = tl.zeros([BLOCK_C, BLOCK_S], dtype=ACC)
    start = split * chunk
    end = tl.minimum(start + chunk, S)
    for s0 in range(start, end, BLOCK_S):
        position = s0 + tl.arange(0, BLOCK_S)
        mask = channel_mask[:, None] & (position < end)[None, :]
        value = tl.load(row[:, None] + position[None, :].to(tl.int64) * stride_s, mask=mask, other=0.0).to(ACC)
        deviation = tl.where(mask, value - pivot[:, None], 0.0)
        sum1 += deviation
        sum2 += deviation * deviation
    out = partial_ptr + (split * N + n) * C + channel
    plane = tl.num_programs(1) * N * C
    tl.store(out, tl.sum(sum1, axis=1), mask=channel_mask)
    tl.store(out + plane, tl.sum(sum2, axis=1), mask=channel_mask)


@triton.jit
def _channel_moments_of(partial_ptr, n, channel, mask, N, C, S, num_splits):
    """Channel mean offset from the pivot and variance, float64, from the split partials."""
    sum1 = tl.zeros(channel.shape, dtype=tl.float64)
    sum2 = tl.zeros(channel.shape, dtype=tl.float64)
    plane = num_splits * N * C
    for split in range(0, num_splits):
        at = partial_ptr + (split * N + n) * C + channel
        sum1 += tl.load(at, mask=mask, other=0.0).to(tl.float64)
        sum2 += tl.load(at + plane, mask=mask, other=0.0).to(tl.float64)
    mean_deviation = sum1 / S
    variance = tl.maximum(sum2 / S - mean_deviation * mean_deviation, 0.0)
    return mean_deviation, variance


@triton.jit
def _group_statistics(
    partial_ptr, x_ptr, offsets_ptr, channels_ptr, weight_ptr, bias_ptr,
    channel_mean_ptr, channel_var_ptr, group_mean_ptr, group_rstd_ptr, center_ptr, scale_ptr, shift_ptr,
    N, C, K, S, num_splits, eps, stride_n, stride_c,
    HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_G: tl.constexpr, PIVOT_RATIO: tl.constexpr,
):
    """One program per (sample, group): the group's channels come from offsets / channels."""
    n = tl.program_id(0) // K
    k = tl.program_id(0) % K
    first = tl.load(offsets_ptr + k)
    last = tl.load(offsets_ptr + k + 1)
    x_row = x_ptr + n.to(tl.int64) * stride_n

    # Channel statistics (stored for the running statistics) and the group mean.
    total_mean = tl.zeros([BLOCK_G], dtype=tl.float64)
    for i in range(first, last, BLOCK_G):
        index = i + tl.arange(0, BLOCK_G)
        mask = index < last
        channel = tl.load(channels_ptr + index, mask=mask, other=0)
        mean_deviation, variance = _channel_moments_of(partial_ptr, n, channel, mask, N, C, S, num_splits)
        pivot = tl.load(x_row + channel.to(tl.int64) * stride_c, mask=mask, other=0.0).to(tl.float64)
        mean = pivot + mean_deviation
        tl.store(channel_mean_ptr + n * C + channel, mean.to(channel_mean_ptr.dtype.element_ty), mask=mask)
        tl.store(channel_var_ptr + n * C + channel, variance.to(channel_var_ptr.dtype.element_ty), mask=mask)
        total_mean += tl.where(mask, mean, 0.0)
    count = (last - first).to(tl.float64)
    group_mean = tl.sum(total_mean, axis=0) / count

    # Within-group variance: mean over channels of (variance + (channel mean - group mean)^2).
    total_var = tl.zeros([BLOCK_G], dtype=tl.float64)
    for i in range(first, last, BLOCK_G):
        index = i + tl.arange(0, BLOCK_G)
        mask = index < last
        channel = tl.load(channels_ptr + index, mask=mask, other=0)
        mean_deviation, variance = _channel_moments_of(partial_ptr, n, channel, mask, N, C, S, num_splits)
        pivot = tl.load(x_row + channel.to(tl.int64) * stride_c, mask=mask, other=0.0).to(tl.float64)
        spread = pivot + mean_deviation - group_mean
        total_var += tl.where(mask, variance + spread * spread, 0.0)
    group_rstd = 1.0 / tl.sqrt(tl.sum(total_var, axis=0) / count + eps)
    tl.store(group_mean_ptr + n * K + k, group_mean.to(group_mean_ptr.dtype.element_ty))
    tl.store(group_rstd_ptr + n * K + k, group_rstd.to(group_rstd_ptr.dtype.element_ty))

    # Per-channel affine y = (x - center) * scale + shift: center 0 (GN's own formula) unless
    # the group mean is large against the spread, then the group mean as stored.
    center = tl.where(tl.abs(group_mean) * group_rstd > PIVOT_RATIO, group_mean, 0.0).to(center_ptr.dtype.element_ty)
    center_error = center.to(tl.float64) - group_mean
    for i in range(first, last, BLOCK_G):
        index = i + tl.arange(0, BLOCK_G)
        mask = index < last
        channel = tl.load(channels_ptr + index, mask=mask, other=0)
        scale = tl.zeros([BLOCK_G], dtype=tl.float64) + group_rstd
        if HAS_WEIGHT:
            scale *= tl.load(weight_ptr + channel, mask=mask, other=0.0).to(tl.float64)
        shift = center_error * scale
        if HAS_BIAS:
            shift += tl.load(bias_ptr + channel, mask=mask, other=0.0).to(tl.float64)
        at = n * C + channel
        tl.store(center_ptr + at, tl.zeros([BLOCK_G], dtype=tl.float64).to(center_ptr.dtype.element_ty) + center,
                 mask=mask)
        tl.store(scale_ptr + at, scale.to(scale_ptr.dtype.element_ty), mask=mask)
        tl.store(shift_ptr + at, shift.to(shift_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _affine(
    x_ptr, y_ptr, center_ptr, scale_ptr, shift_ptr, C, S,
    x_stride_n, x_stride_c, x_stride_s, y_stride_n, y_stride_c, y_stride_s,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    num_channel_blocks = tl.cdiv(C, BLOCK_C)
    n = tl.program_id(0) // num_channel_blocks
    channel = (tl.program_id(0) % num_channel_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    position = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    channel_mask = channel < C
    mask = channel_mask[:, None] & (position < S)[None, :]
    x_row = x_ptr + n.to(tl.int64) * x_stride_n + channel.to(tl.int64) * x_stride_c
    center = tl.load(center_ptr + n * C + channel, mask=channel_mask, other=0.0)
    scale = tl.load(scale_ptr + n * C + channel, mask=channel_mask, other=0.0)
    shift = tl.load(shift_ptr + n * C + channel, mask=channel_mask, other=0.0)
    value = tl.load(x_row[:, None] + position[None, :].to(tl.int64) * x_stride_s, mask=mask, other=0.0).to(ACC)
    out = (value - center[:, None]) * scale[:, None] + shift[:, None]
    y_at = (y_ptr + n.to(tl.int64) * y_stride_n + channel[:, None].to(tl.int64) * y_stride_c
            + position[None, :].to(tl.int64) * y_stride_s)
    tl.store(y_at, out.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _saved_center(group_id_ptr, group_mean_ptr, n, channel, mask, K):
    """The saved group mean of each channel's group, [BLOCK_C]."""
    group = tl.load(group_id_ptr + channel, mask=mask, other=0)
    return tl.load(group_mean_ptr + n * K + group, mask=mask, other=0.0)


@triton.jit
def _channel_grad_sums(
    dy_ptr, x_ptr, group_id_ptr, group_mean_ptr, partial_ptr, N, C, K, S, chunk,
    dy_stride_n, dy_stride_c, dy_stride_s, x_stride_n, x_stride_c, x_stride_s,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    """partial[0|1, split, n, c] = sum over this split's positions of dy, dy * (x - mean)."""
    num_channel_blocks = tl.cdiv(C, BLOCK_C)
    n = tl.program_id(0) // num_channel_blocks
    channel = (tl.program_id(0) % num_channel_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    split = tl.program_id(1)
    channel_mask = channel < C
    x_row = x_ptr + n.to(tl.int64) * x_stride_n + channel.to(tl.int64) * x_stride_c
    dy_row = dy_ptr + n.to(tl.int64) * dy_stride_n + channel.to(tl.int64) * dy_stride_c
    center = _saved_center(group_id_ptr, group_mean_ptr, n, channel, channel_mask, K).to(ACC)
    sum_dy = tl.zeros([BLOCK_C, BLOCK_S], dtype=ACC)
    sum_dy_centered = tl.zeros([BLOCK_C, BLOCK_S], dtype=ACC)
    start = split * chunk
    end = tl.minimum(start + chunk, S)
    for s0 in range(start, end, BLOCK_S):
        position = (s0 + tl.arange(0, BLOCK_S)).to(tl.int64)
        mask = channel_mask[:, None] & (position < end)[None, :]
        value = tl.load(x_row[:, None] + position[None, :] * x_stride_s, mask=mask, other=0.0).to(ACC)
        grad = tl.load(dy_row[:, None] + position[None, :] * dy_stride_s, mask=mask, other=0.0).to(ACC)
        sum_dy += grad
        sum_dy_centered += grad * (value - center[:, None])
    out = partial_ptr + (split * N + n) * C + channel
    plane = tl.num_programs(1) * N * C
    tl.store(out, tl.sum(sum_dy, axis=1), mask=channel_mask)
    tl.store(out + plane, tl.sum(sum_dy_centered, axis=1), mask=channel_mask)


@triton.jit
def _group_grad_coefficients(
    partial_ptr, offsets_ptr, channels_ptr, weight_ptr, group_rstd_ptr,
    grad_weight_ptr, grad_bias_ptr, coef_dy_ptr, coef_centered_ptr, coef_const_ptr,
    N, C, K, S, num_splits,
    HAS_WEIGHT: tl.constexpr, BLOCK_G: tl.constexpr,
):
    """dx = r w dy - r mean_k(w dy) - r^2 (x - mean) mean_k(w dy x_hat), as a dy + d (x - mean) + e."""
    n = tl.program_id(0) // K
    k = tl.program_id(0) % K
    first = tl.load(offsets_ptr + k)
    last = tl.load(offsets_ptr + k + 1)
    group_rstd = tl.load(group_rstd_ptr + n * K + k).to(tl.float64)
    plane = num_splits * N * C

    total_wdy = tl.zeros([BLOCK_G], dtype=tl.float64)
    total_wdy_xhat = tl.zeros([BLOCK_G], dtype=tl.float64)
    for i in range(first, last, BLOCK_G):
        index = i + tl.arange(0, BLOCK_G)
        mask = index < last
        channel = tl.load(channels_ptr + index, mask=mask, other=0)
        sum_dy = tl.zeros([BLOCK_G], dtype=tl.float64)
        sum_dy_centered = tl.zeros([BLOCK_G], dtype=tl.float64)
        for split in range(0, num_splits):
            at = partial_ptr + (split * N + n) * C + channel
            sum_dy += tl.load(at, mask=mask, other=0.0).to(tl.float64)
            sum_dy_centered += tl.load(at + plane, mask=mask, other=0.0).to(tl.float64)
        sum_dy_xhat = group_rstd * sum_dy_centered
        tl.store(grad_weight_ptr + n * C + channel, sum_dy_xhat, mask=mask)
        tl.store(grad_bias_ptr + n * C + channel, sum_dy, mask=mask)
        if HAS_WEIGHT:
            weight = tl.load(weight_ptr + channel, mask=mask, other=0.0).to(tl.float64)
            sum_dy *= weight
            sum_dy_xhat *= weight
        total_wdy += sum_dy
        total_wdy_xhat += sum_dy_xhat
    elements = (last - first).to(tl.float64) * S
    coef_const = -group_rstd * tl.sum(total_wdy, axis=0) / elements
    coef_centered = -group_rstd * group_rstd * tl.sum(total_wdy_xhat, axis=0) / elements

    for i in range(first, last, BLOCK_G):
        index = i + tl.arange(0, BLOCK_G)
        mask = index < last
        channel = tl.load(channels_ptr + index, mask=mask, other=0)
        coef_dy = tl.zeros([BLOCK_G], dtype=tl.float64) + group_rstd
        if HAS_WEIGHT:
            coef_dy *= tl.load(weight_ptr + channel, mask=mask, other=0.0).to(tl.float64)
        zero = tl.zeros([BLOCK_G], dtype=tl.float64)
        at = n * C + channel
        tl.store(coef_dy_ptr + at, coef_dy.to(coef_dy_ptr.dtype.element_ty), mask=mask)
        tl.store(coef_centered_ptr + at, (zero + coef_centered).to(coef_centered_ptr.dtype.element_ty), mask=mask)
        tl.store(coef_const_ptr + at, (zero + coef_const).to(coef_const_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_input(
    dy_ptr, x_ptr, dx_ptr, group_id_ptr, group_mean_ptr, coef_dy_ptr, coef_centered_ptr, coef_const_ptr, C, K, S,
    dy_stride_n, dy_stride_c, dy_stride_s, x_stride_n, x_stride_c, x_stride_s,
    dx_stride_n, dx_stride_c, dx_stride_s,
    ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    num_channel_blocks = tl.cdiv(C, BLOCK_C)
    n = tl.program_id(0) // num_channel_blocks
    channel = (tl.program_id(0) % num_channel_blocks) * BLOCK_C + tl.arange(0, BLOCK_C)
    position = (tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)).to(tl.int64)
    channel_mask = channel < C
    mask = channel_mask[:, None] & (position < S)[None, :]
    x_row = x_ptr + n.to(tl.int64) * x_stride_n + channel.to(tl.int64) * x_stride_c
    dy_row = dy_ptr + n.to(tl.int64) * dy_stride_n + channel.to(tl.int64) * dy_stride_c
    center = _saved_center(group_id_ptr, group_mean_ptr, n, channel, channel_mask, K).to(ACC)
    coef_dy = tl.load(coef_dy_ptr + n * C + channel, mask=channel_mask, other=0.0)
    coef_centered = tl.load(coef_centered_ptr + n * C + channel, mask=channel_mask, other=0.0)
    coef_const = tl.load(coef_const_ptr + n * C + channel, mask=channel_mask, other=0.0)
    value = tl.load(x_row[:, None] + position[None, :] * x_stride_s, mask=mask, other=0.0).to(ACC)
    grad = tl.load(dy_row[:, None] + position[None, :] * dy_stride_s, mask=mask, other=0.0).to(ACC)
    out = grad * coef_dy[:, None] + (value - center[:, None]) * coef_centered[:, None] + coef_const[:, None]
    dx_at = (dx_ptr + n.to(tl.int64) * dx_stride_n + channel[:, None].to(tl.int64) * dx_stride_c
             + position[None, :] * dx_stride_s)
    tl.store(dx_at, out.to(dx_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------- host side
_TILE = 2048  # elements per program in the activation-sized kernels
_MAX_BLOCK_S = 1024  # NCHW: positions per tile row
_MAX_BLOCK_C = 128  # channels_last: channels per tile row
_INTERPRETER_PROGRAMS = 8  # the interpreter's stand-in for "a few programs per GPU core"


class _Launch:
    """Tile shape and spatial split for one (N, C, S) problem in one memory layout."""

    def __init__(self, n: int, c: int, s: int, channels_fastest: bool, device: torch.device) -> None:
        if channels_fastest:  # channels_last: a tile spans channels, then positions
            self.block_c = min(triton.next_power_of_2(c), _MAX_BLOCK_C)
            self.block_s = max(1, min(triton.next_power_of_2(s), _TILE // self.block_c))
        else:  # NCHW: a tile spans positions, then channels
            self.block_s = min(triton.next_power_of_2(s), _MAX_BLOCK_S)
            self.block_c = max(1, min(triton.next_power_of_2(c), _TILE // self.block_s))
        self.channel_blocks = triton.cdiv(c, self.block_c)
        position_blocks = triton.cdiv(s, self.block_s)
        # Split the spatial reduction until the GPU has a few programs per core.
        wanted = triton.cdiv(_target_programs(device), n * self.channel_blocks)
        blocks_per_split = triton.cdiv(position_blocks, max(1, min(wanted, position_blocks)))
        self.chunk = blocks_per_split * self.block_s
        self.splits = triton.cdiv(s, self.chunk)
        self.position_blocks = position_blocks
        self.num_warps = 4 if self.block_c * self.block_s <= _TILE else 8


def _target_programs(device: torch.device) -> int:
    if device.type != "cuda":
        return _INTERPRETER_PROGRAMS
    return 4 * _multiprocessor_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _multiprocessor_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _flat(t: Tensor) -> Tensor:
    """(N, C, *) -> (N, C, S) view (``t`` has passed ``_dense_layout``)."""
    return t if t.dim() == 3 else t.flatten(2)


def _dense_layout(x: Tensor) -> Tensor:
    """``x`` itself when its spatial dimensions flatten to one stride (NCHW, channels_last, any
    (N, C, L)); anything else made NCHW-contiguous."""
    if x.dim() == 3 or x.is_contiguous():
        return x
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return x
    return x.contiguous()


def _accumulator(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _group_block(num_channels: int, num_groups: int) -> int:
    return max(16, min(256, triton.next_power_of_2(2 * triton.cdiv(num_channels, num_groups))))


def _forward(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], offsets: Tensor, channels: Tensor,
             eps: float) -> Tuple[Tensor, ...]:
    x = _dense_layout(x)
    n, c = x.shape[:2]
    num_groups = offsets.numel() - 1
    x3 = _flat(x)
    s = x3.shape[2]
    stats_dtype = compute_dtype(x.dtype)
    y = torch.empty_like(x)
    y3 = _flat(y)
    launch = _Launch(n, c, s, x3.stride(1) == 1 and c > 1, x.device)
    acc = _accumulator(x.dtype)
    partial = torch.empty((2, launch.splits, n, c), device=x.device, dtype=stats_dtype)
    _channel_moments[(n * launch.channel_blocks, launch.splits)](
        x3, partial, n, c, s, *x3.stride(), launch.chunk,
        ACC=acc, BLOCK_C=launch.block_c, BLOCK_S=launch.block_s, num_warps=launch.num_warps)

    new = functools.partial(torch.empty, device=x.device, dtype=stats_dtype)
    channel_mean, channel_var, center, scale, shift = (new((n, c)) for _ in range(5))
    group_mean, group_rstd = new((n, num_groups)), new((n, num_groups))
    _group_statistics[(n * num_groups,)](
        partial, x3, offsets, channels, weight if weight is not None else x3, bias if bias is not None else x3,
        channel_mean, channel_var, group_mean, group_rstd, center, scale, shift,
        n, c, num_groups, s, launch.splits, eps, x3.stride(0), x3.stride(1),
        HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None, BLOCK_G=_group_block(c, num_groups),
        PIVOT_RATIO=PIVOT_RATIO)

    _affine[(n * launch.channel_blocks, launch.position_blocks)](
        x3, y3, center, scale, shift, c, s, *x3.stride(), *y3.stride(),
        ACC=acc, BLOCK_C=launch.block_c, BLOCK_S=launch.block_s, num_warps=launch.num_warps)
    return y, channel_mean, channel_var, group_mean, group_rstd


def _backward(grad_y: Tensor, x: Tensor, weight: Optional[Tensor], group_mean: Tensor, group_rstd: Tensor,
              group_id: Tensor, offsets: Tensor, channels: Tensor, needs_dx: bool
              ) -> Tuple[Optional[Tensor], Tensor, Tensor]:
    x = _dense_layout(x)
    grad_y = _dense_layout(grad_y)
    n, c = x.shape[:2]
    num_groups = offsets.numel() - 1
    x3, dy3 = _flat(x), _flat(grad_y)
    s = x3.shape[2]
    stats_dtype = compute_dtype(x.dtype)
    launch = _Launch(n, c, s, x3.stride(1) == 1 and c > 1, x.device)
    acc = _accumulator(x.dtype)
    partial = torch.empty((2, launch.splits, n, c), device=x.device, dtype=stats_dtype)
    _channel_grad_sums[(n * launch.channel_blocks, launch.splits)](
        dy3, x3, group_id, group_mean, partial, n, c, num_groups, s, launch.chunk, *dy3.stride(), *x3.stride(),
        ACC=acc, BLOCK_C=launch.block_c, BLOCK_S=launch.block_s, num_warps=launch.num_warps)

    new = functools.partial(torch.empty, device=x.device)
    grad_weight_per_sample = new((n, c), dtype=torch.float64)
    grad_bias_per_sample = new((n, c), dtype=torch.float64)
    coef_dy, coef_centered, coef_const = (new((n, c), dtype=stats_dtype) for _ in range(3))
    _group_grad_coefficients[(n * num_groups,)](
        partial, offsets, channels, weight if weight is not None else x3, group_rstd,
        grad_weight_per_sample, grad_bias_per_sample, coef_dy, coef_centered, coef_const,
        n, c, num_groups, s, launch.splits,
        HAS_WEIGHT=weight is not None, BLOCK_G=_group_block(c, num_groups))

    grad_x = None
    if needs_dx:
        grad_x = torch.empty_like(x)
        dx3 = _flat(grad_x)
        _grad_input[(n * launch.channel_blocks, launch.position_blocks)](
            dy3, x3, dx3, group_id, group_mean, coef_dy, coef_centered, coef_const, c, num_groups, s,
            *dy3.stride(), *x3.stride(), *dx3.stride(),
            ACC=acc, BLOCK_C=launch.block_c, BLOCK_S=launch.block_s, num_warps=launch.num_warps)
    return grad_x, grad_weight_per_sample.sum(0), grad_bias_per_sample.sum(0)


_layouts: "dict" = {}


def _layout(group_id: Tensor, num_groups: int) -> Grouping:
    """Channels sorted by group and offsets, cached per grouping (a regroup writes group_id in place)."""
    key = (group_id.device, group_id.data_ptr(), group_id._version, num_groups)
    layout = _layouts.get(key)
    if layout is None:
        if len(_layouts) > 4096:  # groupings of layers long gone
            _layouts.clear()
        layout = _layouts[key] = Grouping.from_group_ids(group_id, num_groups)
    return layout


def forward_kernel(x, group_id, group_count, weight, bias, num_groups, eps, running_mean=None, running_var=None,
                   num_updates=None, momentum=0.1, channel_stats=True):
    """``dgn::group_norm`` for tensors Triton runs (CUDA, or CPU under the interpreter)."""
    if x.numel() == 0:
        from ..functional import reference_forward

        outs = reference_forward(x, group_id, group_count, weight, bias, num_groups, eps)
    else:
        squeeze = x.dim() == 2
        layout = _layout(group_id.long(), num_groups)
        y, *stats = _forward(x.unsqueeze(-1) if squeeze else x, weight, bias, layout.offsets, layout.channels, eps)
        outs = (y.squeeze(-1) if squeeze else y, *stats)
    if running_mean is not None:
        torch.ops.dgn.update_channel_stats_(running_mean, running_var, num_updates, outs[1], outs[2], momentum)
    if not channel_stats:  # the schema's [0, C] (dgn_plugins/ops.py)
        empty = outs[1].new_empty((0,) + tuple(outs[1].shape[1:]))
        outs = (outs[0], empty, empty.clone(), *outs[3:])
    return outs


def backward_kernel(grad_y, x, group_mean, group_rstd, group_id, group_count, weight, num_groups, output_mask):
    """``dgn::group_norm_backward`` for tensors Triton runs."""
    if x.numel() == 0:
        from ..functional import reference_backward

        return reference_backward(grad_y, x, group_mean, group_rstd, group_id, group_count, weight, num_groups,
                                  list(output_mask))
    squeeze = x.dim() == 2
    if squeeze:
        grad_y, x = grad_y.unsqueeze(-1), x.unsqueeze(-1)
    group_id = group_id.long()
    layout = _layout(group_id, num_groups)
    grad_x, grad_weight, grad_bias = _backward(grad_y, x, weight, group_mean, group_rstd, group_id, layout.offsets,
                                               layout.channels, output_mask[0])
    param_dtype = weight.dtype if weight is not None else grad_y.dtype
    empty = x.new_empty(0)
    return (grad_x.squeeze(-1) if squeeze and output_mask[0] else (grad_x if output_mask[0] else empty),
            grad_weight.to(param_dtype) if output_mask[1] else empty,
            grad_bias.to(param_dtype) if output_mask[2] else empty)
