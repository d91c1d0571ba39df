"""A channel grouping as data.

A grouping of C channels into K groups is stored as one integer per channel,
``group_id`` (shape ``[C]``): its shape depends only on C, so it fits in a
persistent buffer and a checkpoint restores it exactly. Everything else (group
sizes, channels sorted by group, offsets) is derived from it here.

Group sizes are bounded by ``[L, H]`` with ``L = floor((1 - alpha) * g)`` and
``H = floor((1 + alpha) * g)``, ``g`` the default group size (DGN poster).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from .errors import ConfigError

__all__ = [
    "DGNOptionError",
    "infeasible_advice",
    "GroupBounds",
    "group_bounds",
    "resolve_num_groups",
    "default_group_ids",
    "check_group_ids",
    "group_sizes",
    "Grouping",
]


class DGNOptionError(ValueError, ConfigError):
    """DGN options that cannot be met for a layer; the message names the option to change.

    A plain ``ValueError`` subclass taking one message, so toolkits that
    re-raise ``type(e)(message)`` keep it.
    """


def infeasible_advice(num_channels: int, num_groups: int, default_size: float, alpha: float, by: str) -> str:
    """Which option to change when C channels cannot form K groups within the bounds.

    Only H can be too small (L <= floor(g) <= floor(C/K) always): the largest
    group needs ``ceil(C/K)`` channels, so ``alpha >= ceil(C/K)/g - 1``.
    ``by`` is the option that set K (``"num_groups"`` or ``"group_size"``).
    """
    largest = -(-num_channels // num_groups)
    needed = math.ceil((largest / default_size - 1.0) * 1000) / 1000
    while needed < 1 and group_bounds(default_size, max(needed, 1e-3)).size_max < largest:
        needed += 0.001
    divisors = [k for k in range(1, num_channels + 1) if num_channels % k == 0]
    near = min(divisors, key=lambda k: (abs(k - num_groups), k))
    if by == "group_size":
        other = f"a group_size that divides C (e.g. {num_channels // near})"
    else:
        other = f"a num_groups that divides C (e.g. {near})"
    raise_alpha = f"raise alpha to >= {needed:.3f} (now {alpha}) or choose " if needed < 1 else "choose "
    return f"{raise_alpha}{other}"


@dataclass(frozen=True)
class GroupBounds:
    """Inclusive bounds ``[size_min, size_max]`` on every group's size."""

    size_min: int
    size_max: int

    def admits(self, num_channels: int, num_groups: int) -> bool:
        """True if C channels can be split into K groups within the bounds."""
        return num_groups * self.size_min <= num_channels <= num_groups * self.size_max


def group_bounds(default_group_size: float, alpha: float) -> GroupBounds:
    """The poster's bounds ``L = floor((1-a) g)``, ``H = floor((1+a) g)``.

    ``L`` is raised to 1: an empty group has no statistics to normalise with.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    if default_group_size <= 0:
        raise ValueError(f"default group size must be positive, got {default_group_size}")
    # The small epsilon keeps exact products such as 0.5 * 16 from rounding down
    # to 7 through floating-point error.
    size_min = max(1, math.floor((1.0 - alpha) * default_group_size + 1e-9))
    size_max = max(size_min, math.floor((1.0 + alpha) * default_group_size + 1e-9))
    return GroupBounds(size_min, size_max)


def resolve_num_groups(
    num_channels: int, num_groups: Optional[int], group_size: Optional[int]
) -> Tuple[int, float]:
    """Return ``(K, g)``: the number of groups and the default group size.

    With ``group_size`` given, ``K = floor(C / group_size)`` (poster); otherwise
    ``K = num_groups`` and ``g = C / K``.
    """
    if num_channels < 1:
        raise ValueError(f"num_channels must be positive, got {num_channels}")
    if group_size is not None:
        if group_size < 1:
            raise ValueError(f"group_size must be positive, got {group_size}")
        num_groups = num_channels // group_size
        if num_groups < 1:
            raise ValueError(
                f"group_size={group_size} exceeds num_channels={num_channels}: K = floor(C / g) = 0"
            )
        return num_groups, float(group_size)
    if num_groups is None or num_groups < 1:
        raise ValueError(f"num_groups must be a positive integer, got {num_groups}")
    if num_groups > num_channels:
        raise ValueError(f"num_groups={num_groups} exceeds num_channels={num_channels}")
    return num_groups, num_channels / num_groups


def default_group_ids(num_channels: int, num_groups: int, bounds: Optional[GroupBounds] = None) -> torch.Tensor:
    """The GN grouping: contiguous groups, sizes differing by at most one.

    When C is not divisible by K, the first ``C mod K`` groups get one channel
    more. Raises ``ValueError`` naming C, K, L, H when the bounds cannot be met
    by any partition (for integer bounds, the near-equal split is feasible iff
    any split is).
    """
    if bounds is not None and not bounds.admits(num_channels, num_groups):
        raise ValueError(
            f"cannot split C={num_channels} channels into K={num_groups} groups with every size "
            f"in [L={bounds.size_min}, H={bounds.size_max}]: need K*L <= C <= K*H"
        )
    base, extra = divmod(num_channels, num_groups)
    sizes = torch.full((num_groups,), base, dtype=torch.long)
    sizes[:extra] += 1
    return torch.repeat_interleave(torch.arange(num_groups), sizes)


def group_sizes(group_id: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Channels per group, ``[K]`` int64."""
    return torch.bincount(group_id.long(), minlength=num_groups)


