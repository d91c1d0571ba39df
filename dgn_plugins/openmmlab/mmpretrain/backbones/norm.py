"""A norm layer from ``norm_cfg``, where GN may give its ``group_size`` instead of ``num_groups``.

CIFAR networks have 16-128 channels: no single group count suits every layer
(GN's usual 32 groups cannot split 16 channels). A fixed group size does, as
DGN's own ``group_size`` option; for GN the count is ``channels // group_size``
per layer, so a GN and a DGN config with the same ``group_size`` group alike
and GN checkpoints load into DGN with GN's grouping.
"""
from __future__ import annotations

from mmcv.cnn import build_norm_layer

from ....errors import ConfigError

__all__ = ["build_norm"]


def build_norm(norm_cfg: dict, channels: int):
    cfg = dict(norm_cfg)
    if cfg.get("type") == "GN" and "group_size" in cfg:
        size = cfg.pop("group_size")
        if "num_groups" in cfg:
            raise ConfigError(f"norm_cfg {norm_cfg}: give GN num_groups or group_size, not both")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1 or channels % size:
            raise ConfigError(f"norm_cfg {norm_cfg}: GN group_size must be a positive integer dividing the "
                              f"layer's {channels} channels")
        cfg["num_groups"] = channels // size
    return build_norm_layer(cfg, channels)[1]
