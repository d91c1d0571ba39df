"""compare_miou must report what MMSegmentation, torchmetrics and ImageNet-S report.

References computed inside the test: torchmetrics' MulticlassJaccardIndex and
MulticlassAccuracy, MMSegmentation's ``IoUMetric.intersect_and_union`` (torch.histc,
copied from mmseg 1.2.2) and the ImageNet-S evaluator's ``IoUGPU`` formula.
"""
import csv
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from dgn_plugins.evaluation.compare import ComparisonError
from dgn_plugins.evaluation.compare.miou import compare_miou, main

REPO = Path(__file__).parent.parent
H, W = 24, 32
STEMS = ["a", "b", "c", "d"]


# ----------------------------------------------------------------- references

def mmseg_iou(preds, labels, num_classes, ignore_index):
    """MMSegmentation 1.2.2 IoUMetric: histc per image, summed, I / U (NaN if U == 0)."""
    totals = [0, 0, 0, 0]
    for pred, label in zip(preds, labels):
        pred, label = torch.from_numpy(pred), torch.from_numpy(label)
        mask = label != ignore_index
        pred, label = pred[mask], label[mask]
        intersect = pred[pred == label]
        hist = [torch.histc(x.float(), bins=num_classes, min=0, max=num_classes - 1)
                for x in (intersect, pred, label)]
        union = hist[1] + hist[2] - hist[0]
        for i, v in enumerate((hist[0], union, hist[1], hist[2])):
            totals[i] = totals[i] + v
    iou = (totals[0] / totals[1]).numpy() * 100
    return iou, float(np.nanmean(iou)), float(totals[0].sum() / totals[3].sum() * 100)


def imagenet_s_miou(preds, labels, num_classes, ignore=1000):
    """ImageNet-S evaluator: pixels with gt 1000 removed, IoUGPU histc, mean over all."""
    T = P = TP = 0
    for pred, label in zip(preds, labels):
        gt = torch.from_numpy(label).float().view(-1)
        pr = torch.from_numpy(pred).float().view(-1)
        keep = gt != ignore
        gt, pr = gt[keep], pr[keep]
        TP = TP + torch.histc(pr[pr == gt], bins=num_classes, min=0, max=num_classes - 1)
        T = T + torch.histc(pr, bins=num_classes, min=0, max=num_classes - 1)
        P = P + torch.histc(gt, bins=num_classes, min=0, max=num_classes - 1)
    return float(torch.mean(TP / (T + P - TP + 1e-10) * 100))


def torchmetrics_reference(preds, labels, num_classes, ignore_index):
    pred = torch.from_numpy(np.stack(preds))
    target = torch.from_numpy(np.stack(labels))
    per_class = MulticlassJaccardIndex(num_classes, average=None, ignore_index=ignore_index)
    macro = MulticlassJaccardIndex(num_classes, average="macro", ignore_index=ignore_index)
    accuracy = MulticlassAccuracy(num_classes, average="micro", ignore_index=ignore_index)
    return (per_class(pred, target).numpy() * 100, float(macro(pred, target)) * 100,
            float(accuracy(pred, target)) * 100)


# ----------------------------------------------------------------- synthetic data

