"""``NORM: "DGN"``: config keys, every builtin builder, Detectron2's GN rules, GN checkpoints."""
import copy
import os
import pickle
import re

import pytest

# "detectron2.config", not "detectron2": with tests/ on sys.path this folder
# would pass for a (namespace) package named detectron2.
pytest.importorskip("detectron2.config", reason="Detectron2 is not installed (built from source: see docs/detectron2.md)")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from d2_support import (  # noqa: E402
    config_path,
    detectron2_configs_dir,
    dgn_modules,
    gn_to_dgn_opts,
    load_cfg,
    plain_group_norms,
)
from detectron2.layers import ShapeSpec, get_norm  # noqa: E402
from detectron2.modeling import build_backbone  # noqa: E402

from dgn_plugins import DynamicGroupNorm  # noqa: E402
from dgn_plugins.detectron2 import (  # noqa: E402
    DGNNorm,
    add_dgn_config,
    build_model,
    check_norm_keys_on_load,
    dgn_layer_options,
    dgn_norm_keys,
    resolve_dgn_norms,
)

DEMO_GN = config_path("demo_mask_rcnn_gn.yaml")
DEMO_DGN = config_path("demo_mask_rcnn_dgn.yaml")


# ------------------------------------------------------------------ config
def test_add_dgn_config_defaults_match_detectron2_gn():
    from detectron2.config import get_cfg

    cfg = add_dgn_config(get_cfg())
    options = dgn_layer_options(cfg)
    assert options["num_groups"] == 32 and options["group_size"] is None  # get_norm's "GN" is GroupNorm(32, C)
    cfg.merge_from_list(["MODEL.DGN.GROUP_SIZE", "16", "MODEL.DGN.ALPHA", "0.25"])
    assert dgn_layer_options(cfg)["group_size"] == 16
    assert dgn_layer_options(cfg)["alpha"] == 0.25


def test_regroup_schedule_defaults_to_the_studys_shares():
    """MODEL.DGN.REGROUP: every 10% of SOLVER.MAX_ITER, none in the last 10% (bench/RESULTS.md),
    unless a config gives iterations; INTERVAL 0 disables; a share outside (0, 1) is named."""
    from detectron2.config import get_cfg

    from dgn_plugins.detectron2 import regroup_options

    cfg = add_dgn_config(get_cfg())
    options = regroup_options(cfg)
    assert (options["interval"], options["start"], options["stop"]) == (0.1, 0, 0.9)
    cfg.merge_from_list(["MODEL.DGN.REGROUP.INTERVAL", "1000", "MODEL.DGN.REGROUP.STOP", "250000"])
    options = regroup_options(cfg)
    assert (options["interval"], options["stop"]) == (1000, 250000)
    cfg.merge_from_list(["MODEL.DGN.REGROUP.STOP", "-1", "MODEL.DGN.REGROUP.STOP_SHARE", "1.0"])
    assert regroup_options(cfg)["stop"] is None
    cfg.merge_from_list(["MODEL.DGN.REGROUP.INTERVAL", "-1", "MODEL.DGN.REGROUP.INTERVAL_SHARE", "1.5"])
    with pytest.raises(ValueError, match="INTERVAL_SHARE must lie in"):
        regroup_options(cfg)
    cfg.merge_from_list(["MODEL.DGN.REGROUP.INTERVAL", "0"])
    assert regroup_options(cfg) is None


def test_missing_add_dgn_config_is_explained():
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.RESNETS.NORM = "DGN"
    with pytest.raises(KeyError, match="add_dgn_config"):
        resolve_dgn_norms(cfg)


def test_resolution_leaves_the_users_config_serialisable():
    cfg = load_cfg(DEMO_DGN)
    cfg.freeze()
    resolved = resolve_dgn_norms(cfg)
    assert set(dgn_norm_keys(cfg)) == {
        "MODEL.RESNETS.NORM",
        "MODEL.FPN.NORM",
        "MODEL.ROI_BOX_HEAD.NORM",
        "MODEL.ROI_MASK_HEAD.NORM",
    }
    assert cfg.MODEL.FPN.NORM == "DGN" and isinstance(resolved.MODEL.FPN.NORM, DGNNorm)
    assert resolved.is_frozen()
    assert "DGN" in cfg.dump()  # the original still dumps to YAML
    assert copy.deepcopy(resolved).MODEL.FPN.NORM == resolved.MODEL.FPN.NORM


