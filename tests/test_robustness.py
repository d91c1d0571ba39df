"""Robustness tools: seeded corruptions, mPC/rPC arithmetic, the OpenMMLab sweep and its report.

The end-to-end test evaluates a tiny randomly initialised MMSegmentation FCN
(written here, no ``mmseg::`` base configs) on four generated 64 px images.
"""
import json
import os
import sys

import numpy as np
import pytest

from dgn_plugins.evaluation.robustness.corruptions import (
    CORRUPTIONS,
    CorruptionError,
    cell_seed,
    check_corruptions,
    check_severities,
    corrupt_batch,
    corrupt_image,
)
from dgn_plugins.evaluation.robustness.metrics import per_corruption_mean, per_severity_mean, robustness_summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip("imagecorruptions", reason="pip install imagecorruptions-imaug==1.1.5")


def _image(seed=0, shape=(32, 32, 3)):
    return (np.random.RandomState(seed).rand(*shape) * 255).astype(np.uint8)


# ------------------------------------------------------------------ corruptions
@pytest.mark.parametrize("name", CORRUPTIONS)
def test_every_corruption_runs_and_is_reproducible_given_a_seed(name):
    image = _image()
    first = corrupt_image(image, name, 3, seed=7)
    assert first.shape == image.shape and first.dtype == np.uint8
    assert np.array_equal(first, corrupt_image(image, name, 3, seed=7))
    assert not np.array_equal(first, image) or name in ("brightness",)  # every corruption changes the image


@pytest.mark.parametrize("name", ["gaussian_noise", "impulse_noise", "glass_blur", "snow", "frost", "fog",
                                  "elastic_transform", "motion_blur", "shot_noise"])
def test_random_corruptions_depend_on_the_seed_and_leave_global_rng_alone(name):
    image = _image()
    np.random.seed(123)
    expected_next = np.random.rand()
    np.random.seed(123)
    a = corrupt_image(image, name, 4, seed=1)
    assert np.random.rand() == expected_next  # caller's RNG state restored
    assert not np.array_equal(a, corrupt_image(image, name, 4, seed=2))


def test_greyscale_in_greyscale_out_and_batch_seeds_per_image():
    images = _image(shape=(3, 32, 32))
    out = corrupt_batch(images, "gaussian_noise", 2, seed=0)
    assert out.shape == images.shape
    assert np.array_equal(out, corrupt_batch(images, "gaussian_noise", 2, seed=0))
    assert cell_seed(0, "fog", 1, "a.jpg") != cell_seed(0, "fog", 1, "b.jpg")


def test_bad_requests_are_refused_with_the_valid_choices():
    with pytest.raises(CorruptionError, match="unknown corruption.*gaussian_noise"):
        check_corruptions(["gausian_noise"])
    with pytest.raises(CorruptionError, match="severities"):
        check_severities([0, 6])
    with pytest.raises(CorruptionError, match="at least 32"):
        corrupt_image(_image(shape=(16, 16, 3)), "fog", 1)
    assert check_corruptions(["fog", "snow", "fog"]) == ["fog", "snow"]
    assert check_severities([5, 1]) == [1, 5]
    assert len(check_corruptions(None)) == 15


# ------------------------------------------------------------------ metrics
def test_mpc_rpc_against_a_hand_computed_example():
    cells = {"gaussian_noise": {1: 0.30, 3: 0.10}, "fog": {1: 0.40, 3: 0.20}}
    summary = robustness_summary(0.50, cells)
    assert summary["P"] == 0.50
    assert summary["mPC"] == pytest.approx((0.30 + 0.10 + 0.40 + 0.20) / 4)  # 0.25
    assert summary["rPC"] == pytest.approx(0.25 / 0.50)
    assert per_corruption_mean(cells) == pytest.approx({"gaussian_noise": 0.20, "fog": 0.30})
    assert per_severity_mean(cells) == pytest.approx({1: 0.35, 3: 0.15})


class _FakeEvaluator:
    """Detection-style metrics from a formula: AP = 0.5 - 0.05 * severity - 0.01 * corruption index."""

    task = "detection"

    def __init__(self, offset=0.0):
        self.offset, self.calls = offset, []

    def evaluate(self, corruption, severity):
        self.calls.append((corruption, severity))
        index = CORRUPTIONS.index(corruption) if corruption else 0
        return {"coco/bbox_mAP": 0.5 + self.offset - 0.05 * severity - 0.01 * index, "coco/bbox_mAP_50": 0.7}


