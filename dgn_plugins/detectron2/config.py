"""``add_dgn_config``: the ``MODEL.DGN`` options of a Detectron2 (yacs) config.

Like Detectron2's own ``add_*_config`` helpers (DeepLab, PointRend), it adds
defaults to a ``CfgNode`` before ``merge_from_file``. With it a config may
say ``NORM: "DGN"`` wherever it says ``NORM: "GN"`` today; the layers take
their options from ``MODEL.DGN`` and the regroup hook its schedule from
``MODEL.DGN.REGROUP``.
"""
from __future__ import annotations

import os
from typing import Optional

from detectron2.config import CfgNode as CN

from ..training.records import RECORDS_FILE

__all__ = ["add_dgn_config", "dgn_layer_options", "regroup_options"]


def add_dgn_config(cfg: CN) -> CN:
    """Add ``MODEL.DGN`` (defaults: GN's 32 groups, the poster's alpha and p) to ``cfg``; returns it."""
    _C = cfg
    _C.MODEL.DGN = CN()
    # Groups per layer, as Detectron2's "GN" (nn.GroupNorm(32, C)), so a GN
    # config and checkpoint map onto DGN one to one ...
    _C.MODEL.DGN.NUM_GROUPS = 32
    # ... unless GROUP_SIZE > 0: then K = floor(C / GROUP_SIZE) (the poster's g).
    _C.MODEL.DGN.GROUP_SIZE = 0
    # Group sizes stay within [floor((1 - ALPHA) g), floor((1 + ALPHA) g)].
    _C.MODEL.DGN.ALPHA = 0.5
    # Groups whose intra-group variance exceeds this percentile are dissolved.
    _C.MODEL.DGN.PERCENTILE = 0.75
    # EMA factor of the running per-channel statistics the regroup reads.
    _C.MODEL.DGN.MOMENTUM = 0.1
    # Statistics k-means clusters channels on: a subset of ("mean", "var", "std").
    _C.MODEL.DGN.CLUSTER_FEATURES = ("mean",)
    # Base seed of the k-means solver (each regroup uses SEED + its index).
    _C.MODEL.DGN.SEED = 0
    _C.MODEL.DGN.EPS = 1e-5

    # When DGNRegroupHook regroups: after every INTERVAL finished iterations from START
    # up to STOP. By default both are shares of SOLVER.MAX_ITER, the study's choice
    # (bench/RESULTS.md): every 10% of the run, none in its last 10%.
    # INTERVAL: -1 = INTERVAL_SHARE of the run; 0 disables the hook; > 0 iterations.
    _C.MODEL.DGN.REGROUP = CN()
    _C.MODEL.DGN.REGROUP.INTERVAL = -1
    _C.MODEL.DGN.REGROUP.INTERVAL_SHARE = 0.1
    _C.MODEL.DGN.REGROUP.START = 0
    # STOP: -1 = STOP_SHARE of the run (1.0: to the end); >= 0 iterations.
    _C.MODEL.DGN.REGROUP.STOP = -1
    _C.MODEL.DGN.REGROUP.STOP_SHARE = 0.9
    # Leave frozen layers (FREEZE_AT stages: requires_grad=False) alone.
    _C.MODEL.DGN.REGROUP.ONLY_TRAINABLE = True
    # Log one line per layer at each regroup, besides the totals.
    _C.MODEL.DGN.REGROUP.LOG_PER_LAYER = False
    # Regroup records (one JSON line per regroup) in OUTPUT_DIR, for
    # tools/plot_groups.py --records; "" writes none.
    _C.MODEL.DGN.REGROUP.RECORDS_FILE = RECORDS_FILE
    return cfg


def dgn_layer_options(cfg: CN) -> dict:
    """``DynamicGroupNorm`` keyword arguments from ``cfg.MODEL.DGN``."""
    dgn = _dgn_node(cfg)
    return dict(
        num_groups=int(dgn.NUM_GROUPS),
        group_size=int(dgn.GROUP_SIZE) if dgn.GROUP_SIZE > 0 else None,
        alpha=float(dgn.ALPHA),
        percentile=float(dgn.PERCENTILE),
        momentum=float(dgn.MOMENTUM),
        cluster_features=tuple(dgn.CLUSTER_FEATURES),
        seed=int(dgn.SEED),
        eps=float(dgn.EPS),
    )


def regroup_options(cfg: CN) -> Optional[dict]:
    """``DGNRegroupHook`` keyword arguments from ``cfg.MODEL.DGN.REGROUP``; None when disabled."""
    regroup = _dgn_node(cfg).REGROUP
    if regroup.INTERVAL == 0:
        return None
    return dict(
        interval=int(regroup.INTERVAL) if regroup.INTERVAL > 0 else _share("INTERVAL_SHARE", regroup.INTERVAL_SHARE),
        start=int(regroup.START),
        stop=int(regroup.STOP) if regroup.STOP >= 0 else _stop_share(regroup.STOP_SHARE),
        only_trainable=bool(regroup.ONLY_TRAINABLE),
        log_per_layer=bool(regroup.LOG_PER_LAYER),
        records_file=os.path.join(cfg.OUTPUT_DIR, regroup.RECORDS_FILE) if regroup.RECORDS_FILE else None,
    )


def _share(name: str, value) -> float:
    share = float(value)
    if not 0.0 < share < 1.0:
        raise ValueError(f"MODEL.DGN.REGROUP.{name} must lie in (0, 1) (a share of SOLVER.MAX_ITER), got {value}")
    return share


def _stop_share(value) -> Optional[float]:
    """STOP_SHARE as the hook's ``stop``: None (to the end) at 1.0 or more."""
    return None if float(value) >= 1.0 else _share("STOP_SHARE", value)


def _dgn_node(cfg: CN) -> CN:
    node = cfg.MODEL.get("DGN")
    if node is None:
        raise KeyError(
            "cfg.MODEL.DGN is missing: call dgn_plugins.detectron2.add_dgn_config(cfg) "
            "before merge_from_file, as for any Detectron2 extension config"
        )
    return node
