"""MMPretrain: DGN in its scope, AugMix + JSD through its machinery, the shipped configs, their tiny
versions trained by mmpretrain's own tools/train.py (regroup, resume), and tools/train.py --dgn."""
import json
import os

import numpy as np
import pytest
import torch
from mmpretrain_helpers import CONFIGS, run_mmpretrain_train, tiny_config

pytest.importorskip("mmpretrain", reason="mmpretrain is not installed")

import dgn_plugins  # noqa: E402
import dgn_plugins.openmmlab  # noqa: E402, F401  (registration)
from dgn_plugins import DynamicGroupNorm  # noqa: E402

GN_CONFIGS = ["wrn40-2_gn_augmix-jsd_cifar100.py", "resnext29-32x4d_gn_augmix-jsd_cifar100.py",
              "resnet50_gn_8xb32_in1k.py", "resnet50_gn_augmix-jsd_8xb32_in1k.py"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from dgn_plugins.data.synthetic_cls import ensure_synthetic_cls

    return ensure_synthetic_cls(str(tmp_path_factory.mktemp("data") / "cls"))


def _scope():
    from mmengine.registry import DefaultScope

    return DefaultScope.overwrite_default_scope("mmpretrain")


# ------------------------------------------------------------------ registration
def test_dgn_and_our_modules_resolve_in_mmpretrains_scope():
    from mmengine.registry import MODELS as ROOT_MODELS
    from mmpretrain.registry import DATASETS, MODELS, TRANSFORMS

    with ROOT_MODELS.switch_scope_and_registry("mmpretrain") as registry:
        assert registry.scope == "mmpretrain" and registry.get("DGN") is DynamicGroupNorm
        token = getattr(dgn_plugins, "TokenDynamicGroupNorm", None)
        if token is not None:
            assert registry.get("TokenDGN") is token
    with _scope():
        backbone = MODELS.build(dict(type="ResNet", depth=18, stem_channels=8, base_channels=8,
                                     norm_cfg=dict(type="DGN", num_groups=4)))
    assert sum(isinstance(m, DynamicGroupNorm) for m in backbone.modules()) == 1 + 2 * 8 + 3
    for registry, name in ((TRANSFORMS, "AugMix"), (MODELS, "AugMixJSDLoss"), (MODELS, "MultiViewClsDataPreprocessor"),
                           (MODELS, "WideResNetCIFAR"), (MODELS, "ResNeXtCIFAR"), (DATASETS, "CIFAR100C"),
                           (DATASETS, "ImageNetC")):
        assert registry.get(name) is not None, name


# ------------------------------------------------------------------ AugMix, JSD, views
def test_augmix_transform_is_deterministic_under_mmengines_seed():
    from mmengine.runner import set_random_seed
    from mmpretrain.registry import TRANSFORMS

    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    # mmpretrain's scope whatever an earlier test left as MMEngine's default scope (mmdet's, in the full suite).
    transform = TRANSFORMS.build(dict(type="AugMix", jsd=True, _scope_="mmpretrain"))

    def views(seed):
        set_random_seed(seed)
        return transform(dict(img=image.copy()))["img"]

    first, again, other = views(3), views(3), views(4)
    assert len(first) == 3 and all(v.dtype == np.float32 and v.shape == image.shape for v in first)
    assert all(v.min() >= 0 and v.max() <= 255 for v in first) and np.array_equal(first[0], image)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[1], other[1])
    single = TRANSFORMS.build(dict(type="AugMix", _scope_="mmpretrain"))(dict(img=image.copy()))["img"]
    assert isinstance(single, np.ndarray) and single.dtype == np.float32 and single.shape == image.shape
    with pytest.raises(ValueError, match="severity must be an integer in 1-10"):
        TRANSFORMS.build(dict(type="AugMix", severity=11, _scope_="mmpretrain"))


def test_jsd_loss_from_a_head_is_the_plain_loss():
    from mmpretrain.registry import MODELS
    from mmpretrain.structures import DataSample

    from dgn_plugins.augmix import AugMixJSDLoss

    with _scope():
        head = MODELS.build(dict(type="LinearClsHead", num_classes=5, in_channels=8, loss=dict(type="AugMixJSDLoss")))
    feats = (torch.randn(12, 8),)
    samples = [DataSample().set_gt_label(i % 5) for i in range(4)]
    loss = head.loss(feats, samples)["loss"]
    expected = AugMixJSDLoss()(head(feats), torch.tensor([i % 5 for i in range(4)]))
    assert torch.allclose(loss, expected) and loss.requires_grad
    with pytest.raises(ValueError, match="3 views x 4 samples = 12 rows of logits, got 8"):
        head.loss((torch.randn(8, 8),), samples)