def test_dgn_norm_is_a_get_norm_callable_and_picklable():
    norm = DGNNorm(num_groups=8, alpha=0.25, percentile=0.5)
    layer = get_norm(norm, 64)
    assert isinstance(layer, DynamicGroupNorm) and layer.num_groups == 8 and layer.percentile == 0.5
    assert pickle.loads(pickle.dumps(norm)) == norm
    assert DGNNorm(group_size=16)(64).num_groups == 4
    with pytest.raises(ValueError):
        DGNNorm(alpha=1.5)


# ------------------------------------------------------------- builders
def _cfg_with(*opts):
    from detectron2.config import get_cfg

    cfg = add_dgn_config(get_cfg())
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def _assert_all_dgn(module, at_least=1):
    assert not plain_group_norms(module)
    assert len(dgn_modules(module)) >= at_least


def test_resnet_and_fpn_backbone():
    cfg = _cfg_with(
        "MODEL.BACKBONE.NAME", "build_resnet_fpn_backbone",
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.RESNETS.OUT_FEATURES", "['res2','res3','res4','res5']",
        "MODEL.FPN.IN_FEATURES", "['res2','res3','res4','res5']",
        "MODEL.RESNETS.NORM", "DGN", "MODEL.FPN.NORM", "DGN",
    )
    backbone = build_backbone(resolve_dgn_norms(cfg))
    _assert_all_dgn(backbone.bottom_up.stem)
    _assert_all_dgn(backbone.bottom_up.res5)
    for conv in backbone.lateral_convs + backbone.output_convs:
        assert isinstance(conv.norm, DynamicGroupNorm) and conv.bias is None  # as under GN
    outputs = backbone(torch.randn(2, 3, 64, 64))
    assert set(outputs) == {"p2", "p3", "p4", "p5", "p6"}


def test_box_and_mask_heads_with_empty_roi_batches():
    from detectron2.modeling.roi_heads import build_box_head, build_mask_head

    cfg = resolve_dgn_norms(
        _cfg_with(
            "MODEL.ROI_BOX_HEAD.NAME", "FastRCNNConvFCHead", "MODEL.ROI_BOX_HEAD.NUM_CONV", "4",
            "MODEL.ROI_BOX_HEAD.NUM_FC", "1", "MODEL.ROI_BOX_HEAD.NORM", "DGN",
            "MODEL.ROI_MASK_HEAD.NUM_CONV", "4", "MODEL.ROI_MASK_HEAD.NORM", "DGN",
            "MODEL.ROI_HEADS.NUM_CLASSES", "3",
        )
    )
    box_head = build_box_head(cfg, ShapeSpec(channels=256, height=7, width=7))
    mask_head = build_mask_head(cfg, ShapeSpec(channels=256, height=14, width=14))
    _assert_all_dgn(box_head, 4)
    _assert_all_dgn(mask_head, 4)
    assert all(conv.bias is None for conv in box_head.conv_norm_relus)
    box_head.train()
    empty = box_head(torch.zeros(0, 256, 7, 7, requires_grad=True))
    assert empty.shape == (0, 1024)
    empty.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in box_head.parameters() if p.grad is not None)
    mask_features = mask_head.layers(torch.zeros(0, 256, 14, 14))
    assert mask_features.shape[0] == 0
    for _, layer in dgn_modules(box_head):
        assert int(layer.num_stat_updates) == 0  # an empty batch leaves the statistics alone


