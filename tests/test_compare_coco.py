"""compare_coco must report exactly what pycocotools' COCOeval reports.

Every expected number below comes from COCOeval run inside the test on the
files the tool reads (or on the COCO JSON the toolkit would have written), so a
wrong conversion, category mapping or area convention shows up as a mismatch.
"""
import contextlib
import copy
import csv
import io
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from dgn_plugins.evaluation.compare import ComparisonError
from dgn_plugins.evaluation.compare.coco import compare_coco, main

REPO = Path(__file__).parent.parent
WIDTH, HEIGHT = 160, 120
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}, {"id": 7, "name": "bird"}]
SIZES = [(12, 14), (26, 30), (45, 50), (130, 100)]  # small, small, medium, large boxes


# ----------------------------------------------------------------- synthetic data

def octagon(x1, y1, x2, y2):
    """A polygon inside the box (corners cut), so mask area < box area."""
    dx, dy = (x2 - x1) * 0.25, (y2 - y1) * 0.25
    return [x1 + dx, y1, x2 - dx, y1, x2, y1 + dy, x2, y2 - dy,
            x2 - dx, y2, x1 + dx, y2, x1, y2 - dy, x1, y1 + dy]


def rle_of_polygon(poly):
    """Compressed RLE (bytes counts, as pycocotools and mmdet produce it)."""
    return mask_util.merge(mask_util.frPyObjects([poly], HEIGHT, WIDTH))


def make_ground_truth(rng, categories=CATEGORIES):
    images = [{"id": 10 + i, "width": WIDTH, "height": HEIGHT, "file_name": f"{i}.jpg"}
              for i in range(4)]
    annotations = []
    for image in images:
        for w, h in SIZES:
            x, y = rng.uniform(0, WIDTH - w), rng.uniform(0, HEIGHT - h)
            poly = octagon(x, y, x + w, y + h)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image["id"],
                "category_id": int(rng.choice([c["id"] for c in CATEGORIES])),
                "bbox": [x, y, w, h], "segmentation": [poly], "iscrowd": 0,
                "area": float(mask_util.area(rle_of_polygon(poly)))})
    crowd = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    crowd[5:35, 100:150] = 1
    rle = mask_util.encode(np.asfortranarray(crowd))
    annotations.append({"id": len(annotations) + 1, "image_id": 10, "category_id": 1,
                        "bbox": [100.0, 5.0, 50.0, 30.0], "iscrowd": 1,
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()},
                        "area": float(mask_util.area(rle))})
    return {"images": images, "annotations": annotations, "categories": list(categories)}


def make_predictions(gt, rng, noise):
    """Per-image float32 xyxy boxes, scores, true category ids and RLE masks."""
    per_image = {image["id"]: {"boxes": [], "scores": [], "cat_ids": [], "masks": []}
                 for image in gt["images"]}

    def add(image_id, box, score, cat_id, poly=None):
        entry = per_image[image_id]
        entry["boxes"].append(box)
        entry["scores"].append(score)
        entry["cat_ids"].append(cat_id)
        entry["masks"].append(rle_of_polygon(poly if poly is not None else octagon(*box)))

    for ann in gt["annotations"]:
        if ann["iscrowd"] or rng.random() < 0.15:
            continue
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0, noise, 4) * [w, h, w, h]
        box = np.clip([x + jitter[0], y + jitter[1], x + w + jitter[2], y + h + jitter[3]],
                      0, [WIDTH, HEIGHT, WIDTH, HEIGHT])
        cat = ann["category_id"] if rng.random() > 0.1 else int(rng.choice([1, 3, 7]))
        add(ann["image_id"], box, rng.uniform(0.3, 1.0), cat)
    for image_id in per_image:  # false positives
        for _ in range(2):
            x, y = rng.uniform(0, WIDTH - 30), rng.uniform(0, HEIGHT - 30)
            add(image_id, [x, y, x + 30, y + 25], rng.uniform(0.0, 0.6), int(rng.choice([1, 3, 7])))
    # A confident false positive whose box is "medium" but whose mask is "small":
    # only the mask-area convention (bbox dropped for segm) counts it under APs.
    add(10, [100.0, 60.0, 140.0, 100.0], 0.99, 1, poly=[102, 62, 112, 62, 112, 72, 102, 72])
    return {image_id: {"boxes": np.asarray(e["boxes"], dtype=np.float32).reshape(-1, 4),
                       "scores": np.asarray(e["scores"], dtype=np.float32),
                       "cat_ids": e["cat_ids"], "masks": e["masks"]}
            for image_id, e in per_image.items()}


