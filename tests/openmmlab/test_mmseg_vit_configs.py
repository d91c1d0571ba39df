"""The ViT-B/16 ImageNet-S configs (issue 19): LN anchor, GN (TokenDGN, never regrouped), DGN.

Each must build its model with the norm it claims, load a converted MAE
checkpoint with no norm key missing or unexpected (a synthetic timm/MAE state
dict run through mmseg's own ``vit2mmseg`` converter, ``vit_helpers.py``), and
differ from its twin only in the norm (GN) or the regroup hook (DGN); shrunken
GN and DGN versions (the shipped configs with a tiny ViT, data and schedule
overridden) train through mmseg's own ``tools/train.py``, the DGN one
regrouping and resuming.
"""
import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("mmseg", reason="mmseg is not installed")

from mmengine.config import Config  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmseg.engine.optimizers import LearningRateDecayOptimizerConstructor  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from torch import nn  # noqa: E402
from vit_helpers import save_converted  # noqa: E402

import dgn_plugins.openmmlab  # noqa: E402, F401
from dgn_plugins import TokenDynamicGroupNorm  # noqa: E402
from dgn_plugins.grouping import default_group_ids  # noqa: E402
from dgn_plugins.openmmlab.imagenet_s import ViTLearningRateDecayOptimizerConstructor, encode_label_rgb  # noqa: E402
from dgn_plugins.openmmlab.norm_keys import check_checkpoint_norm_keys, norm_key_mismatch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "configs", "mmseg")
SUBSETS = (50, 300, 919)
VARIANTS = ("ln", "gn", "dgn")
#: ViT-B/16 at 224: the shapes of a real MAE / TEC / iBOT checkpoint.
VIT_B = dict(dims=768, layers=12, hidden=3072, patch=16, image=224)
#: What a DGN layer keeps besides LN's parameters (an LN checkpoint lacks them: GN's grouping).
GROUPING_BUFFERS = ("group_id", "channel_mean_ema", "channel_var_ema", "num_stat_updates", "num_regroups",
                    "group_count")
#: The shrunken ViT of the training tests (64 channels in 8 groups of 8).
TINY = dict(dims=64, layers=4, hidden=256, patch=8, image=32)


def config_path(subset, variant):
    return os.path.join(CONFIGS, f"fcn_vit-b16-{variant}_8xb32-100ep_imagenets{subset}-224x224.py")


@pytest.fixture(autouse=True)
def mmseg_scope():
    with DefaultScope.overwrite_default_scope("mmseg"):
        yield


def build_segmentor(cfg, checkpoint=None):
    cfg = copy.deepcopy(cfg)
    cfg.model.backbone.init_cfg = dict(type="Pretrained", checkpoint=checkpoint) if checkpoint else None
    return MODELS.build(cfg.model)


def norm_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d))]


# ----------------------------------------------------------------- the recipe
@pytest.mark.parametrize("subset", SUBSETS)
def test_gn_is_ln_with_token_dgn_and_dgn_is_gn_with_the_hook(subset):
    ln, gn, dgn = (Config.fromfile(config_path(subset, v)).to_dict() for v in VARIANTS)
    assert ln["model"]["backbone"]["norm_cfg"] == dict(type="LN", eps=1e-6)
    assert gn["model"]["backbone"]["norm_cfg"] == dict(type="TokenDGN", num_groups=32, over="token", eps=1e-6,
                                                       requires_grad=True)
    assert "custom_hooks" not in ln and "custom_hooks" not in gn  # GN: never regrouped
    assert dgn.pop("custom_hooks") == [dict(type="DGNRegroupHook", interval=0.1, stop=0.9)]  # the FCN DGN configs'
    assert dgn == gn
    gn["model"]["backbone"]["norm_cfg"] = ln["model"]["backbone"]["norm_cfg"]
    assert gn == ln


