"""The shipped MMSegmentation configs: ImageNet-S 50/300/919 and the seg demo.

Each DGN config must be its GN twin with the norm type changed and the
regroup hook added, nothing else; every model must build with the norm
layers it claims; the demo must train end to end on its generated data.
"""
import copy
import os

import pytest
import torch

pytest.importorskip("mmseg", reason="mmseg is not installed")

from mmengine.config import Config  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from torch import nn  # noqa: E402

import dgn_plugins.openmmlab  # noqa: E402
from dgn_plugins.data import synthetic_seg  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEDULES = {50: "3k", 300: "20k", 919: "60k"}
IMAGENET_S = {
    (subset, norm): os.path.join(
        ROOT, "configs", "mmseg", f"fcn_r50-{norm}-d8_4xb4-{SCHEDULES[subset]}_imagenets{subset}-224x224.py"
    )
    for subset in SCHEDULES
    for norm in ("gn", "dgn")
}
DEMO = {norm: os.path.join(ROOT, "configs", "demo", f"fcn_tiny_{norm}_demo.py") for norm in ("gn", "dgn")}


@pytest.fixture(autouse=True)
def mmseg_scope():
    """Registry look-ups in mmseg's scope, for this module's tests only."""
    with DefaultScope.overwrite_default_scope("mmseg"):
        yield