def test_semantic_segmentation_head():
    from detectron2.modeling import build_sem_seg_head

    cfg = resolve_dgn_norms(_cfg_with("MODEL.SEM_SEG_HEAD.NORM", "DGN", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "5"))
    shapes = {f"p{i}": ShapeSpec(channels=256, stride=2**i) for i in (2, 3, 4, 5)}
    head = build_sem_seg_head(cfg, shapes)
    _assert_all_dgn(head, 4)
    head.eval()
    features = {name: torch.randn(1, 256, 64 // s.stride, 64 // s.stride) for name, s in shapes.items()}
    logits, _ = head(features)
    assert logits.shape[:2] == (1, 5)


def test_retinanet_head():
    from detectron2.modeling.meta_arch.retinanet import RetinaNetHead

    cfg = resolve_dgn_norms(_cfg_with("MODEL.RETINANET.NORM", "DGN"))
    head = RetinaNetHead(cfg, [ShapeSpec(channels=256)] * 5)
    _assert_all_dgn(head, 8)
    logits, deltas = head([torch.randn(1, 256, 2**(5 - i), 2**(5 - i)) for i in range(5)])
    assert logits[0].shape[1] % cfg.MODEL.RETINANET.NUM_CLASSES == 0 and len(deltas) == 5


def test_detectron2_build_model_alone_does_not_know_dgn():
    """Why our build_model exists: get_norm's dict has no "DGN" (see norm.py)."""
    from detectron2.modeling import build_model as detectron2_build_model

    with pytest.raises(KeyError, match="DGN"):
        detectron2_build_model(load_cfg(DEMO_DGN))


# ----------------------------------------------------- Detectron2's GN configs
def _detectron2_gn_configs():
    """Detectron2's ``Misc/*_gn*.yaml`` (collected after importorskip, so Detectron2 is there)."""
    try:
        root = detectron2_configs_dir()
    except pytest.skip.Exception:
        return []
    return sorted(f"Misc/{n}" for n in os.listdir(os.path.join(root, "Misc")) if "_gn" in n and n.endswith(".yaml"))


@pytest.mark.parametrize("name", _detectron2_gn_configs() or ["Misc/mask_rcnn_R_50_FPN_3x_gn.yaml"])
def test_every_detectron2_gn_config_builds_with_dgn(name):
    path = os.path.join(detectron2_configs_dir(), name)
    base = load_cfg(path, ["MODEL.WEIGHTS", ""])
    opts = gn_to_dgn_opts(base)
    assert opts, f"{name} has no GN norm"
    torch.manual_seed(0)
    gn_model = build_model(base)
    dgn_model = build_model(load_cfg(path, ["MODEL.WEIGHTS", "", *opts]))
    assert not plain_group_norms(dgn_model)
    assert len(dgn_modules(dgn_model)) == len(plain_group_norms(gn_model))
    gn_keys, dgn_keys = set(gn_model.state_dict()), set(dgn_model.state_dict())
    assert gn_keys <= dgn_keys  # a GN checkpoint has nothing DGN would not take
    extra = {key.rsplit(".", 1)[1] for key in dgn_keys - gn_keys}
    assert extra == {"group_id", "channel_mean_ema", "channel_var_ema", "num_stat_updates", "num_regroups"}


# ----------------------------------------------- Detectron2's rules for GN
def test_weight_decay_norm_applies_to_dgn():
    from detectron2.solver import get_default_optimizer_params

    model = build_model(load_cfg(DEMO_DGN))
    groups = get_default_optimizer_params(model, base_lr=0.1, weight_decay=1e-4, weight_decay_norm=0.0)
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    norm_params = [p for _, m in dgn_modules(model) for p in m.parameters(recurse=False)]
    assert norm_params and all(decay_of[id(p)] == 0.0 for p in norm_params)
    assert any(decay == 1e-4 for decay in decay_of.values())


def _first_image_batch():
    image = torch.from_numpy(np.random.RandomState(0).randint(0, 255, (3, 96, 96)).astype(np.float32))
    return [{"image": image, "height": 96, "width": 96}]


def test_gn_model_zoo_checkpoint_loads_and_dgn_equals_gn_at_init(tmp_path):
    """A GN Mask R-CNN saved as Detectron2's model zoo saves it (.pkl, numpy), loaded into DGN."""
    from detectron2.checkpoint import DetectionCheckpointer

    torch.manual_seed(0)
    gn_model = build_model(load_cfg(DEMO_GN)).eval()
    path = tmp_path / "model_final_gn.pkl"
    with open(path, "wb") as f:
        state = {k: v.numpy() for k, v in gn_model.state_dict().items()}
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}, f)

    torch.manual_seed(1)  # different random init, so only the checkpoint can make them agree
    dgn_model = build_model(load_cfg(DEMO_DGN)).eval()
    check_norm_keys_on_load(DetectionCheckpointer(dgn_model), "MODEL.WEIGHTS").load(str(path))  # every norm key fits
    with torch.no_grad():
        gn_out = gn_model(_first_image_batch())[0]["instances"]
        dgn_out = dgn_model(_first_image_batch())[0]["instances"]
        gn_features = gn_model.backbone(gn_model.preprocess_image(_first_image_batch()).tensor)
        dgn_features = dgn_model.backbone(dgn_model.preprocess_image(_first_image_batch()).tensor)
    for name in gn_features:
        torch.testing.assert_close(dgn_features[name], gn_features[name], rtol=1e-4, atol=1e-4)
    assert len(dgn_out) == len(gn_out)
    torch.testing.assert_close(dgn_out.scores, gn_out.scores, rtol=1e-4, atol=1e-4)
    for _, layer in dgn_modules(dgn_model):
        assert int(layer.num_regroups) == 0 and int(layer.num_stat_updates) == 0