@pytest.mark.parametrize("subset", SUBSETS)
def test_ln_config_is_the_mmseg_0x_imagenet_s_recipe(subset):
    cfg = Config.fromfile(config_path(subset, "ln"))
    backbone, head = cfg.model.backbone, cfg.model.decode_head
    assert backbone.type == "VisionTransformer" and cfg.model.pretrained is None
    assert (backbone.img_size, backbone.patch_size, backbone.embed_dims, backbone.num_layers, backbone.num_heads,
            backbone.mlp_ratio) == ((224, 224), 16, 768, 12, 12, 4)
    assert backbone.drop_path_rate == 0.1 and backbone.final_norm and backbone.with_cls_token
    assert backbone.qkv_bias and backbone.patch_bias  # timm / MAE ViTs have both biases
    assert (head.type, head.num_convs, head.in_channels, head.channels, head.dropout_ratio) == (
        "ImageNetSFCNHead", 0, 768, 768, 0.0)
    assert head.downsample_label_ratio == 8  # 0.x's loss on 28 x 28 labels
    assert head.num_classes == subset + 1 and head.ignore_index == 1000 and cfg.model.auxiliary_head is None
    assert cfg.model.data_preprocessor.seg_pad_val == 1000 and cfg.model.data_preprocessor.size == (224, 224)
    wrapper = cfg.optim_wrapper
    assert wrapper.type == "AmpOptimWrapper" and wrapper.constructor == "ViTLearningRateDecayOptimizerConstructor"
    assert wrapper.optimizer == dict(type="AdamW", lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
    assert wrapper.paramwise_cfg == dict(num_layers=12, decay_rate=0.4, decay_type="layer_wise")
    warmup, cosine = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.end) == ("LinearLR", 1e-6, 5)
    assert (cosine.type, cosine.eta_min, cosine.begin, cosine.end) == ("CosineAnnealingLR", 1e-6, 5, 100)
    assert cfg.train_cfg == dict(type="EpochBasedTrainLoop", max_epochs=100, val_interval=10)
    loader = cfg.train_dataloader
    assert loader.batch_size == 32 and loader.sampler.type == "DefaultSampler"
    assert loader.dataset.subset == subset and loader.dataset.data_root == f"data/ImageNetS/ImageNetS{subset}"
    assert cfg.val_dataloader.dataset.subset == subset and cfg.val_evaluator.type == "ImageNetSIoUMetric"
    assert "dgn_plugins.openmmlab.resumable" in cfg.custom_imports.imports  # --resume in mmseg's own train.py


