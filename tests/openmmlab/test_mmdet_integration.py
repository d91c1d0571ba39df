"""MMDetection end to end on CPU: the shipped DGN config trains and regroups,
GN-pretrained weights load into DGN, and DGN equals GN at init."""
import pytest
import torch
from mmdet_helpers import DEMO_DGN, DEMO_GN, MMDET_DGN_CONFIGS, shrink_mask_rcnn, tiny_run_cfg

pytest.importorskip("mmdet", reason="mmdet is not installed")

from mmengine.config import Config  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from torch import nn  # noqa: E402

from dgn_plugins import DynamicGroupNorm, dgn_layers  # noqa: E402
from dgn_plugins.grouping import default_group_ids  # noqa: E402


def build_model(model_cfg):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope("mmdet"):
        return MODELS.build(model_cfg)


def randomize_norms(model, seed=0):
    """Non-default affine parameters, so that loading them is visible."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.GroupNorm):
                module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=generator))
    return model


def test_shipped_r50_config_trains_and_regroups_trainable_layers(train_tool, tiny_coco, tmp_path):
    cfg = shrink_mask_rcnn(tiny_run_cfg(train_tool, MMDET_DGN_CONFIGS[0], tmp_path, tiny_coco, max_iters=2))
    cfg.custom_hooks = [dict(type="DGNRegroupHook", interval=1, stop=None)]
    runner = train_tool.build_runner(cfg)
    runner.train()

    layers = dict(dgn_layers(runner.model))
    frozen = [n for n in layers if n == "backbone.gn1" or n.startswith("backbone.layer1.")]  # frozen_stages=1
    trainable = [n for n in layers if n not in frozen]
    assert len(frozen) == 1 + 3 * 3 + 1 and len(trainable) == len(layers) - len(frozen)
    for name in trainable:
        assert int(layers[name].num_regroups) == 2, name
        assert int(layers[name].num_stat_updates) == 2, name
    for name in frozen:  # eval mode, requires_grad=False: untouched
        layer = layers[name]
        assert int(layer.num_regroups) == 0 and int(layer.num_stat_updates) == 0, name
        assert torch.equal(layer.group_id, default_group_ids(layer.num_channels, layer.num_groups))
    assert runner.message_hub.get_scalar("train/dgn_layers_regrouped").current() == len(trainable)


def test_gn_pretrained_backbone_loads_into_dgn_with_keys_unchanged(tmp_path):
    """A stand-in for open-mmlab://detectron/resnet50_gn (no download): the
    same key layout, written by a GN ResNet-50, loaded the two ways configs do."""
    from mmengine.runner import load_checkpoint

    dgn_cfg = Config.fromfile(MMDET_DGN_CONFIGS[0])
    gn_backbone_cfg = dgn_cfg.model.backbone.copy()
    gn_backbone_cfg.norm_cfg = dict(type="GN", num_groups=32, requires_grad=True)
    gn_backbone_cfg.init_cfg = None
    gn_backbone = randomize_norms(build_model(gn_backbone_cfg))
    state = gn_backbone.state_dict()
    for key in ("gn1.weight", "layer1.0.gn3.bias", "layer1.0.downsample.1.weight", "layer4.2.gn2.weight"):
        assert key in state  # the detectron GN checkpoints' layout
    checkpoint = tmp_path / "resnet50_gn.pth"
    torch.save({"state_dict": state}, checkpoint)

    # 1. init_cfg=dict(type='Pretrained'), as the shipped config loads the backbone
    dgn_backbone_cfg = dgn_cfg.model.backbone.copy()
    dgn_backbone_cfg.init_cfg = dict(type="Pretrained", checkpoint=str(checkpoint))
    dgn_backbone = build_model(dgn_backbone_cfg)
    dgn_backbone.init_weights()
    # 2. load_from / load_checkpoint, strict: no missing or unexpected key
    strict_loaded = build_model(dgn_cfg.model.backbone.copy())
    load_checkpoint(strict_loaded, str(checkpoint), strict=True)

    inputs = torch.randn(1, 3, 64, 64)
    gn_backbone.eval()
    expected = gn_backbone(inputs)
    for model in (dgn_backbone, strict_loaded):
        model.eval()
        assert sum(isinstance(m, DynamicGroupNorm) for m in model.modules()) == 53
        for key, value in state.items():
            assert torch.equal(model.state_dict()[key], value), key
        for out, ref in zip(model(inputs), expected):  # 53 norms deep: float32 summation order shows
            torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_dgn_demo_twin_equals_gn_twin_at_init():
    """Same weights in, same outputs out: backbone + FPN, box head, mask head."""
    gn_model = randomize_norms(build_model(Config.fromfile(DEMO_GN).model)).eval()
    dgn_model = build_model(Config.fromfile(DEMO_DGN).model).eval()
    dgn_model.load_state_dict(gn_model.state_dict(), strict=True)  # GN state dicts load into DGN
    assert sum(isinstance(m, DynamicGroupNorm) for m in dgn_model.modules()) == sum(
        type(m) is nn.GroupNorm for m in gn_model.modules()
    )
    torch.manual_seed(0)
    images = torch.randn(2, 3, 96, 96)
    rois_7, rois_14 = torch.randn(6, 64, 7, 7), torch.randn(6, 64, 14, 14)
    with torch.no_grad():
        for out, ref in zip(dgn_model.extract_feat(images), gn_model.extract_feat(images)):
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        for out, ref in zip(dgn_model.roi_head.bbox_head(rois_7), gn_model.roi_head.bbox_head(rois_7)):
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            dgn_model.roi_head.mask_head(rois_14), gn_model.roi_head.mask_head(rois_14), rtol=1e-5, atol=1e-5
        )