def as_gn(cfg_dict):
    """The config with DGN norm types read as GN and the regroup hook removed."""
    cfg_dict = copy.deepcopy(cfg_dict)

    def visit(node):
        if isinstance(node, dict):
            if node.get("type") == "DGN":
                node["type"] = "GN"
            for value in node.values():
                visit(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                visit(value)

    visit(cfg_dict)
    hooks = [h for h in cfg_dict.pop("custom_hooks", []) if h.get("type") != "DGNRegroupHook"]
    if hooks:
        cfg_dict["custom_hooks"] = hooks
    return cfg_dict


def norm_layers(model):
    return [m for m in model.modules() if isinstance(m, (nn.GroupNorm, nn.modules.batchnorm._BatchNorm))]


def build_model(cfg):
    cfg = copy.deepcopy(cfg)
    cfg.model.backbone.init_cfg = None  # no pretrained download
    return MODELS.build(cfg.model)


# ---------------------------------------------------------------- ImageNet-S
@pytest.mark.parametrize("subset", sorted(SCHEDULES))
def test_dgn_config_is_its_gn_twin_plus_norm_type_and_hook(subset):
    gn = Config.fromfile(IMAGENET_S[(subset, "gn")]).to_dict()
    dgn = Config.fromfile(IMAGENET_S[(subset, "dgn")]).to_dict()
    assert [h["type"] for h in dgn["custom_hooks"]] == ["DGNRegroupHook"]
    hook = dgn["custom_hooks"][0]
    assert (hook["interval"], hook["stop"]) == (0.1, 0.9)  # the study's schedule: the last tenth trains on the final grouping
    for part in ("backbone", "decode_head", "auxiliary_head"):
        assert dgn["model"][part]["norm_cfg"]["type"] == "DGN"
        assert gn["model"][part]["norm_cfg"]["type"] == "GN"
    assert as_gn(dgn) == gn


@pytest.mark.parametrize("subset", sorted(SCHEDULES))
def test_imagenet_s_configs_use_ignore_1000_everywhere(subset):
    cfg = Config.fromfile(IMAGENET_S[(subset, "dgn")])
    assert cfg.model.data_preprocessor.seg_pad_val == 1000
    for head in (cfg.model.decode_head, cfg.model.auxiliary_head):
        assert head.ignore_index == 1000 and head.num_classes == subset + 1
        assert head.loss_decode.avg_non_ignore
    crop = next(t for t in cfg.train_dataloader.dataset.pipeline if t.type == "RandomCrop")
    assert crop.ignore_index == 1000 and crop.cat_max_ratio < 1
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        assert loader.dataset.type == "ImageNetSDataset" and loader.dataset.subset == subset
        assert loader.dataset.data_root == f"data/ImageNetS/ImageNetS{subset}"
        assert not loader.dataset.get("generate_if_missing", False)
    train_prefix = dict(img_path="train-semi", seg_map_path="train-semi-segmentation")
    assert cfg.train_dataloader.dataset.data_prefix == train_prefix
    assert cfg.val_dataloader.dataset.data_prefix == dict(img_path="validation", seg_map_path="validation-segmentation")
    for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
        assert evaluator.type == "ImageNetSIoUMetric" and evaluator.ignore_index == 1000


@pytest.mark.parametrize("subset", sorted(SCHEDULES))
@pytest.mark.parametrize("norm", ["gn", "dgn"])
def test_imagenet_s_models_build_with_their_norm_everywhere(subset, norm):
    model = build_model(Config.fromfile(IMAGENET_S[(subset, norm)]))
    layers = norm_layers(model)
    expected = dgn_plugins.DynamicGroupNorm if norm == "dgn" else nn.GroupNorm
    assert layers and all(type(layer) is expected for layer in layers)
    for part in (model.backbone, model.decode_head, model.auxiliary_head):
        assert any(type(m) is expected for m in part.modules())
    assert model.decode_head.conv_seg.out_channels == subset + 1


def test_gn_checkpoint_gives_the_dgn_model_identical_outputs():
    """Same weights, DGN at its initial (GN) grouping: the segmentor's logits agree."""
    torch.manual_seed(0)
    gn = build_model(Config.fromfile(IMAGENET_S[(50, "gn")])).eval()
    dgn = build_model(Config.fromfile(IMAGENET_S[(50, "dgn")])).eval()
    dgn.load_state_dict(gn.state_dict(), strict=True)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = gn._forward(image)
        actual = dgn._forward(image)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(actual.argmax(1), expected.argmax(1))


# --------------------------------------------------------------------- demo
def test_demo_configs_are_twins_on_the_generated_set():
    gn = Config.fromfile(DEMO["gn"])
    dgn = Config.fromfile(DEMO["dgn"])
    assert as_gn(dgn.to_dict()) == gn.to_dict()
    for loader in (gn.train_dataloader, gn.val_dataloader):
        assert loader.dataset.generate_if_missing and loader.dataset.subset is None
        assert loader.dataset.data_root.startswith("data/generated/")
        assert tuple(loader.dataset.metainfo.classes) == synthetic_seg.CLASSES
    assert gn.val_evaluator.type == "ImageNetSIoUMetric"
    assert gn.train_cfg.type == "IterBasedTrainLoop"
    hook = dgn.custom_hooks[0]
    assert hook.type == "DGNRegroupHook" and (hook.interval, hook.stop) == (0.1, 0.9)
    model = build_model(dgn)
    assert all(type(layer) is dgn_plugins.DynamicGroupNorm for layer in norm_layers(model))


def test_dgn_demo_trains_and_evaluates_on_data_it_generates(tmp_path):
    """Two iterations, a regroup after each, one evaluation: the demo's whole path."""
    from mmengine.runner import Runner

    cfg = Config.fromfile(DEMO["dgn"])
    data_root = str(tmp_path / "generated" / "imagenets_synthetic")
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = data_root
    cfg.train_dataloader.batch_size = 4
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=2, val_interval=2)
    cfg.custom_hooks = [dict(type="DGNRegroupHook", interval=1, stop=None)]
    cfg.default_hooks.checkpoint = None
    cfg.work_dir = str(tmp_path / "work")
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert os.path.isfile(os.path.join(data_root, "spec.json"))
    metrics = runner.val_loop.evaluator.metrics[0]
    assert metrics.ignore_index == 1000
    layers = dgn_plugins.dgn_layers(runner.model)
    assert any(int(layer.num_regroups) > 0 for _, layer in layers)
    scalars = runner.message_hub.log_scalars
    assert "val/mIoU" in scalars and "val/mIoU_official" in scalars