# --------------------------------------------------------------- the models
@pytest.mark.parametrize("subset", SUBSETS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_config_builds_its_model(subset, variant):
    model = build_segmentor(Config.fromfile(config_path(subset, variant)))
    norms = [(n, m) for n, m in norm_layers(model) if n.startswith("backbone.")]
    assert len(norms) == 2 * 12 + 1  # ln1 / ln2 of each block, the final ln1
    assert all(n.rsplit(".", 1)[-1] in ("ln1", "ln2") for n, _ in norms)
    for name, layer in norms:
        if variant == "ln":
            assert type(layer) is nn.LayerNorm and layer.eps == 1e-6, name
        else:
            assert type(layer) is TokenDynamicGroupNorm, name
            assert (layer.num_groups, layer.over, layer.eps, layer.num_channels) == (32, "token", 1e-6, 768)
    assert model.decode_head.conv_seg.out_channels == subset + 1


@pytest.fixture(scope="module")
def vit_b_checkpoint(tmp_path_factory):
    """A ViT-B/16 MAE-format state dict through mmseg's converter (about 350 MB, written once)."""
    return save_converted(tmp_path_factory.mktemp("vit_b") / "mae_vit-b16_mmseg.pth", **VIT_B)


@pytest.mark.parametrize("variant", VARIANTS)
def test_converted_mae_checkpoint_loads_every_norm_key(vit_b_checkpoint, variant):
    model = build_segmentor(Config.fromfile(config_path(919, variant)), vit_b_checkpoint)
    state = torch.load(vit_b_checkpoint, weights_only=True)
    assert norm_key_mismatch(model.backbone, state) == ([], [])  # no norm key missing or unexpected
    assert check_checkpoint_norm_keys(model, None) == 1  # what our launcher checks before training
    used = model.backbone.load_state_dict(state, strict=False)
    assert not used.unexpected_keys  # every key of the checkpoint has a place (the patch embedding's bias too)
    assert all(k.rsplit(".", 1)[-1] in GROUPING_BUFFERS for k in used.missing_keys), used.missing_keys
    model.backbone.init_weights()  # mmseg's own loading: strict=False, logger=None
    norms = [(n[len("backbone."):], m) for n, m in norm_layers(model) if n.startswith("backbone.")]
    for name, layer in norms:
        assert torch.equal(layer.weight, state[name + ".weight"]), name
        assert torch.equal(layer.bias, state[name + ".bias"]), name
        if variant != "ln":
            assert torch.equal(layer.group_id, default_group_ids(768, 32))  # an LN checkpoint: GN's grouping
    assert torch.equal(model.backbone.pos_embed, state["pos_embed"])


def test_head_takes_the_loss_on_labels_downsampled_by_8_as_0x_did():
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    head_cfg = Config.fromfile(config_path(50, "gn")).model.decode_head
    head = MODELS.build(dict(head_cfg, in_channels=16, channels=16, init_cfg=None))
    torch.manual_seed(0)
    logits = torch.randn(2, 51, 14, 14)
    labels = torch.randint(0, 51, (2, 1, 224, 224))
    labels[:, :, :40] = 1000  # ignored rows (e.g. padding)
    samples = []
    for label in labels:
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    loss = head.loss_by_feat(logits, samples)["loss_ce"]
    small = torch.nn.functional.interpolate(labels.float(), size=(28, 28), mode="nearest").long()[:, 0]
    up = torch.nn.functional.interpolate(logits, size=(28, 28), mode="bilinear", align_corners=False)
    expected = torch.nn.functional.cross_entropy(up, small, ignore_index=1000)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    head.downsample_label_ratio = 0  # MMSegmentation 1.x's FCNHead: the loss at the labels' 224 x 224
    assert head.loss_by_feat(logits, samples)["loss_ce"].item() != pytest.approx(expected.item(), rel=1e-3)
    with pytest.raises(ValueError, match="downsample_label_ratio must be an integer >= 0"):
        MODELS.build(dict(head_cfg, downsample_label_ratio=0.125))


# ------------------------------------------------------ layer-wise lr decay
def param_groups(constructor_type, model, num_layers):
    constructor = constructor_type(
        dict(type="OptimWrapper", optimizer=dict(type="AdamW", lr=1e-4, weight_decay=0.05)),
        dict(num_layers=num_layers, decay_rate=0.4, decay_type="layer_wise"))
    names = {id(p): n for n, p in model.named_parameters()}
    return [(g["lr"], g["weight_decay"], [names[id(p)] for p in g["params"]])
            for g in constructor(model).optimizer.param_groups]


def tiny_segmentor(backbone):
    return MODELS.build(dict(
        type="EncoderDecoder", data_preprocessor=dict(type="SegDataPreProcessor"), backbone=backbone,
        decode_head=dict(type="FCNHead", in_channels=64, channels=64, num_convs=0, concat_input=False,
                         num_classes=3, in_index=-1)))


def test_layer_decay_is_mmsegs_own_rule_and_covers_vision_transformer():
    common = dict(img_size=32, patch_size=8, embed_dims=64, num_layers=4, num_heads=2, mlp_ratio=4)
    mae = tiny_segmentor(dict(type="MAE", **common))
    # The same groups (parameters, lr, weight decay) as mmseg's constructor, where mmseg's runs.
    assert param_groups(ViTLearningRateDecayOptimizerConstructor, mae, 4) == \
        param_groups(LearningRateDecayOptimizerConstructor, mae, 4)

    vit = tiny_segmentor(dict(type="VisionTransformer", final_norm=True,
                              norm_cfg=dict(type="TokenDGN", num_groups=8, eps=1e-6),
                              **common))
    with pytest.raises(NotImplementedError):  # why ours exists: mmseg's knows ConvNeXt, BEiT and MAE only
        param_groups(LearningRateDecayOptimizerConstructor, vit, 4)
    scale = {}
    for lr, _, names in param_groups(ViTLearningRateDecayOptimizerConstructor, vit, 4):
        for name in names:
            scale[name] = lr / 1e-4
    assert scale["backbone.cls_token"] == scale["backbone.patch_embed.projection.weight"] == pytest.approx(0.4 ** 5)
    for i in range(4):
        assert scale[f"backbone.layers.{i}.ln1.weight"] == pytest.approx(0.4 ** (4 - i))
    assert scale["backbone.ln1.weight"] == scale["decode_head.conv_seg.weight"] == 1.0

    with pytest.raises(ValueError, match=r"num_layers=12 but the backbone \(VisionTransformer\) has 4 blocks"):
        param_groups(ViTLearningRateDecayOptimizerConstructor, vit, 12)


# ------------------------------------------- mmseg's own tools/train.py
def mmseg_train_py():
    import mmseg

    return os.path.join(os.path.dirname(mmseg.__file__), ".mim", "tools", "train.py")


def run_mmseg_train(config, work_dir, *extra, timeout=900):
    """mmseg's ``tools/train.py`` in a subprocess (this checkout's ``dgn_plugins`` first on the path)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, mmseg_train_py(), config, "--work-dir", work_dir, *extra],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def tiny_imagenet_s50(tmp_path_factory):
    """Four train-semi and two validation 64 px samples in the ImageNet-S50 layout (ids 0, 3, 50 and 1000)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("ImageNetS50")
    columns = np.array([0, 3, 50, 1000])[np.arange(64) * 4 // 64]
    rng = np.random.RandomState(0)
    for split, label_split, count in (("train-semi", "train-semi-segmentation", 4),
                                      ("validation", "validation-segmentation", 2)):
        for i in range(count):
            label = np.broadcast_to(np.roll(columns, 16 * i), (64, 64))
            for folder in (split, label_split):
                os.makedirs(root / folder / "n01443537", exist_ok=True)
            Image.fromarray(rng.randint(0, 256, (64, 64, 3), dtype=np.uint8)).save(
                root / split / "n01443537" / f"img_{i}.JPEG", format="JPEG")
            Image.fromarray(encode_label_rgb(label)).save(root / label_split / "n01443537" / f"img_{i}.png")
    return str(root)


def shrunken_config(tmp_path, variant, data_root, *, epochs=5):
    """The shipped ImageNet-S50 config, inherited, with a tiny ViT (from a converted MAE checkpoint), data and run."""
    shipped = config_path(50, variant)
    cfg = Config.fromfile(shipped)
    checkpoint = save_converted(tmp_path / "tiny_mae_mmseg.pth", **TINY)
    train_pipeline = [dict(t) for t in cfg.train_dataloader.dataset.pipeline]
    for t in train_pipeline:
        if t["type"] == "RandomResize":
            t["scale"] = (128, 32)
        if t["type"] == "RandomCrop":
            t["crop_size"] = (32, 32)
    test_pipeline = [dict(t) for t in cfg.val_dataloader.dataset.pipeline]
    for t in test_pipeline:
        if t["type"] == "Resize":
            t["scale"] = (128, 32)
    loader = dict(num_workers=0, persistent_workers=False)
    text = f"""
_base_ = {shipped!r}
model = dict(
    data_preprocessor=dict(size=(32, 32)),
    backbone=dict(img_size=(32, 32), patch_size=8, embed_dims=64, num_layers=4, num_heads=2, out_indices=(0, 1, 2, 3),
                  drop_path_rate=0.0, norm_cfg=dict(num_groups=8),
                  init_cfg=dict(type='Pretrained', checkpoint={checkpoint!r})),
    decode_head=dict(in_channels=64, channels=64))
optim_wrapper = dict(type='OptimWrapper', paramwise_cfg=dict(num_layers=4))  # no AMP on a CPU
train_dataloader = dict(batch_size=2, **{loader!r}, dataset=dict(data_root={data_root!r}, pipeline={train_pipeline!r}))
val_dataloader = dict(batch_size=1, **{loader!r}, dataset=dict(data_root={data_root!r}, pipeline={test_pipeline!r}))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs={epochs}, val_interval={epochs})
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1, max_keep_ckpts=-1))
randomness = dict(seed=0)
"""
    path = tmp_path / f"tiny_{variant}.py"
    path.write_text(text)
    return str(path)


def records(work_dir):
    with open(os.path.join(work_dir, "dgn_groups.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_shrunken_gn_config_trains_through_mmsegs_train_py(tmp_path, tiny_imagenet_s50):
    config = shrunken_config(tmp_path, "gn", tiny_imagenet_s50, epochs=2)
    work_dir = str(tmp_path / "work")
    done = run_mmseg_train(config, work_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = torch.load(os.path.join(work_dir, "epoch_2.pth"), map_location="cpu", weights_only=False)
    state = checkpoint["state_dict"]
    groups = [k for k in state if k.startswith("backbone.") and k.endswith(".group_id")]
    assert len(groups) == 2 * 4 + 1 and all(torch.equal(state[k], default_group_ids(64, 8)) for k in groups)
    assert not os.path.exists(os.path.join(work_dir, "dgn_groups.jsonl"))  # never regrouped
    output = done.stdout + done.stderr
    assert "tiny_mae_mmseg.pth" in output  # the converted MAE checkpoint was the init
    assert "mIoU_official" in output


def test_shrunken_dgn_config_regroups_and_resumes_through_mmsegs_train_py(tmp_path, tiny_imagenet_s50):
    config = shrunken_config(tmp_path, "dgn", tiny_imagenet_s50)
    work_dir = str(tmp_path / "work")
    done = run_mmseg_train(config, work_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    first = records(work_dir)
    steps = [r["step"] for r in first]
    assert steps == list(range(1, 10))  # every 10% of 10 iterations (5 epochs of 2), none in the last 10%
    assert all(name.startswith("backbone.") for name in first[0]["group_id"])
    checkpoint = torch.load(os.path.join(work_dir, "epoch_2.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["dgn_regroup_hook"]["regroups_done"] == 4
    final = torch.load(os.path.join(work_dir, "epoch_5.pth"), map_location="cpu", weights_only=False)["state_dict"]
    assert any(not torch.equal(v, default_group_ids(64, 8)) for k, v in final.items() if k.endswith(".group_id"))

    resumed = run_mmseg_train(config, work_dir, "--resume", "--cfg-options",
                              f"load_from={os.path.join(work_dir, 'epoch_2.pth')}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed" in (resumed.stdout + resumed.stderr).lower()
    again = records(work_dir)
    assert again[:4] == first[:4]  # the regroups up to the checkpoint kept, the later ones made again
    assert [r["step"] for r in again] == steps


def test_our_train_py_runs_the_shrunken_dgn_config_and_checks_its_checkpoint(tmp_path, tiny_imagenet_s50):
    """tools/train.py (ours) on the same shrunken DGN config: the converted checkpoint passes its norm-key check."""
    from dgn_plugins.openmmlab import DGNRegroupHook, launcher

    config = shrunken_config(tmp_path, "dgn", tiny_imagenet_s50, epochs=1)
    runner = launcher.main([config, "--work-dir", str(tmp_path / "work")])
    assert any(isinstance(hook, DGNRegroupHook) for hook in runner.hooks)
    assert [r["step"] for r in records(str(tmp_path / "work"))] == [1]  # 10% of 2 iterations rounds to 1, stop 1
    layers = [m for m in runner.model.modules() if isinstance(m, TokenDynamicGroupNorm)]
    assert len(layers) == 2 * 4 + 1 and all(int(m.num_stat_updates) == 2 for m in layers)
