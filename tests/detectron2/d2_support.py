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