def test_multi_view_preprocessor_stacks_views_clean_first():
    from mmengine.dataset import default_collate, pseudo_collate
    from mmpretrain.registry import MODELS
    from mmpretrain.structures import DataSample

    with _scope():
        pre = MODELS.build(dict(type="MultiViewClsDataPreprocessor", mean=[1.0, 2.0, 3.0], std=[2.0, 2.0, 2.0]))
    samples = [dict(inputs=[torch.full((3, 4, 4), float(10 * v + i)) for v in range(3)],
                    data_samples=DataSample().set_gt_label(i)) for i in range(2)]
    for collate in (default_collate, pseudo_collate):
        out = pre(collate(samples), training=True)
        assert out["inputs"].shape == (6, 3, 4, 4) and len(out["data_samples"]) == 2
        raw = out["inputs"][:, 0, 0, 0] * 2.0 + 1.0  # undo channel 0's normalisation
        assert raw.tolist() == [0.0, 1.0, 10.0, 11.0, 20.0, 21.0]  # view by view, clean first
    single = pre(default_collate([dict(inputs=torch.zeros(3, 4, 4), data_samples=DataSample().set_gt_label(0))]))
    assert single["inputs"].shape == (1, 3, 4, 4)
    with _scope():
        mixing = MODELS.build(dict(type="MultiViewClsDataPreprocessor", num_classes=2,
                                   batch_augments=dict(augments=dict(type="Mixup", alpha=1.0))))
    with pytest.raises(ValueError, match="batch augments"):
        mixing(default_collate(samples), training=True)


# ------------------------------------------------------------------ shipped configs
@pytest.mark.parametrize("gn", GN_CONFIGS)
def test_each_dgn_config_is_its_gn_config_with_dgn(gn):
    from mmengine.config import Config

    gn_cfg = Config.fromfile(os.path.join(CONFIGS, gn)).to_dict()
    dgn_cfg = Config.fromfile(os.path.join(CONFIGS, gn.replace("_gn", "_dgn"))).to_dict()
    gn_norm, dgn_norm = gn_cfg["model"]["backbone"].pop("norm_cfg"), dgn_cfg["model"]["backbone"].pop("norm_cfg")
    assert gn_norm["type"] == "GN" and dgn_norm == dict(gn_norm, type="DGN")
    assert dgn_cfg.pop("custom_hooks") == [dict(type="DGNRegroupHook")]
    gn_cfg.pop("custom_hooks", None)
    assert gn_cfg == dgn_cfg


def test_the_papers_recipes():
    from mmengine.config import Config

    wrn = Config.fromfile(os.path.join(CONFIGS, "wrn40-2_gn_augmix-jsd_cifar100.py"))
    resnext = Config.fromfile(os.path.join(CONFIGS, "resnext29-32x4d_gn_augmix-jsd_cifar100.py"))
    for cfg, epochs in ((wrn, 100), (resnext, 200)):
        assert cfg.train_cfg.max_epochs == epochs and cfg.param_scheduler.T_max == epochs
        assert cfg.optim_wrapper.optimizer == dict(type="SGD", lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
        assert cfg.train_dataloader.batch_size == 128 and cfg.param_scheduler.type == "CosineAnnealingLR"
        assert dict(type="AugMix", severity=3, width=3, depth=-1, alpha=1.0, jsd=True) in cfg.train_pipeline
        assert cfg.model.head.loss == dict(type="AugMixJSDLoss", views=3, jsd_weight=12.0)
    assert wrn.model.backbone.depth == 40 and wrn.model.backbone.widen_factor == 2
    assert (resnext.model.backbone.depth, resnext.model.backbone.cardinality, resnext.model.backbone.base_width) == (29, 4, 32)


def _one_training_step(cfg, image_path):
    """One iteration through mmpretrain's pieces: its pipeline, collate, data preprocessor, train_step."""
    from mmcv.transforms import Compose
    from mmengine.dataset import default_collate
    from mmengine.optim import build_optim_wrapper
    from mmpretrain.registry import MODELS

    with _scope():
        model = MODELS.build(dict(cfg.model, data_preprocessor=cfg.data_preprocessor))
        pipeline = Compose(cfg.train_pipeline)
        batch = [pipeline(dict(img_path=image_path, gt_label=i)) for i in range(2)]
        optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
        model.train()
        return model, model.train_step(default_collate(batch), optim_wrapper)


@pytest.mark.parametrize("config", [c for gn in GN_CONFIGS for c in (gn, gn.replace("_gn", "_dgn"))])
def test_every_shipped_config_trains_a_step(config, images):
    from mmengine.config import Config

    cfg = Config.fromfile(os.path.join(CONFIGS, config))
    if "cifar" in config:  # in-memory images in the real set: load them here; tiny backbones
        from mmpretrain_helpers import TINY_BACKBONES

        backbone, width = next(v for k, v in TINY_BACKBONES.items() if config.startswith(k))
        cfg.merge_from_dict(dict(model=dict(backbone=eval(backbone), head=dict(in_channels=width))))
        cfg.train_pipeline = [dict(type="LoadImageFromFile")] + cfg.train_pipeline
    else:  # ResNet-50 as shipped, on 64 px crops
        cfg.train_pipeline[1]["scale"] = 64
    model, losses = _one_training_step(cfg, os.path.join(images, "train", "class001", "class001_00000.png"))
    assert torch.isfinite(losses["loss"])
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.GroupNorm)]
    dgn = [m for m in norms if isinstance(m, DynamicGroupNorm)]
    assert norms and len(dgn) == (len(norms) if "_dgn" in config else 0)