def test_sweep_evaluates_only_the_selected_cells_and_compares_gn_with_dgn():
    from dgn_plugins.evaluation.compare.report import render
    from dgn_plugins.evaluation.robustness.sweep import comparison_of, run_sweep

    gn_eval, dgn_eval = _FakeEvaluator(), _FakeEvaluator(offset=0.02)
    gn = run_sweep(gn_eval, ["shot_noise", "fog"], [2, 4], label="GN", log=lambda _: None)
    dgn = run_sweep(dgn_eval, ["shot_noise", "fog"], [2, 4], label="DGN", log=lambda _: None)
    assert gn_eval.calls == [(None, 0), ("shot_noise", 2), ("shot_noise", 4), ("fog", 2), ("fog", 4)]
    assert gn["metric"] == "coco/bbox_mAP" and len(gn["cells"]) == 4
    expected_mpc = np.mean([0.5 - 0.05 * s - 0.01 * i for i in (1, 9) for s in (2, 4)])
    assert gn["summary"]["mPC"] == pytest.approx(expected_mpc)
    assert gn["summary"]["rPC"] == pytest.approx(expected_mpc / 0.5)
    table = render(comparison_of([gn, dgn]), "markdown")
    assert "| mPC |" in table and "Δ DGN" in table
    row = next(line for line in table.splitlines() if line.startswith("| mPC |"))
    assert row.split("|")[-2].strip() == "+2.00"  # AP in %, DGN 2 points above GN
    json.dumps(gn)  # plain data


def test_percent_or_fraction_is_decided_by_the_metric_key():
    from dgn_plugins.evaluation.robustness.metrics import display_scale, pick_primary_metric

    assert display_scale("bbox/AP", [0.8]) == (1.0, "%")  # Detectron2: already percent, even when small
    assert display_scale("sem_seg/mIoU", [0.5]) == (1.0, "%")
    assert display_scale("mIoU", [0.5]) == (1.0, "%")  # mmseg's IoUMetric
    assert display_scale("coco/bbox_mAP", [0.5]) == (100.0, "%")  # mmdet: a fraction
    assert display_scale("custom", [0.3]) == (100.0, "%") and display_scale("custom", [12.0]) == (1.0, "custom")
    assert pick_primary_metric({"bbox/AP50": 2.0, "bbox/AP": 1.0, "segm/AP": 0.5}) == "bbox/AP"
    assert pick_primary_metric({"sem_seg/fwIoU": 2.0, "sem_seg/mIoU": 1.0}) == "sem_seg/mIoU"


# ------------------------------------------------------------------ the tool, end to end (MMSegmentation)
TINY_SEG_CONFIG = """
default_scope = 'mmseg'
norm_cfg = dict(type='{norm}', num_groups=4, requires_grad=True)
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(type='SegDataPreProcessor', mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                           bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=(64, 64)),
    backbone=dict(type='ResNetV1c', depth=18, stem_channels=16, base_channels=8, norm_cfg=norm_cfg,
                  out_indices=(3,), strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), contract_dilation=True),
    decode_head=dict(type='FCNHead', in_channels=64, channels=16, num_convs=1, num_classes=2, in_index=0,
                     norm_cfg=norm_cfg, concat_input=False, loss_decode=dict(type='CrossEntropyLoss')),
    train_cfg=dict(), test_cfg=dict(mode='whole'))
test_dataloader = dict(
    batch_size=2, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='BaseSegDataset', data_root='{root}', img_suffix='.png', seg_map_suffix='.png',
                 metainfo=dict(classes=('background', 'square'), palette=[[0, 0, 0], [255, 255, 255]]),
                 data_prefix=dict(img_path='img', seg_map_path='ann'),
                 pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'), dict(type='PackSegInputs')]))
test_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_cfg = dict(type='TestLoop')
default_hooks = dict(logger=dict(type='LoggerHook', interval=50))
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork'), dist_cfg=dict(backend='gloo'))
"""


