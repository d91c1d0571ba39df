"""Dynamic Group Normalization (DGN) for PyTorch and its detection toolkits.

The core (this package minus the toolkit adapters ``openmmlab``/``detectron2``)
needs only torch, numpy and scipy, and importing it touches no toolkit and no
process-wide state. ``import dgn_plugins.openmmlab`` (a config's
``custom_imports``) registers ``DGN``, ``TokenDGN`` and ``DGNRegroupHook`` with
MMEngine, so ``norm_cfg=dict(type='DGN')`` (channels first) and
``norm_cfg=dict(type='TokenDGN')`` (transformer tokens) work in
MMDetection/MMSegmentation.
"""
from . import ops  # noqa: F401  (registers the dgn:: operators first: everything below calls them)
from ._version import __version__ as __version__  # the one version source (setup.py reads it too)
from .conversion.convert import convert_gn_to_dgn, convert_ln_to_dgn
from .conversion.freeze import FrozenDynamicGroupNorm, FrozenTokenDynamicGroupNorm, freeze
from .functional import dynamic_group_norm, dynamic_group_norm_with_stats
from .grouping import GroupBounds, Grouping, default_group_ids, group_bounds
from .layer import DynamicGrouping, DynamicGroupNorm
from .ops import set_backend, use_backend
from .regrouping.policy import RegroupPolicy
from .regrouping.rule import RegroupReport
from .token_layer import TokenDynamicGroupNorm
from .training.controller import RegroupController, summarize
from .training.model import dgn_layers, is_trainable, name_layers, regroup_model

__all__ = [
    "DynamicGroupNorm",
    "TokenDynamicGroupNorm",
    "DynamicGrouping",
    "dynamic_group_norm",
    "dynamic_group_norm_with_stats",
    "convert_gn_to_dgn",
    "convert_ln_to_dgn",
    "freeze",
    "FrozenDynamicGroupNorm",
    "FrozenTokenDynamicGroupNorm",
    "regroup_model",
    "RegroupController",
    "RegroupPolicy",
    "dgn_layers",
    "name_layers",
    "is_trainable",
    "RegroupReport",
    "summarize",
    "GroupBounds",
    "Grouping",
    "group_bounds",
    "default_group_ids",
    "set_backend",
    "use_backend",
]