# ------------------------------------------------------------------ tiny versions, mmpretrain's own train.py
def _records(work_dir):
    path = os.path.join(work_dir, "dgn_groups.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_tiny_wrn_trains_regroups_and_resumes_through_mmpretrains_train_py(tmp_path, images):
    config = tiny_config(tmp_path, os.path.join(CONFIGS, "wrn40-2_dgn_augmix-jsd_cifar100.py"), images)
    work_dir = str(tmp_path / "work")
    done = run_mmpretrain_train(config, work_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    first = _records(work_dir)
    steps = [r["step"] for r in first]
    assert steps == [2, 4, 6, 8, 10, 12, 14]  # every 10% of 16 iterations (2 epochs of 8), none in the last 10%
    log = open(next(os.path.join(root, f) for root, _, files in os.walk(work_dir) for f in files
                    if f.endswith(".log"))).read()
    assert "type='AugMixJSDLoss'" in log and "type='AugMix'" in log  # the config the run used
    checkpoint = torch.load(os.path.join(work_dir, "epoch_1.pth"), map_location="cpu", weights_only=False)
    assert checkpoint["dgn_regroup_hook"]["regroups_done"] == 4
    resumed = run_mmpretrain_train(config, work_dir, "--resume", os.path.join(work_dir, "epoch_1.pth"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = _records(work_dir)
    assert records[:4] == first[:4]  # the regroups up to the checkpoint kept, the later ones made again
    assert [r["step"] for r in records] == steps
    pytest.importorskip("matplotlib")
    from bad_inputs import load_tool

    plot = tmp_path / "groups.png"
    assert load_tool("plot_groups").main(["--records", os.path.join(work_dir, "dgn_groups.jsonl"),
                                          "--out", str(plot)]) == 0
    assert plot.read_bytes().startswith(b"\x89PNG")  # the classification run's records plot


def test_tiny_resnext_trains_and_regroups_through_mmpretrains_train_py(tmp_path, images):
    config = tiny_config(tmp_path, os.path.join(CONFIGS, "resnext29-32x4d_dgn_augmix-jsd_cifar100.py"), images,
                         epochs=1)
    work_dir = str(tmp_path / "work")
    done = run_mmpretrain_train(config, work_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    records = _records(work_dir)
    assert records and any(name.startswith("backbone.stages") for name in records[0]["group_id"])


def test_our_train_py_runs_a_gn_classification_config_with_dgn(tmp_path, images):
    from dgn_plugins.openmmlab import launcher  # what tools/train.py runs for OpenMMLab configs

    config = tiny_config(tmp_path, os.path.join(CONFIGS, "wrn40-2_gn_augmix-jsd_cifar100.py"), images, epochs=1)
    runner = launcher.main([config, "--work-dir", str(tmp_path / "work"), "--dgn"])
    assert launcher.toolkit_of(runner.cfg) == "mmpretrain"
    from dgn_plugins.openmmlab import DGNRegroupHook

    layers = [m for m in runner.model.modules() if isinstance(m, DynamicGroupNorm)]
    assert layers and all(m.num_groups == m.num_channels // 8 for m in layers)  # GN's group size 8 kept
    assert any(isinstance(hook, DGNRegroupHook) for hook in runner.hooks)
    assert _records(str(tmp_path / "work"))