@pytest.fixture(scope="module")
def tiny_seg(tmp_path_factory):
    """Four generated 64 px images (a bright square on noise), GN and DGN configs, one random-weight checkpoint."""
    pytest.importorskip("mmseg")
    from PIL import Image

    root = tmp_path_factory.mktemp("seg")
    rng = np.random.RandomState(0)
    for sub in ("img", "ann"):
        (root / sub).mkdir()
    for i in range(4):
        image = (rng.rand(64, 64, 3) * 80).astype(np.uint8)
        label = np.zeros((64, 64), np.uint8)
        y, x = rng.randint(8, 32, 2)
        image[y:y + 24, x:x + 24] = 220
        label[y:y + 24, x:x + 24] = 1
        Image.fromarray(image).save(root / "img" / f"{i}.png")
        Image.fromarray(label).save(root / "ann" / f"{i}.png")
    configs = {}
    for norm in ("GN", "DGN"):
        configs[norm] = root / f"tiny_{norm.lower()}.py"
        configs[norm].write_text(TINY_SEG_CONFIG.format(norm=norm, root=root))
    import torch
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    import dgn_plugins.openmmlab  # noqa: F401  (registers DGN)

    init_default_scope("mmseg")
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(configs["DGN"])).model)
    state = model.state_dict()
    checkpoints = {"DGN": root / "dgn.pth", "GN": root / "gn.pth"}
    torch.save({"state_dict": state, "meta": {}}, checkpoints["DGN"])
    grouping_buffers = ("group_id", "channel_mean_ema", "channel_var_ema", "num_stat_updates", "num_regroups")
    gn_state = {k: v for k, v in state.items() if not k.endswith(grouping_buffers)}  # same weights, GN keys
    torch.save({"state_dict": gn_state, "meta": {}}, checkpoints["GN"])
    return root, configs, checkpoints


