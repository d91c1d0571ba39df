"""Helpers of the Detectron2 tests: configs, small models, tiny schedules."""
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "configs", "detectron2")


def config_path(name: str) -> str:
    return os.path.join(CONFIGS, name)


def detectron2_configs_dir() -> str:
    """Detectron2's own ``configs/`` folder: ``$DETECTRON2_CONFIGS``, else the installed model zoo's."""
    env = os.environ.get("DETECTRON2_CONFIGS")
    if env:
        return env
    from detectron2 import model_zoo

    try:
        gn_config = model_zoo.get_config_file("Misc/mask_rcnn_R_50_FPN_3x_gn.yaml")
    except RuntimeError:
        pytest.skip("Detectron2's configs are not installed; set DETECTRON2_CONFIGS to a source checkout's configs/")
    return os.path.dirname(os.path.dirname(gn_config))


def load_cfg(path: str, opts=()):
    """A yacs config with ``MODEL.DGN``, on CPU."""
    from detectron2.config import get_cfg

    from dgn_plugins.detectron2 import add_dgn_config

    cfg = get_cfg()
    add_dgn_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def gn_to_dgn_opts(cfg) -> list:
    """``KEY DGN`` overrides for every norm key of ``cfg`` that says GN."""
    opts = []

    def walk(node, prefix):
        for key, value in node.items():
            if hasattr(value, "items"):
                walk(value, prefix + key + ".")
            elif key.endswith("NORM") and value == "GN":
                opts.extend([prefix + key, "DGN"])

    walk(cfg, "")
    return opts


def tiny_train_opts(output_dir: str, max_iter: int, *, interval: int = 2, checkpoint_period: int = 1000) -> list:
    """The demo config cut to a few 2-image iterations with frequent regroups."""
    return [
        "OUTPUT_DIR", str(output_dir),
        "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.MAX_ITER", str(max_iter),
        "SOLVER.STEPS", "()",
        "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.CHECKPOINT_PERIOD", str(checkpoint_period),
        "DATALOADER.NUM_WORKERS", "0",
        "MODEL.DGN.REGROUP.INTERVAL", str(interval),
        "MODEL.DGN.REGROUP.START", "0",
        "MODEL.DGN.REGROUP.STOP_SHARE", "1.0",  # to the end: these runs check the hook's mechanics
        "TEST.EVAL_PERIOD", "0",
        "DATASETS.TEST", "()",
    ]


def dgn_modules(model):
    from dgn_plugins import DynamicGroupNorm

    return [(n, m) for n, m in model.named_modules() if isinstance(m, DynamicGroupNorm)]


def plain_group_norms(model):
    """``nn.GroupNorm`` layers that are not DGN."""
    from torch import nn

    from dgn_plugins import DynamicGroupNorm

    return [n for n, m in model.named_modules() if isinstance(m, nn.GroupNorm) and not isinstance(m, DynamicGroupNorm)]


def tiny_heads_and_data(width: int, fc: int) -> str:
    """LazyConfig lines shared by the tiny Mask R-CNNs: a `width`-channel pyramid and heads (box head fc of `fc`),
    3 classes, the generated COCO data set at 64 px, batch 2, no workers (`L` and `T` imported by the config)."""
    return f"""
model.backbone.out_channels = {width}
model.proposal_generator.head.in_channels = {width}
model.roi_heads.num_classes = 3
model.roi_heads.box_head.input_shape.channels = {width}
model.roi_heads.box_head.conv_dims = [{width}, {width}]
model.roi_heads.box_head.fc_dims = [{fc}]
model.roi_heads.box_predictor.input_shape.channels = {fc}
model.roi_heads.mask_head.input_shape.channels = {width}
model.roi_heads.mask_head.conv_dims = [{width}, {width}]

dataloader.train.dataset.names = "dgn_synthetic_coco_train"
dataloader.test.dataset.names = "dgn_synthetic_coco_val"
dataloader.train.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=64, max_size=64)]
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=64, max_size=64)]
dataloader.train.total_batch_size = 2
dataloader.train.num_workers = 0
dataloader.test.num_workers = 0
"""


#: A tiny LazyConfig Mask R-CNN (R-18, DGN everywhere) on the generated data set, 2 iterations.
TINY_LAZY = """
import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from dgn_plugins.detectron2 import DGNNorm

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
optimizer = model_zoo.get_config("common/optim.py").SGD
train = model_zoo.get_config("common/train.py").train
lr_multiplier = model_zoo.get_config("common/coco_schedule.py").lr_multiplier_1x

_dgn = L(DGNNorm)(num_groups=32)
model.backbone.bottom_up.freeze_at = 0
model.backbone.bottom_up.stem.norm = model.backbone.bottom_up.stages.norm = _dgn
model.backbone.norm = model.roi_heads.box_head.conv_norm = model.roi_heads.mask_head.conv_norm = _dgn
model.backbone.bottom_up.stages.depth = 18
del model.backbone.bottom_up.stages.stride_in_1x1  # a BottleneckBlock argument
""" + tiny_heads_and_data(64, 128) + """
train.max_iter = 2
train.eval_period = 0
train.checkpointer.period = 100
train.dgn_regroup = dict(interval=1, stop=None)  # to the end: the test checks the mechanics
"""
