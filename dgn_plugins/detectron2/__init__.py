"""Dynamic Group Normalization for Detectron2.

    from dgn_plugins.detectron2 import add_dgn_config, DGNTrainer
    cfg = get_cfg(); add_dgn_config(cfg); cfg.merge_from_file("...gn.yaml")
    cfg.merge_from_list(["MODEL.RESNETS.NORM", "DGN", "MODEL.FPN.NORM", "DGN"])
    trainer = DGNTrainer(cfg)   # builds "DGN" norms, regroups every MODEL.DGN.REGROUP.INTERVAL

Your own ``train_net.py``: ``class Trainer(DGNMixin, DefaultTrainer)``.
Pieces for custom code: :func:`build_model` (``"DGN"`` norms resolved, see
:mod:`.norm` for why resolution and not a patch of ``get_norm``),
:class:`DGNNorm` (a ``get_norm`` callable, also for LazyConfigs),
:class:`TokenDGNNorm` (a ViT ``norm_layer``: ``TokenDynamicGroupNorm``),
:func:`check_norm_keys_on_load` (a checkpointer that names the norm keys it cannot place),
:class:`DGNRegroupHook` and :func:`insert_regroup_hook`. ``import dgn_plugins``
never imports this package: Detectron2 is optional.
"""
try:
    import detectron2.config  # noqa: F401  (a submodule: a stray "detectron2" folder on sys.path is no Detectron2)
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "dgn_plugins.detectron2 needs Detectron2, which is built from source "
        "(see docs/detectron2.md): " + str(error)
    ) from error

from .checkpoint import check_norm_keys_on_load
from .config import add_dgn_config, dgn_layer_options, regroup_options
from .data import register_synthetic_coco
from .hook import DGNRegroupHook, insert_regroup_hook
from .norm import DGN, DGNNorm, TokenDGNNorm, UnknownNormError, build_model, dgn_norm_keys, resolve_dgn_norms
from .trainer import DGNMixin, DGNTrainer, setup_dgn_logger, with_regroup_hook

__all__ = [
    "DGN",
    "DGNNorm",
    "DGNRegroupHook",
    "DGNMixin",
    "DGNTrainer",
    "TokenDGNNorm",
    "UnknownNormError",
    "add_dgn_config",
    "build_model",
    "check_norm_keys_on_load",
    "dgn_layer_options",
    "dgn_norm_keys",
    "insert_regroup_hook",
    "regroup_options",
    "register_synthetic_coco",
    "resolve_dgn_norms",
    "setup_dgn_logger",
    "with_regroup_hook",
]