def _tool():
    """tools/test_robustness.py, loaded by path (its name clashes with this test module)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("robustness_tool", os.path.join(ROOT, "tools", "test_robustness.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tool_sweeps_gn_and_dgn_and_writes_every_cell(tiny_seg, tmp_path, capsys):
    root, configs, checkpoints = tiny_seg
    out = tmp_path / "robustness.json"
    status = _tool().main([
        "--models", f"GN={configs['GN']},{checkpoints['GN']}", f"DGN={configs['DGN']},{checkpoints['DGN']}",
        "--corruptions", "gaussian_noise", "fog", "--severities", "1", "5",
        "--work-dir", str(tmp_path / "work"), "--out", str(out)])
    assert status == 0
    table = capsys.readouterr().out
    assert "mean corrupted mIoU (mPC)" in table and "Δ DGN" in table and "fog 5" in table
    data = json.loads(out.read_text())
    assert data["corruptions"] == ["gaussian_noise", "fog"] and data["severities"] == [1, 5]
    for result in data["results"]:
        assert result["task"] == "segmentation" and result["metric"] == "mIoU"
        assert [(c["corruption"], c["severity"]) for c in result["cells"]] == [
            ("gaussian_noise", 1), ("gaussian_noise", 5), ("fog", 1), ("fog", 5)]
        values = [c["metrics"]["mIoU"] for c in result["cells"]]
        assert result["summary"]["mPC"] == pytest.approx(np.mean(values))
    # same weights, DGN starts as GN: identical numbers, so the corruption was seeded identically too
    gn, dgn = data["results"]
    assert [c["metrics"] for c in gn["cells"]] == [c["metrics"] for c in dgn["cells"]]


def test_apply_corruption_sits_after_loading_and_is_seeded_per_image():
    pytest.importorskip("mmcv")
    from dgn_plugins.evaluation.robustness.openmmlab import insert_corruption
    from dgn_plugins.evaluation.robustness.transforms import ApplyCorruption

    dataset = dict(type="Wrapper", dataset=dict(pipeline=[dict(type="LoadImageFromFile"), dict(type="PackSegInputs")]))
    insert_corruption(dataset, "fog", 2, seed=3)
    assert [s["type"] for s in dataset["dataset"]["pipeline"]] == ["LoadImageFromFile", "ApplyCorruption", "PackSegInputs"]
    transform = ApplyCorruption("fog", 2, seed=3)
    image = _image(shape=(40, 48, 3))
    a = transform({"img": image.copy(), "img_path": "/x/a.png"})["img"]
    b = transform({"img": image.copy(), "img_path": "/y/a.png"})["img"]
    c = transform({"img": image.copy(), "img_path": "/x/c.png"})["img"]
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(CorruptionError):
        ApplyCorruption("rain", 1)


@pytest.mark.parametrize("name", ["frost", "snow", "jpeg_compression"])
def test_apply_corruption_corrupts_a_bgr_image_in_rgb(name):
    """The library's convention (and Detectron2's CorruptImage): BGR -> RGB, corrupt, -> BGR."""
    pytest.importorskip("mmcv")
    from dgn_plugins.evaluation.robustness.transforms import ApplyCorruption

    bgr = _image(1, shape=(40, 48, 3))
    results = {"img": bgr.copy(), "img_path": "/x/a.png"}
    out = ApplyCorruption(name, 3, seed=3)(results)["img"]  # channel_order 'bgr', mmcv's default
    seed = cell_seed(3, name, 3, "a.png")
    expected = corrupt_image(np.ascontiguousarray(bgr[..., ::-1]), name, 3, seed)[..., ::-1]
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    assert np.array_equal(out, expected)
    assert not np.array_equal(out, corrupt_image(bgr, name, 3, seed))  # the old way: the BGR array corrupted as is
    # an RGB-loaded image is corrupted as it is
    rgb_out = ApplyCorruption(name, 3, seed=3, channel_order="RGB")({"img": bgr.copy(), "img_path": "a.png"})["img"]
    assert np.array_equal(rgb_out, corrupt_image(bgr, name, 3, seed))


def test_apply_corruption_passes_greyscale_through_and_refuses_unknown_orders():
    pytest.importorskip("mmcv")
    from dgn_plugins.evaluation.robustness.transforms import ApplyCorruption

    for shape in ((40, 48), (40, 48, 1)):
        grey = _image(2, shape=shape)
        out = ApplyCorruption("snow", 2, seed=1)({"img": grey.copy(), "img_path": "g.png"})["img"]
        assert out.shape == shape
        assert np.array_equal(out, corrupt_image(grey, "snow", 2, cell_seed(1, "snow", 2, "g.png")))
    with pytest.raises(CorruptionError, match="channel_order"):
        ApplyCorruption("fog", 1, channel_order="yuv")


def test_insert_corruption_tells_the_transform_the_loaders_channel_order():
    pytest.importorskip("mmcv")
    from mmcv.transforms import LoadImageFromFile

    from dgn_plugins.evaluation.robustness.openmmlab import insert_corruption

    def inserted(loader):
        dataset = dict(pipeline=[loader, dict(type="PackDetInputs")])
        insert_corruption(dataset, "frost", 3, seed=0)
        return dataset["pipeline"][1]

    assert inserted(dict(type="LoadImageFromFile"))["channel_order"] == "bgr"  # mmcv 2.x: always BGR
    assert inserted(dict(type="LoadImageFromFile", channel_order="rgb"))["channel_order"] == "rgb"
    assert inserted(LoadImageFromFile())["channel_order"] == "bgr"  # a built transform
    with pytest.raises(CorruptionError, match="channel_order"):
        inserted(dict(type="LoadImageFromFile", channel_order="gbr"))


def test_tool_error_paths_exit_2_with_a_message(tmp_path, capsys):
    tool = _tool()
    assert tool.main(["--models", "GN=missing.py,x.pth", "--corruptions", "fog"]) == 2
    assert "argument --models: missing.py: no such file" in capsys.readouterr().err
    config = tmp_path / "gn.py"
    config.write_text("model = dict()\n")
    assert tool.main(["--models", f"GN={config}", "--random-init", "--corruptions", "rain"]) == 2
    assert "argument --corruptions: invalid choice: 'rain'" in capsys.readouterr().err
    assert tool.main([]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err


def test_detectron2_toolkit_without_detectron2_names_the_missing_package(tmp_path, capsys, monkeypatch):
    # Detectron2 hidden whether or not it is installed (make test installs it): the adapter,
    # imported anew, cannot import detectron2.config. Both come back after the test.
    monkeypatch.setitem(sys.modules, "detectron2.config", None)
    monkeypatch.delitem(sys.modules, "dgn_plugins.evaluation.robustness.detectron2", raising=False)
    config = tmp_path / "mask_rcnn.yaml"
    config.write_text("MODEL:\n  MASK_ON: True\n")
    assert _tool().main([str(config), "--random-init", "--corruptions", "fog", "--severities", "1"]) == 2
    err = capsys.readouterr().err
    assert "'detectron2' robustness evaluator cannot be loaded" in err and "detectron2 package" in err


def test_study_without_fashion_mnist_says_how_to_install_it(tmp_path):
    import subprocess

    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "dgn_study.py"), "screen", "--data-root",
                           str(tmp_path), "--work-dir", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "apt-get install -y dataset-fashion-mnist" in done.stderr and not (tmp_path / "out" / "runs").exists()


def test_mean_ci_uses_students_t():
    from dgn_plugins.evaluation.robustness.stats import mean_ci

    mean, half_width = mean_ci([1.0, 2.0, 3.0])
    assert mean == pytest.approx(2.0) and half_width == pytest.approx(4.303 * 1.0 / np.sqrt(3), rel=1e-3)  # t(0.975, 2)
