"""Keeping groupings identical across processes.

Both toolkits wrap models in DDP with ``broadcast_buffers=False``, so nothing
synchronises DGN's buffers for us. Before a regroup every rank averages the
running channel statistics (so all ranks plan from the same numbers); after
it, rank 0's grouping is broadcast, so the groupings are identical even if a
solver were ever to behave differently across machines. Both hooks
(OpenMMLab, Detectron2) go through here. Plain ``torch.distributed``, which
``mmengine.dist`` and ``detectron2.utils.comm`` wrap.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "average_channel_stats", "broadcast_groupings"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors]) if tensors else None


def _unflat(flat, tensors):
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset:offset + n].view_as(t))
            offset += n


def average_channel_stats(layers: Iterable) -> None:
    """All-reduce (mean) ``channel_mean_ema`` / ``channel_var_ema`` of the layers."""
    if not is_distributed():
        return
    stats = [s for layer in layers for s in (layer.channel_mean_ema, layer.channel_var_ema)]
    if not stats:
        return
    flat = _flat([s.float() for s in stats])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    _unflat(flat, stats)


def broadcast_groupings(layers: Iterable, src: int = 0) -> None:
    """Give every rank ``src``'s ``group_id`` (and regroup counter) per layer."""
    if not is_distributed():
        return
    layers = list(layers)
    if not layers:
        return
    tensors = [t for layer in layers for t in (layer.group_id, layer.num_regroups.view(1))]
    flat = _flat(tensors)
    dist.broadcast(flat, src=src)
    offset = 0
    for layer in layers:
        group_id = flat[offset:offset + layer.num_channels]
        offset += layer.num_channels
        layer.set_group_ids(group_id)
        layer.num_regroups.fill_(int(flat[offset]))
        offset += 1