def _caffe2_name(name: str) -> str:
    """The Detectron (Caffe2) blob name of a ResNet backbone parameter, as in ImageNetPretrained/FAIR/R-50-GN.pkl."""
    name = name.replace("backbone.bottom_up.", "")
    name = name.replace("stem.conv1.norm.", "conv1_gn_").replace("stem.conv1.", "conv1_")
    for d2, c2 in (("conv1", "branch2a"), ("conv2", "branch2b"), ("conv3", "branch2c"), ("shortcut", "branch1")):
        name = name.replace(f".{d2}.norm.", f".{c2}_gn_").replace(f".{d2}.", f".{c2}_")
    name = name.replace(".", "_")
    return name.replace("_weight", "_w").replace("_gn_w", "_gn_s").replace("_bias", "_b")


def test_gn_imagenet_catalog_checkpoint_loads_into_dgn_backbone(tmp_path):
    """A Caffe2-format R-50-GN pickle (the catalog's key names, random values) loads into a DGN R-50."""
    from detectron2.checkpoint import DetectionCheckpointer

    opts = ["MODEL.WEIGHTS", ""]
    path = config_path("mask_rcnn_R_50_FPN_3x_dgn.yaml")
    torch.manual_seed(0)
    gn_model = build_model(load_cfg(config_path("mask_rcnn_R_50_FPN_3x_gn.yaml"), opts))
    blobs = {
        _caffe2_name(k): v.numpy() + 0.01  # differ from any fresh init
        for k, v in gn_model.state_dict().items()
        if k.startswith("backbone.bottom_up.")
    }
    assert "res2_0_branch2a_gn_s" in blobs and "conv1_gn_b" in blobs and "res5_2_branch2c_w" in blobs
    with open(tmp_path / "R-50-GN.pkl", "wb") as f:
        pickle.dump(blobs, f)  # ImageNet models are a plain name -> array dict
    dgn_model = build_model(load_cfg(path, opts))
    # The backbone alone, under Caffe2 names: no norm left behind (the FPN's and heads' are fresh, as their convs).
    check_norm_keys_on_load(DetectionCheckpointer(dgn_model), "MODEL.WEIGHTS").load(str(tmp_path / "R-50-GN.pkl"))
    dgn_state = dgn_model.state_dict()
    for name, value in gn_model.state_dict().items():
        if name.startswith("backbone.bottom_up."):
            np.testing.assert_allclose(dgn_state[name].numpy(), value.numpy() + 0.01, err_msg=name)
    for _, layer in dgn_modules(dgn_model.backbone.bottom_up):
        assert torch.equal(layer.group_id, DynamicGroupNorm(layer.num_channels, layer.num_groups).group_id)


# ----------------------------------------------------- errors that name the setting
def test_norm_typo_names_the_key_and_the_accepted_values():
    from dgn_plugins.detectron2 import UnknownNormError

    with pytest.raises(UnknownNormError) as info:
        build_model(load_cfg(DEMO_DGN, ["MODEL.FPN.NORM", "DNG", "MODEL.ROI_BOX_HEAD.NORM", "DNG"]))
    message = str(info.value)
    assert message.startswith("MODEL.FPN.NORM, MODEL.ROI_BOX_HEAD.NORM = 'DNG' is not a norm Detectron2 knows.")
    assert "Did you mean 'DGN'?" in message and "\n" not in message
    assert "Accepted: '', 'BN', 'SyncBN', 'FrozenBN', 'GN'" in message and "'LN', 'DGN'." in message


def test_infeasible_options_name_the_layer_and_the_config_key():
    from dgn_plugins.grouping import DGNOptionError

    cfg = load_cfg(DEMO_DGN, ["MODEL.DGN.GROUP_SIZE", "5", "MODEL.DGN.ALPHA", "0.05"])
    with pytest.raises(DGNOptionError) as info:
        build_model(cfg)
    message = str(info.value)
    assert re.match(r"layer backbone\.[\w.]+\.norm: DGN layer with C=\d+ channels \(group_size=5, alpha=0\.05\)", message)
    assert "raise MODEL.DGN.ALPHA to >= " in message and "a MODEL.DGN.GROUP_SIZE that divides C" in message
    assert "(set in MODEL.DGN for " in message and "MODEL.RESNETS.NORM" in message and "also " in message
