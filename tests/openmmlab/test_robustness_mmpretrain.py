"""tools/test_robustness.py on MMPretrain classifiers: a generated set in CIFAR-100-C's .npy layout,
the corruption error against a hand computation, several checkpoints per model with paired CIs."""
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from mmpretrain_helpers import CONFIGS, ROOT, tiny_config

pytest.importorskip("mmpretrain", reason="mmpretrain is not installed")

CORRUPTIONS = ("fog", "snow")
PER_SEVERITY = 6


def _tool():
    spec = importlib.util.spec_from_file_location("test_robustness_tool", os.path.join(ROOT, "tools", "test_robustness.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny WRN config, a CIFAR-100-C-layout folder made from generated images, two checkpoints per model."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS

    import dgn_plugins.openmmlab  # noqa: F401
    from dgn_plugins.data.synthetic_cls import SyntheticClsSpec, render

    tmp = tmp_path_factory.mktemp("robustness")
    from dgn_plugins.data.synthetic_cls import ensure_synthetic_cls

    images = ensure_synthetic_cls(str(tmp / "cls"))
    spec = SyntheticClsSpec()
    root = tmp / "CIFAR-100-C"
    root.mkdir()
    labels = np.array([i % spec.classes for i in range(PER_SEVERITY)] * 5, dtype=np.int64)
    np.save(root / "labels.npy", labels)
    for k, corruption in enumerate(CORRUPTIONS):
        cells = [render(spec, "val", int(label), 100 + 10 * k + i) for i, label in enumerate(labels)]
        np.save(root / f"{corruption}.npy", np.stack(cells))
    config = tiny_config(tmp, os.path.join(CONFIGS, "wrn40-2_gn_augmix-jsd_cifar100.py"), images)
    cfg = Config.fromfile(config)
    checkpoints = []
    for seed in range(4):
        torch.manual_seed(seed)
        with DefaultScope.overwrite_default_scope("mmpretrain"):
            model = MODELS.build(dict(cfg.model, data_preprocessor=cfg.data_preprocessor))
        model.init_weights()
        path = tmp / f"seed{seed}.pth"
        torch.save({"state_dict": model.state_dict(), "meta": {}}, path)
        checkpoints.append((str(path), model.eval()))
    return dict(config=config, root=str(root), labels=labels, checkpoints=checkpoints, tmp=tmp)


def _by_hand(model, root, labels, corruption, severity):
    """Top-1 error (%) of one cell: the rows of that severity, the data preprocessor, argmax."""
    images = np.load(os.path.join(root, f"{corruption}.npy"))[(severity - 1) * PER_SEVERITY:severity * PER_SEVERITY]
    inputs = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        data = model.data_preprocessor({"inputs": inputs, "data_samples": None})
        scores = model(data["inputs"], mode="tensor")
    wrong = (scores.argmax(1).numpy() != labels[(severity - 1) * PER_SEVERITY:severity * PER_SEVERITY]).sum()
    return 100.0 * wrong / PER_SEVERITY


def test_cifar_c_layout_corruption_error_equals_a_hand_computation(setup, capsys):
    path, model = setup["checkpoints"][0]
    out = setup["tmp"] / "one.json"
    status = _tool().main(["--models", f"GN={setup['config']},{path}", "--corruption-data", setup["root"],
                           "--corruptions", *CORRUPTIONS, "--out", str(out), "--work-dir", str(setup["tmp"] / "w1")])
    assert status == 0
    result = json.loads(out.read_text())["results"][0]
    expected = np.mean([_by_hand(model, setup["root"], setup["labels"], c, s) for c in CORRUPTIONS for s in range(1, 6)])
    summary = result["summary"]["classification"]
    assert summary["mean corruption error"] == pytest.approx(expected, abs=1e-4)  # mmpretrain: float32; one image = 16.7
    cell = next(c for c in result["cells"] if c["corruption"] == "snow" and c["severity"] == 4)
    assert 100.0 - cell["metrics"]["accuracy/top1"] == pytest.approx(
        _by_hand(model, setup["root"], setup["labels"], "snow", 4), abs=1e-4)
    printed = capsys.readouterr().out
    assert "mean corruption error" in printed and "mCE (ImageNet-C, AlexNet = 100)" in printed


def test_several_checkpoints_per_model_report_paired_cis(setup, capsys):
    (gn0, _), (gn1, _), (dgn0, _), (dgn1, _) = setup["checkpoints"]
    out = setup["tmp"] / "seeds.json"
    status = _tool().main(["--models", f"GN={setup['config']},{gn0},{gn1}", f"DGN={setup['config']},{dgn0},{dgn1}",
                           "--corruption-data", setup["root"], "--corruptions", "fog", "--severities", "1", "2",
                           "--out", str(out), "--work-dir", str(setup["tmp"] / "w2")])
    assert status == 0
    payload = json.loads(out.read_text())
    assert [r["checkpoint"] for r in payload["results"]] == [gn0, dgn0, gn1, dgn1]
    errors = {(r["label"], r["checkpoint"]): r["summary"]["classification"]["mean corruption error"]
              for r in payload["results"]}
    section = next(s for s in payload["comparison"]["sections"] if s["title"].startswith("corruption error"))
    row = next(r for r in section["rows"] if r["metric"] == "mean corruption error")
    diffs = [errors[("DGN", dgn0)] - errors[("GN", gn0)], errors[("DGN", dgn1)] - errors[("GN", gn1)]]
    assert row["deltas"]["DGN"] == pytest.approx(np.mean(diffs), abs=1e-9)
    if diffs[0] != diffs[1]:
        from scipy import stats

        half = stats.t.ppf(0.975, 1) * np.std(diffs, ddof=1) / np.sqrt(2)
        assert row["delta_ci95"]["DGN"] == pytest.approx(half, rel=1e-9)
    assert "(mean of 2 checkpoints)" in capsys.readouterr().out


def test_checkpoint_counts_must_match(setup, capsys):
    (gn0, _), (gn1, _), (dgn0, _), _ = setup["checkpoints"]
    status = _tool().main(["--models", f"GN={setup['config']},{gn0},{gn1}", f"DGN={setup['config']},{dgn0}"])
    assert status == 2
    assert "checkpoints per model differ (GN: 2, DGN: 1)" in capsys.readouterr().err


def test_without_published_data_the_seeded_corruptions_serve(setup, capsys):
    path, _ = setup["checkpoints"][0]
    out = setup["tmp"] / "fly.json"
    status = _tool().main([setup["config"], path, "--corruptions", "fog", "--severities", "2", "--out", str(out),
                           "--work-dir", str(setup["tmp"] / "w3")])
    assert status == 0
    (result,) = json.loads(out.read_text())["results"]
    assert [(c["corruption"], c["severity"]) for c in result["cells"]] == [("fog", 2)]
    assert "mean corruption error" in result["summary"]["classification"]


def test_in_memory_cifar_gets_the_corruption_first_in_rgb():
    from mmengine.config import Config

    from dgn_plugins.evaluation.robustness.openmmlab import insert_corruption, published_cell

    cfg = Config.fromfile(os.path.join(CONFIGS, "wrn40-2_gn_augmix-jsd_cifar100.py"))
    dataset = cfg.test_dataloader.dataset.to_dict()
    insert_corruption(dataset, "fog", 3, seed=5)
    assert dataset["pipeline"][0] == dict(type="ApplyCorruption", corruption="fog", severity=3, seed=5,
                                          channel_order="rgb")
    with pytest.raises(ValueError, match="neither CIFAR-C's layout"):
        published_cell(cfg.test_dataloader.dataset.to_dict(), os.path.join(ROOT, "configs"), "fog", 3)
    with pytest.raises(ValueError, match="no image-loading transform"):
        insert_corruption(dict(type="CustomDataset", pipeline=[dict(type="PackInputs")]), "fog", 3, seed=0)


def test_imagenet_c_folders_give_mce_and_relative_mce(setup):
    from PIL import Image

    from dgn_plugins.data.synthetic_cls import SyntheticClsSpec, class_names, render
    from dgn_plugins.evaluation.robustness.classification import ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS

    spec, root = SyntheticClsSpec(), setup["tmp"] / "ImageNet-C"
    for severity in range(1, 6):
        for label, name in enumerate(class_names(spec)):
            folder = root / "fog" / str(severity) / name
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(render(spec, "val", label, 50 * severity + i)).save(folder / f"{name}_{i}.png")
    path, model = setup["checkpoints"][1]
    out = setup["tmp"] / "inc.json"
    status = _tool().main([setup["config"], path, "--corruption-data", str(root), "--corruptions", "fog",
                           "--out", str(out), "--work-dir", str(setup["tmp"] / "w4")])
    assert status == 0
    (result,) = json.loads(out.read_text())["results"]
    errors = [100.0 - c["metrics"]["accuracy/top1"] for c in result["cells"]]
    clean_error = 100.0 - result["clean"]["accuracy/top1"]
    summary = result["summary"]["classification"]
    assert len(errors) == 5
    import mmcv

    wrong = 0
    for label, name in enumerate(class_names(spec)):  # severity 3 by hand: loaded as the pipeline loads (BGR)
        for image in sorted((root / "fog" / "3" / name).iterdir()):
            inputs = torch.from_numpy(mmcv.imread(str(image))).permute(2, 0, 1)[None].contiguous()
            with torch.no_grad():
                scores = model(model.data_preprocessor({"inputs": inputs, "data_samples": None})["inputs"], mode="tensor")
            wrong += int(scores.argmax(1).item() != label)
    assert errors[2] == pytest.approx(100.0 * wrong / (2 * spec.classes), abs=1e-4)
    assert summary["mCE (ImageNet-C, AlexNet = 100)"] == pytest.approx(np.mean(errors) / ALEXNET_ERRORS["fog"], rel=1e-9)
    assert summary["relative mCE (ImageNet-C, AlexNet = 100)"] == pytest.approx(
        100.0 * (np.mean(errors) - clean_error) / (100.0 * (ALEXNET_ERRORS["fog"] - ALEXNET_CLEAN_ERROR)), rel=1e-9)