def check_group_ids(
    group_id: torch.Tensor, num_channels: int, num_groups: int, bounds: GroupBounds, *, what: str = "group_id"
) -> None:
    """Raise ``ValueError`` if ``group_id`` is not a valid grouping.

    Checked: shape ``[C]``, integer dtype, ids in ``[0, K)``, every size in
    ``[L, H]``. Used after every regroup and when loading a checkpoint.
    """
    if not isinstance(group_id, torch.Tensor):
        raise ValueError(f"{what} must be a tensor, got {type(group_id).__name__}")
    if tuple(group_id.shape) != (num_channels,):
        raise ValueError(f"{what} has shape {tuple(group_id.shape)}, expected ({num_channels},) for C={num_channels}")
    if group_id.dtype.is_floating_point or group_id.dtype.is_complex or group_id.dtype == torch.bool:
        raise ValueError(f"{what} must hold integers, got dtype {group_id.dtype}")
    ids = group_id.detach().long().cpu()
    if num_channels and (int(ids.min()) < 0 or int(ids.max()) >= num_groups):
        raise ValueError(
            f"{what} holds ids in [{int(ids.min())}, {int(ids.max())}], expected [0, {num_groups - 1}] for K={num_groups}"
        )
    sizes = group_sizes(ids, num_groups)
    bad = ((sizes < bounds.size_min) | (sizes > bounds.size_max)).nonzero().flatten()
    if bad.numel():
        k = int(bad[0])
        raise ValueError(
            f"{what} gives group {k} {int(sizes[k])} channels, outside [L={bounds.size_min}, H={bounds.size_max}] "
            f"({bad.numel()} of K={num_groups} groups out of bounds)"
        )


@dataclass(frozen=True)
class Grouping:
    """Derived views of a grouping, for kernels that walk groups.

    ``channels``: channel indices sorted by group (stable), ``[C]``;
    ``offsets``: group k owns ``channels[offsets[k]:offsets[k+1]]``, ``[K+1]``;
    ``sizes``: ``[K]``.
    """

    group_id: torch.Tensor
    sizes: torch.Tensor
    offsets: torch.Tensor
    channels: torch.Tensor

    @classmethod
    def from_group_ids(cls, group_id: torch.Tensor, num_groups: int) -> "Grouping":
        group_id = group_id.long()
        sizes = group_sizes(group_id, num_groups)
        offsets = torch.zeros(num_groups + 1, dtype=torch.long, device=group_id.device)
        offsets[1:] = torch.cumsum(sizes, 0)
        channels = torch.sort(group_id, stable=True).indices
        return cls(group_id, sizes, offsets, channels)

    @property
    def num_groups(self) -> int:
        return int(self.sizes.numel())

    def is_contiguous_equal(self) -> bool:
        """True if the groups are GN's: aligned contiguous blocks of equal size.

        Group labels may be permuted; only membership matters for the output.
        """
        num_groups, num_channels = self.num_groups, int(self.group_id.numel())
        if num_channels % num_groups:
            return False
        blocks = self.group_id.cpu().view(num_groups, num_channels // num_groups)
        return bool((blocks == blocks[:, :1]).all())