def to_coco_results(preds, mask_scores=None):
    """COCO result dicts as mmdet's results2json writes them (xyxy float32 -> xywh)."""
    results = []
    for image_id, e in preds.items():
        for i, cat_id in enumerate(e["cat_ids"]):
            x1, y1, x2, y2 = e["boxes"][i].tolist()
            score = mask_scores[image_id][i] if mask_scores is not None else e["scores"][i]
            results.append({"image_id": image_id, "category_id": cat_id,
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score),
                            "segmentation": {"size": e["masks"][i]["size"],
                                             "counts": e["masks"][i]["counts"].decode()}})
    return results


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    gt = make_ground_truth(rng)
    return {"gt": gt, "gt_file": write_json(tmp_path / "gt.json", gt),
            "GN": make_predictions(gt, rng, 0.12), "DGN": make_predictions(gt, rng, 0.06),
            "tmp": tmp_path}


# ----------------------------------------------------------------- reference numbers

def reference_eval(gt_file, results, iou_type, keep_bbox=False):
    """COCOeval as MMDetection/Detectron2 call it (segm results without bbox)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        results = copy.deepcopy(results)
        if iou_type == "segm" and not keep_bbox:
            for r in results:
                r.pop("bbox", None)
        ev = COCOeval(gt, gt.loadRes(results), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def reference_summary(ev):
    return [s * 100 if s >= 0 else math.nan for s in ev.stats[:6]]


def section(comparison, title):
    return next(s for s in comparison.sections if s.title == title)


# ----------------------------------------------------------------- numbers

def test_json_sets_match_cocoeval(data):
    files = {label: write_json(data["tmp"] / f"{label}.json", to_coco_results(data[label]))
             for label in ("GN", "DGN")}
    comparison = compare_coco(data["gt_file"], list(files.items()))
    assert comparison.labels == ["GN", "DGN"]
    assert [s.title for s in comparison.sections] == ["bbox", "segm"]
    for iou_type in ("bbox", "segm"):
        sec = section(comparison, iou_type)
        assert sec.metrics == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
        for label, path in files.items():
            results = json.loads(path.read_text())
            expected = reference_summary(reference_eval(data["gt_file"], results, iou_type))
            np.testing.assert_array_equal(sec.values[label], expected)
        np.testing.assert_array_equal(
            comparison.delta(sec, "DGN"), np.subtract(sec.values["DGN"], sec.values["GN"]))
    assert section(comparison, "bbox").values["GN"] != section(comparison, "bbox").values["DGN"]
    # The data tells the mask-area convention apart from the box-area one.
    with_bbox = reference_summary(reference_eval(
        data["gt_file"], json.loads(files["GN"].read_text()), "segm", keep_bbox=True))
    assert section(comparison, "segm").values["GN"] != with_bbox


def test_per_category_ap_comes_from_the_precision_array(data):
    results = to_coco_results(data["DGN"])
    path = write_json(data["tmp"] / "dgn.json", results)
    comparison = compare_coco(data["gt_file"], [("DGN", path)], ["bbox", "segm"], per_category=True)
    assert [s.title for s in comparison.sections] == [
        "bbox", "bbox per-category AP", "segm", "segm per-category AP"]
    for iou_type in ("bbox", "segm"):
        ev = reference_eval(data["gt_file"], results, iou_type)
        sec = section(comparison, f"{iou_type} per-category AP")
        assert sec.metrics == ["cat", "dog", "bird"]  # ids 1, 3, 7
        precision = ev.eval["precision"]
        expected = []
        for k in range(3):
            p = precision[:, :, k, 0, -1]
            expected.append(float(np.mean(p[p > -1]) * 100))
        np.testing.assert_array_equal(sec.values["DGN"], expected)
        # Every category has ground truth, so their mean is the overall AP.
        overall_ap = section(comparison, iou_type).values["DGN"][0]
        assert np.mean(sec.values["DGN"]) == pytest.approx(overall_ap)


def test_ranges_without_ground_truth_are_nan(data, capsys):
    """COCOeval's -1 (nothing to score) must not pass for an AP of -1 %."""
    gt = dict(data["gt"], categories=CATEGORIES + [{"id": 9, "name": "fish"}],
              annotations=[a for a in data["gt"]["annotations"] if a["area"] < 96 ** 2])
    gt_file = write_json(data["tmp"] / "gt_no_large.json", gt)
    results = to_coco_results(data["GN"])
    path = write_json(data["tmp"] / "gn.json", results)
    comparison = compare_coco(gt_file, [("GN", path)], ["bbox"], per_category=True)
    ev = reference_eval(gt_file, results, "bbox")
    assert ev.stats[5] == -1
    values = section(comparison, "bbox").values["GN"]
    assert math.isnan(values[5]) and values[:5] == reference_summary(ev)[:5]
    per_category = section(comparison, "bbox per-category AP")
    assert per_category.metrics[-1] == "fish" and math.isnan(per_category.values["GN"][-1])
    assert main(["--gt", str(gt_file), "--results", str(path), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["sections"][0]["rows"]
    assert rows[5]["metric"] == "APl" and rows[5]["values"]["gn"] is None
    assert main(["--gt", str(gt_file), "--results", str(path)]) == 0
    assert "| APl | n/a |" in capsys.readouterr().out


@pytest.fixture
def unsorted_gt(data):
    """Ground truth whose categories are listed out of id order (7, 1, 3)."""
    gt = dict(data["gt"], categories=[CATEGORIES[2], CATEGORIES[0], CATEGORIES[1]])
    return write_json(data["tmp"] / "gt_unsorted.json", gt)


def test_mmdet_pickle_matches_results2json(data, unsorted_gt):
    file_order = [7, 1, 3]  # CocoMetric: cat_ids = COCO.getCatIds(), labels index it
    rng = np.random.default_rng(1)
    mask_scores = {i: (e["scores"] * rng.uniform(0.5, 1, len(e["scores"]))).astype(np.float32)
                   for i, e in data["DGN"].items()}
    samples = [{"img_id": image_id, "img_path": f"{image_id}.jpg", "ori_shape": (HEIGHT, WIDTH),
                "pred_instances": {
                    "bboxes": torch.from_numpy(e["boxes"]), "scores": torch.from_numpy(e["scores"]),
                    "labels": torch.tensor([file_order.index(c) for c in e["cat_ids"]]),
                    "masks": e["masks"], "mask_scores": torch.from_numpy(mask_scores[image_id])}}
               for image_id, e in data["DGN"].items()]
    pkl = data["tmp"] / "results.pkl"
    pkl.write_bytes(pickle.dumps(samples))
    comparison = compare_coco(unsorted_gt, [("DGN", pkl)])
    expected_bbox = reference_eval(unsorted_gt, to_coco_results(data["DGN"]), "bbox")
    expected_segm = reference_eval(unsorted_gt, to_coco_results(data["DGN"], mask_scores), "segm")
    np.testing.assert_array_equal(section(comparison, "bbox").values["DGN"],
                                  reference_summary(expected_bbox))
    np.testing.assert_array_equal(section(comparison, "segm").values["DGN"],
                                  reference_summary(expected_segm))
    assert any("MMDetection" in note for note in comparison.notes)


def test_detectron2_pth_maps_contiguous_ids_back(data, unsorted_gt):
    sorted_ids = [1, 3, 7]  # Detectron2: contiguous id = index in sorted category ids
    results = to_coco_results(data["GN"])
    predictions = [{"image_id": image_id,
                    "instances": [dict(r, category_id=sorted_ids.index(r["category_id"]))
                                  for r in results if r["image_id"] == image_id]}
                   for image_id in data["GN"]]
    pth = data["tmp"] / "instances_predictions.pth"
    torch.save(predictions, pth)
    json_file = write_json(data["tmp"] / "coco_instances_results.json", results)
    comparison = compare_coco(unsorted_gt, [("pth", pth), ("json", json_file)])
    for iou_type in ("bbox", "segm"):
        expected = reference_summary(reference_eval(unsorted_gt, results, iou_type))
        np.testing.assert_array_equal(section(comparison, iou_type).values["pth"], expected)
        np.testing.assert_array_equal(section(comparison, iou_type).values["json"], expected)


def test_segm_is_left_out_by_default_when_a_set_has_no_masks(data):
    full = write_json(data["tmp"] / "full.json", to_coco_results(data["GN"]))
    boxes_only = [{k: v for k, v in r.items() if k != "segmentation"}
                  for r in to_coco_results(data["DGN"])]
    boxes = write_json(data["tmp"] / "boxes.json", boxes_only)
    comparison = compare_coco(data["gt_file"], [("GN", full), ("DGN", boxes)])
    assert [s.title for s in comparison.sections] == ["bbox"]
    assert any("segm not evaluated" in note and "boxes.json" in note for note in comparison.notes)
    expected = reference_summary(reference_eval(data["gt_file"], boxes_only, "bbox"))
    np.testing.assert_array_equal(section(comparison, "bbox").values["DGN"], expected)
    with pytest.raises(ComparisonError, match=r"boxes\.json.*segm"):
        compare_coco(data["gt_file"], [("GN", full), ("DGN", boxes)], ["bbox", "segm"])


# ----------------------------------------------------------------- errors

def _broken_results(data, problem):
    results = to_coco_results(data["GN"])
    if problem == "image id":
        results[3]["image_id"] = 999
        return results, "image ids not in the ground truth: 999"
    if problem == "category id":
        results[0]["category_id"] = 5
        return results, "category ids not in the ground truth: 5"
    if problem == "empty":
        return [], "empty"
    if problem == "polygon":
        for r in results:
            r["segmentation"] = [octagon(0, 0, 10, 10)]
        return results, "compressed RLE"
    if problem == "no score":
        del results[0]["score"]
        return results, "no 'score'"
    raise AssertionError(problem)


@pytest.mark.parametrize("problem", ["image id", "category id", "empty", "polygon", "no score"])
def test_bad_result_files_name_the_file(data, problem):
    results, message = _broken_results(data, problem)
    path = write_json(data["tmp"] / "broken.json", results)
    with pytest.raises(ComparisonError, match=message) as err:
        compare_coco(data["gt_file"], [("bad", path)], ["bbox", "segm"])
    assert "broken.json" in str(err.value)


def test_unreadable_inputs(data):
    garbage = data["tmp"] / "garbage.txt"
    garbage.write_text("not a result file")
    with pytest.raises(ComparisonError, match="garbage.txt: unrecognised format"):
        compare_coco(data["gt_file"], [("x", garbage)])
    with pytest.raises(ComparisonError, match="missing.json: no such file"):
        compare_coco(data["gt_file"], [("x", data["tmp"] / "missing.json")])
    not_gt = write_json(data["tmp"] / "not_gt.json", [1, 2])
    with pytest.raises(ComparisonError, match="not_gt.json: not a COCO annotation file"):
        compare_coco(not_gt, [("x", garbage)])
    not_list = write_json(data["tmp"] / "dict.json", {"a": 1})
    with pytest.raises(ComparisonError, match="dict.json: expected a list"):
        compare_coco(data["gt_file"], [("x", not_list)])


def test_mmdet_label_outside_categories(data):
    e = data["GN"][10]
    sample = {"img_id": 10, "pred_instances": {
        "bboxes": torch.from_numpy(e["boxes"][:1]), "scores": torch.from_numpy(e["scores"][:1]),
        "labels": torch.tensor([3])}}
    pkl = data["tmp"] / "bad.pkl"
    pkl.write_bytes(pickle.dumps([sample]))
    with pytest.raises(ComparisonError, match=r"bad\.pkl: image 10 has label 3.*3 categories"):
        compare_coco(data["gt_file"], [("x", pkl)])


def test_detectron2_contiguous_id_outside_categories(data):
    pth = data["tmp"] / "bad.pth"
    torch.save([{"image_id": 10, "instances": [
        {"image_id": 10, "category_id": 7, "bbox": [0, 0, 5, 5], "score": 0.5}]}], pth)
    with pytest.raises(ComparisonError, match=r"bad\.pth: contiguous category id 7"):
        compare_coco(data["gt_file"], [("x", pth)])


# ----------------------------------------------------------------- command line and formats

@pytest.fixture
def two_files(data):
    return data, [write_json(data["tmp"] / f"{label}.json", to_coco_results(data[label]))
                  for label in ("GN", "DGN")]


def test_output_formats(two_files, capsys):
    data, (gn, dgn) = two_files
    args = ["--gt", str(data["gt_file"]), "--results", f"GN={gn}", f"DGN={dgn}", "--per-category"]
    expected = compare_coco(data["gt_file"], [("GN", gn), ("DGN", dgn)], per_category=True)
    bbox = section(expected, "bbox")

    assert main(args) == 0
    markdown = capsys.readouterr().out
    assert "| metric | GN | DGN | Δ DGN |" in markdown
    assert "### segm per-category AP" in markdown
    delta = bbox.values["DGN"][0] - bbox.values["GN"][0]
    assert (f"| AP | {bbox.values['GN'][0]:.2f} | {bbox.values['DGN'][0]:.2f} | {delta:+.2f} |"
            in markdown)

    out = data["tmp"] / "report.csv"
    assert main(args + ["--format", "csv", "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.read_text().splitlines()))
    ap = next(r for r in rows if r["section"] == "bbox" and r["metric"] == "AP")
    assert float(ap["GN"]) == bbox.values["GN"][0] and float(ap["DGN"]) == bbox.values["DGN"][0]
    assert float(ap["delta DGN"]) == delta
    assert {r["section"] for r in rows} == {"bbox", "segm", "bbox per-category AP",
                                             "segm per-category AP"}

    out = data["tmp"] / "report.json"
    assert main(args + ["--format", "json", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["baseline"] == "GN" and report["labels"] == ["GN", "DGN"]
    rows = {(s["title"], r["metric"]): r for s in report["sections"] for r in s["rows"]}
    assert rows[("segm", "APl")]["values"]["DGN"] == section(expected, "segm").values["DGN"][5]
    assert rows[("bbox", "AP")]["deltas"]["DGN"] == delta


def test_plot_is_a_png(two_files):
    from PIL import Image

    data, (gn, dgn) = two_files
    plot = data["tmp"] / "ap.png"
    assert main(["--gt", str(data["gt_file"]), "--results", f"GN={gn}", f"DGN={dgn}",
                 "--output", str(data["tmp"] / "r.md"), "--plot", str(plot)]) == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(plot) as image:
        assert image.size[0] > 100 and image.size[1] > 100


def test_cli_errors_exit_2_and_name_the_file(two_files, capsys):
    data, (gn, _) = two_files
    bad = write_json(data["tmp"] / "bad_ids.json",
                     [dict(to_coco_results(data["GN"])[0], image_id=5)])
    assert main(["--gt", str(data["gt_file"]), "--results", f"GN={gn}", f"BAD={bad}"]) == 2
    assert "bad_ids.json" in capsys.readouterr().err
    assert main(["--gt", str(data["gt_file"]), "--results", f"A={gn}", f"A={gn}"]) == 2
    assert "unique" in capsys.readouterr().err


def test_script_runs_from_the_repository_root(two_files):
    data, (gn, dgn) = two_files
    done = subprocess.run(
        [sys.executable, "tools/compare_coco.py", "--gt", str(data["gt_file"]),
         "--results", str(gn), str(dgn), "--format", "json"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["labels"] == ["GN", "DGN"]  # labels default to the file stems
    assert [s["title"] for s in report["sections"]] == ["bbox", "segm"]


def test_mmdet_pickle_without_bboxes_is_one_line(data, capsys):
    e = data["GN"][10]
    sample = {"img_id": 10, "pred_instances": {"scores": torch.from_numpy(e["scores"]),
                                               "labels": torch.zeros(len(e["scores"]), dtype=torch.long)}}
    pkl = data["tmp"] / "no_boxes.pkl"
    pkl.write_bytes(pickle.dumps([sample]))
    assert main(["--gt", str(data["gt_file"]), "--results", f"X={pkl}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert "no_boxes.pkl: image 10: 'pred_instances' has no 'bboxes' (keys: labels, scores)" in err