def make_labels(rng, classes, ignore, n=None):
    """Blocky label maps with an ignored border strip."""
    maps = []
    for _ in range(len(STEMS) if n is None else n):
        label = rng.choice(classes, size=(H // 4, W // 4)).repeat(4, 0).repeat(4, 1)
        label[:, :3] = ignore
        maps.append(label.astype(np.int64))
    return maps


def corrupt(rng, labels, classes, p):
    preds = []
    for label in labels:
        pred = np.where(label == label.max(), rng.choice(classes), label)  # predict under ignore
        flip = rng.random(label.shape) < p
        preds.append(np.where(flip, rng.choice(classes, size=label.shape), pred).astype(np.int64))
    return preds


def write_index_pngs(folder, maps, names=STEMS, suffix=".png"):
    folder.mkdir(parents=True, exist_ok=True)
    for name, m in zip(names, maps):
        Image.fromarray(m.astype(np.uint8)).save(folder / f"{name}{suffix}")
    return folder


def write_rgb_pngs(folder, maps):
    folder.mkdir(parents=True, exist_ok=True)
    for name, m in zip(STEMS, maps):
        rgb = np.stack([m % 256, m // 256, np.zeros_like(m)], axis=-1).astype(np.uint8)
        Image.fromarray(rgb, mode="RGB").save(folder / f"{name}.png")
    return folder


@pytest.fixture
def index_data(tmp_path):
    """5 classes; class 4 appears nowhere, class 3 only in DGN's predictions."""
    rng = np.random.default_rng(0)
    labels = make_labels(rng, [0, 1, 2, 255], 255)
    preds = {"GN": corrupt(rng, labels, [0, 1, 2], 0.3),
             "DGN": corrupt(rng, labels, [0, 1, 2, 3], 0.15)}
    return {"labels": labels, "preds": preds, "tmp": tmp_path,
            "gt": write_index_pngs(tmp_path / "gt", labels),
            "dirs": {k: write_index_pngs(tmp_path / k, v) for k, v in preds.items()}}


def section(comparison, index):
    return comparison.sections[index]


# ----------------------------------------------------------------- numbers

def test_index_pngs_match_iou_metric_and_torchmetrics(index_data):
    d = index_data
    comparison = compare_miou(d["gt"], list(d["dirs"].items()), num_classes=5, per_class=True)
    summary, per_class = comparison.sections
    assert summary.metrics[0].startswith("mIoU (mmseg") and summary.metrics[1].startswith(
        "mIoU (ImageNet-S") and summary.metrics[2] == "aAcc"
    for label, preds in d["preds"].items():
        iou, miou, aacc = mmseg_iou(preds, d["labels"], 5, 255)
        tm_iou, tm_macro, tm_acc = torchmetrics_reference(preds, d["labels"], 5, 255)
        ours = np.array(per_class.values[label])
        np.testing.assert_allclose(ours, iou, rtol=1e-6)  # NaN where mmseg has NaN
        absent = np.isnan(ours)  # class 4 everywhere, class 3 for GN
        assert absent[4] and np.all(tm_iou[absent] == 0)  # torchmetrics reports absent as 0
        np.testing.assert_allclose(ours[~absent], tm_iou[~absent], rtol=1e-6)
        assert summary.values[label][0] == pytest.approx(miou, rel=1e-6)
        assert summary.values[label][0] == pytest.approx(tm_macro, rel=1e-6)
        assert summary.values[label][2] == pytest.approx(aacc, rel=1e-6)
        assert summary.values[label][2] == pytest.approx(tm_acc, rel=1e-6)
        # ImageNet-S: absent class 4 counts as 0 in a mean over all 5 classes.
        assert summary.values[label][1] == pytest.approx(
            imagenet_s_miou(preds, d["labels"], 5, ignore=255), rel=1e-6)
        assert summary.values[label][1] == pytest.approx(np.nansum(ours) / 5, rel=1e-9)
    assert math.isnan(per_class.values["GN"][3]) and per_class.values["DGN"][3] == 0  # FP only
    np.testing.assert_array_equal(comparison.delta(summary, "DGN"),
                                  np.subtract(summary.values["DGN"], summary.values["GN"]))


def test_imagenet_s_rgb_encoding(tmp_path):
    rng = np.random.default_rng(1)
    classes = [0, 5, 257, 299]  # ids above 255 need the G channel
    labels = make_labels(rng, classes + [1000], 1000)
    preds = corrupt(rng, labels, classes, 0.2)
    gt = write_rgb_pngs(tmp_path / "gt", labels)
    pred_dir = write_rgb_pngs(tmp_path / "pred", preds)
    comparison = compare_miou(gt, [("X", pred_dir)], num_classes=300, encoding="rgb")
    values = comparison.sections[0].values["X"]
    assert values[1] == pytest.approx(imagenet_s_miou(preds, labels, 300), rel=1e-6)
    _, tm_macro, tm_acc = torchmetrics_reference(preds, labels, 300, 1000)
    assert values[0] == pytest.approx(tm_macro, rel=1e-6)
    assert values[2] == pytest.approx(tm_acc, rel=1e-6)
    assert any("ignore index 1000" in note for note in comparison.notes)


def _dump_results(path, maps, names, image_suffix=".jpg"):
    """mmengine DumpResults-style pickle: what mmseg's --out .pkl holds."""
    samples = [{"img_path": f"/data/img/{name}{image_suffix}", "ori_shape": (H, W),
                "pred_sem_seg": {"data": torch.from_numpy(m)[None]},
                "seg_logits": {"data": torch.zeros(2, H, W)},
                "gt_sem_seg": {"data": torch.zeros(1, H, W, dtype=torch.uint8)}}
               for name, m in zip(names, maps)]
    path.write_bytes(pickle.dumps(samples))
    return path


def test_mmseg_pickle_matches_png_folder(index_data):
    d = index_data
    pkl = _dump_results(d["tmp"] / "dgn.pkl", d["preds"]["DGN"], STEMS)
    comparison = compare_miou(d["gt"], [("png", d["dirs"]["DGN"]), ("pkl", pkl)], num_classes=5,
                              per_class=True)
    for sec in comparison.sections:
        np.testing.assert_array_equal(sec.values["png"], sec.values["pkl"])
    assert any("DumpResults" in note for note in comparison.notes)


def test_reduce_zero_label_like_ade20k(tmp_path):
    """Raw labels 0..4 (0 = other); IoUMetric's PNGs are +1, its pickle is not."""
    rng = np.random.default_rng(2)
    raw = make_labels(rng, [0, 1, 2, 3, 4], 0)
    reduced_preds = corrupt(rng, [r - 1 for r in raw], [0, 1, 2, 3], 0.2)
    reduced_preds = [np.clip(p, 0, 3) for p in reduced_preds]
    gt = write_index_pngs(tmp_path / "gt", raw)
    pngs = write_index_pngs(tmp_path / "pred", [p + 1 for p in reduced_preds])
    pkl = _dump_results(tmp_path / "pred.pkl", reduced_preds, STEMS)
    comparison = compare_miou(gt, [("png", pngs), ("pkl", pkl)], num_classes=4, reduce=True,
                              per_class=True)
    reduced_labels = [np.where(r == 0, 255, r - 1) for r in raw]
    tm_iou, tm_macro, tm_acc = torchmetrics_reference(reduced_preds, reduced_labels, 4, 255)
    for label in ("png", "pkl"):
        summary, per_class = (s.values[label] for s in comparison.sections)
        np.testing.assert_allclose(per_class, tm_iou, rtol=1e-6)
        assert summary[0] == pytest.approx(tm_macro, rel=1e-6)
        assert summary[2] == pytest.approx(tm_acc, rel=1e-6)


def test_suffixes_match_cityscapes_style_names(index_data):
    d = index_data
    gt = write_index_pngs(d["tmp"] / "gt_city", d["labels"], suffix="_gtFine_labelTrainIds.png")
    Image.fromarray(np.zeros((H, W), np.uint8)).save(gt / "a_gtFine_color.png")  # not a label map
    pred = write_index_pngs(d["tmp"] / "pred_city", d["preds"]["GN"], suffix="_leftImg8bit.png")
    pkl = _dump_results(d["tmp"] / "city.pkl", d["preds"]["GN"], STEMS, "_leftImg8bit.png")
    city = compare_miou(gt, [("png", pred), ("pkl", pkl)], num_classes=5,
                        gt_suffix="_gtFine_labelTrainIds.png", pred_suffix="_leftImg8bit.png")
    plain = compare_miou(d["gt"], [("GN", d["dirs"]["GN"])], num_classes=5)
    assert city.sections[0].values["png"] == plain.sections[0].values["GN"]
    assert city.sections[0].values["pkl"] == plain.sections[0].values["GN"]


# ----------------------------------------------------------------- errors

def test_missing_and_extra_predictions(index_data):
    d = index_data
    (d["dirs"]["GN"] / "b.png").unlink()
    with pytest.raises(ComparisonError, match=r"GN: no prediction for 1 ground-truth image.*'b'"):
        compare_miou(d["gt"], [("GN", d["dirs"]["GN"])], num_classes=5)
    Image.fromarray(np.zeros((H, W), np.uint8)).save(d["dirs"]["DGN"] / "zzz.png")
    with pytest.raises(ComparisonError,
                       match=r"DGN: 1 prediction\(s\) without ground truth.*'zzz'"):
        compare_miou(d["gt"], [("DGN", d["dirs"]["DGN"])], num_classes=5)


def test_bad_maps(index_data):
    d = index_data
    Image.fromarray(np.zeros((H, W + 1), np.uint8)).save(d["dirs"]["GN"] / "c.png")
    with pytest.raises(ComparisonError, match=r"GN/c\.png: prediction shape \(24, 33\)"):
        compare_miou(d["gt"], [("GN", d["dirs"]["GN"])], num_classes=5)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(d["dirs"]["DGN"] / "a.png")
    with pytest.raises(ComparisonError, match=r"DGN/a\.png: expected a single-channel"):
        compare_miou(d["gt"], [("DGN", d["dirs"]["DGN"])], num_classes=5)
    with pytest.raises(ComparisonError, match=r"gt/a\.png: expected an RGB label map"):
        compare_miou(d["gt"], [("DGN", d["dirs"]["DGN"])], num_classes=5, encoding="rgb")


def test_bad_arguments_and_files(index_data):
    d = index_data
    empty = d["tmp"] / "empty"
    empty.mkdir()
    with pytest.raises(ComparisonError, match="empty: no files ending in '.png'"):
        compare_miou(empty, [("GN", d["dirs"]["GN"])], num_classes=5)
    with pytest.raises(ComparisonError, match="nowhere: no such folder or file"):
        compare_miou(d["gt"], [("GN", d["tmp"] / "nowhere")], num_classes=5)
    with pytest.raises(ComparisonError, match="num-classes"):
        compare_miou(d["gt"], [("GN", d["dirs"]["GN"])], num_classes=0)
    with pytest.raises(ComparisonError, match="reduce-zero-label"):
        compare_miou(d["gt"], [("GN", d["dirs"]["GN"])], num_classes=5, encoding="rgb", reduce=True)
    names = d["tmp"] / "names.txt"
    names.write_text("a\nb\n")
    with pytest.raises(ComparisonError, match="names.txt: 2 class names for --num-classes 5"):
        compare_miou(d["gt"], [("GN", d["dirs"]["GN"])], num_classes=5, class_names=names)
    bad_pkl = d["tmp"] / "bad.pkl"
    bad_pkl.write_bytes(pickle.dumps([{"img_path": "a.jpg"}]))
    with pytest.raises(ComparisonError, match=r"bad\.pkl: entry 0 lacks"):
        compare_miou(d["gt"], [("GN", bad_pkl)], num_classes=5)


def test_out_of_range_predictions_are_noted(index_data):
    d = index_data
    preds = [p.copy() for p in d["preds"]["GN"]]
    preds[0][5, 10] = 7
    folder = write_index_pngs(d["tmp"] / "wide", preds)
    comparison = compare_miou(d["gt"], [("GN", folder)], num_classes=5)
    assert any("1 predicted pixels have ids outside [0, 5)" in note for note in comparison.notes)


# ----------------------------------------------------------------- command line and formats

def test_output_formats_and_plot(index_data, capsys):
    d = index_data
    names = d["tmp"] / "names.txt"
    names.write_text("sky\nroad\ncar\ntree\nboat\n")
    args = ["--gt", str(d["gt"]), "--preds", f"GN={d['dirs']['GN']}", f"DGN={d['dirs']['DGN']}",
            "--num-classes", "5", "--per-class", "--class-names", str(names)]
    expected = compare_miou(d["gt"], list(d["dirs"].items()), 5, per_class=True, class_names=names)
    summary, per_class = expected.sections

    assert main(args) == 0
    markdown = capsys.readouterr().out
    assert "| metric | GN | DGN | Δ DGN |" in markdown
    assert f"| aAcc | {summary.values['GN'][2]:.2f} | {summary.values['DGN'][2]:.2f} |" in markdown
    assert "| boat | n/a | n/a | n/a |" in markdown

    out = d["tmp"] / "r.csv"
    assert main(args + ["--format", "csv", "--output", str(out)]) == 0
    rows = {row["metric"]: row for row in csv.DictReader(out.read_text().splitlines())}
    assert float(rows["aAcc"]["DGN"]) == summary.values["DGN"][2]
    assert float(rows["car"]["delta DGN"]) == per_class.values["DGN"][2] - per_class.values["GN"][2]
    assert rows["boat"]["GN"] == "nan"

    out = d["tmp"] / "r.json"
    plot = d["tmp"] / "r.png"
    assert main(args + ["--format", "json", "--output", str(out), "--plot", str(plot)]) == 0
    report = json.loads(out.read_text())
    rows = {r["metric"]: r for s in report["sections"] for r in s["rows"]}
    assert rows["road"]["values"]["GN"] == per_class.values["GN"][1]
    assert rows["boat"]["values"]["DGN"] is None and rows["boat"]["deltas"]["DGN"] is None
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(plot) as image:
        assert image.size[0] > 100 and image.size[1] > 100


def test_cli_errors_exit_2(index_data, capsys):
    d = index_data
    (d["dirs"]["DGN"] / "d.png").unlink()
    assert main(["--gt", str(d["gt"]), "--preds", f"GN={d['dirs']['GN']}",
                 f"DGN={d['dirs']['DGN']}", "--num-classes", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(d["dirs"]["DGN"]) in err


def test_script_runs_from_the_repository_root(index_data):
    d = index_data
    done = subprocess.run(
        [sys.executable, "tools/compare_miou.py", "--gt", str(d["gt"]), "--preds",
         str(d["dirs"]["GN"]), str(d["dirs"]["DGN"]), "--num-classes", "5", "--format", "csv"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    header = done.stdout.splitlines()[0]
    assert header == "section,metric,GN,DGN,delta DGN"


def test_single_set_report_mentions_no_delta(index_data):
    from dgn_plugins.evaluation.compare.report import render_markdown

    d = index_data
    text = render_markdown(compare_miou(d["gt"], [("GN", d["dirs"]["GN"])], 5))
    assert "Δ" not in text and text.startswith("Values in %.")
    both = render_markdown(compare_miou(d["gt"], list(d["dirs"].items()), 5))
    assert "Δ = set − GN (baseline)" in both


def test_class_names_from_a_config_or_a_dataset_name(index_data, tmp_path):
    pytest.importorskip("mmseg", reason="mmseg is not installed")
    from dgn_plugins.evaluation.compare.miou import class_names_from

    demo = str(Path(__file__).resolve().parent.parent / "configs" / "demo" / "fcn_tiny_gn_demo.py")
    assert class_names_from(demo) == ["others", "circle", "square", "triangle", "cross"]
    d = index_data
    comparison = compare_miou(d["gt"], [("GN", d["dirs"]["GN"])], 5, per_class=True, class_names=demo)
    assert comparison.sections[-1].metrics == ["others", "circle", "square", "triangle", "cross"]
    ade = class_names_from("ADE20KDataset")
    assert len(ade) == 150 and ade[0] == "wall"
    config = tmp_path / "imagenets50.py"
    config.write_text("test_dataloader = dict(dataset=dict(type='ImageNetSDataset', subset=50))\n")
    names = class_names_from(str(config))
    assert len(names) == 51 and names[:2] == ["others", "goldfish"]
    with pytest.raises(ComparisonError, match="NoSuchDataset: no such dataset"):
        class_names_from("NoSuchDataset")
