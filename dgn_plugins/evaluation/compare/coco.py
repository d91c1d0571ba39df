"""COCO box/mask AP of several result sets, scored by pycocotools' ``COCOeval``.

Each result set is converted to COCO result dicts exactly as the toolkit that
wrote it would before its own evaluation, then handed to ``COCOeval`` with its
default parameters, the call both MMDetection's ``CocoMetric`` and Detectron2's
``COCOEvaluator`` make:

* COCO result JSON, e.g. Detectron2's ``coco_instances_results.json``: as is.
* MMDetection 3.x ``tools/test.py --out x.pkl`` (``DumpDetResults``): per-image
  dicts with ``img_id`` and ``pred_instances`` (``bboxes`` xyxy, ``scores``,
  ``labels``, RLE ``masks``, optional ``mask_scores``), converted like
  ``CocoMetric.results2json``: float32 boxes to xywh, label ``i`` to
  ``cat_ids[i]`` where ``cat_ids`` is ``COCO.getCatIds()`` of the ground truth
  (its ``categories`` in file order).
* Detectron2 ``instances_predictions.pth``: a ``torch.save``-d list of
  ``{"image_id", "instances": [COCO result dicts]}`` whose ``category_id`` is
  still the contiguous index; it is mapped back through the sorted ground-truth
  category ids as ``COCOEvaluator`` does with ``thing_dataset_id_to_contiguous_id``.

For ``segm`` the ``bbox`` key is dropped first (both toolkits do this), so
small/medium/large use the mask area rather than the box area.
"""
from __future__ import annotations

import contextlib
import io
import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ...cli import ToolParser, existing_file
from . import ComparisonError, read_results_file
from .report import Comparison, add_output_arguments, add_result_sets, run_tool

IOU_TYPES = ("bbox", "segm")
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # COCOeval.stats[0:6]


@dataclass
class ResultSet:
    """One labelled result file, as COCO result dicts per IoU type."""

    label: str
    path: Path
    source: str
    detections: Dict[str, Optional[List[dict]]]  # None: the set cannot be scored for that type
    missing_reason: Dict[str, str]


# ----------------------------------------------------------------- reading files

def _quietly():
    """pycocotools prints progress to stdout, which is where the report goes."""
    return contextlib.redirect_stdout(io.StringIO())


def load_ground_truth(path: Path):
    """A pycocotools ``COCO`` for the annotation file, or a clear error."""
    from pycocotools.coco import COCO

    data = read_results_file(path, formats=("json",))
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        raise ComparisonError(f"{path}: not a COCO annotation file "
                              "(expected a JSON object with images, annotations and categories)")
    coco = COCO()
    coco.dataset = data
    with _quietly():
        coco.createIndex()
    return coco


# ----------------------------------------------------------------- conversions

def _plain_id(value):
    """numpy/torch integer ids as Python ints, so ids compare and hash normally."""
    if hasattr(value, "item"):
        value = value.item()
    return value


def _as_array(value, dtype=None) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor
        if dtype is np.float32:
            import torch

            value = value.to(dtype=torch.float32)
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def _rle_with_text_counts(mask) -> dict:
    """An RLE dict whose ``counts`` is ``str``, encoding a binary mask if needed."""
    from pycocotools import mask as mask_util

    if not isinstance(mask, dict):  # a raw HxW mask, encoded like mmdet's encode_mask_results
        mask = mask_util.encode(np.array(_as_array(mask)[:, :, None], order="F", dtype="uint8"))[0]
    counts = mask["counts"]
    return {**mask, "counts": counts.decode() if isinstance(counts, bytes) else counts}


def from_mmdet_samples(samples: list, cat_ids: Sequence[int],
                       path: Path) -> Tuple[list, Optional[list]]:
    """Box and mask results as ``CocoMetric.process`` + ``results2json`` build them."""
    has_masks = all("masks" in sample["pred_instances"] for sample in samples)
    bbox_results: list = []
    segm_results: Optional[list] = [] if has_masks else None
    for idx, sample in enumerate(samples):
        pred = sample["pred_instances"]
        image_id = _plain_id(sample.get("img_id", idx))
        if not isinstance(pred, dict):
            raise ComparisonError(f"{path}: image {image_id}: 'pred_instances' is a {type(pred).__name__}, "
                                  "not a dict (dump it with mmdet's tools/test.py --out)")
        missing = [key for key in ("bboxes", "scores", "labels") if key not in pred]
        if missing:
            raise ComparisonError(
                f"{path}: image {image_id}: 'pred_instances' has no {', '.join(repr(k) for k in missing)} "
                f"(keys: {', '.join(sorted(map(str, pred))) or 'none'}); box AP needs bboxes, scores and labels")
        bboxes = _as_array(pred["bboxes"], np.float32).reshape(-1, 4)
        scores = _as_array(pred["scores"], np.float32)
        labels = _as_array(pred["labels"]).astype(np.int64)
        mask_scores = (_as_array(pred["mask_scores"], np.float32)
                       if "mask_scores" in pred else scores)
        for i, label in enumerate(labels.tolist()):
            if not 0 <= label < len(cat_ids):
                raise ComparisonError(
                    f"{path}: image {image_id} has label {label}, but the ground truth has "
                    f"{len(cat_ids)} categories (labels index its categories in file order)")
            x1, y1, x2, y2 = bboxes[i].tolist()
            bbox_results.append({"image_id": image_id, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                 "score": float(scores[i]), "category_id": cat_ids[label]})
            if segm_results is not None:
                segm_results.append({"image_id": image_id, "score": float(mask_scores[i]),
                                     "category_id": cat_ids[label],
                                     "segmentation": _rle_with_text_counts(pred["masks"][i])})
    return bbox_results, segm_results


def from_detectron2_predictions(predictions: list, sorted_cat_ids: Sequence[int],
                                path: Path) -> list:
    """COCO results from ``instances_predictions.pth`` (contiguous ids mapped back)."""
    results = []
    for prediction in predictions:
        if "instances" not in prediction:
            raise ComparisonError(f"{path}: image {prediction.get('image_id')} has no 'instances' "
                                  "(proposal-only predictions cannot be scored for AP)")
        for instance in prediction["instances"]:
            contiguous = _plain_id(instance["category_id"])
            if not (isinstance(contiguous, int) and 0 <= contiguous < len(sorted_cat_ids)):
                raise ComparisonError(
                    f"{path}: contiguous category id {contiguous} is outside the "
                    f"{len(sorted_cat_ids)} ground-truth categories")
            result = dict(instance, category_id=sorted_cat_ids[contiguous])
            if "segmentation" in result:
                result["segmentation"] = _rle_with_text_counts(result["segmentation"])
            results.append(result)
    return results


def _split_by_iou_type(results: list) -> Tuple[Dict[str, Optional[list]], Dict[str, str]]:
    """Per-type result lists: boxes as given, masks without ``bbox``."""
    detections: Dict[str, Optional[list]] = {"bbox": None, "segm": None}
    reasons: Dict[str, str] = {}
    if all("bbox" in r for r in results):
        detections["bbox"] = results
    else:
        reasons["bbox"] = "detections without 'bbox'"
    if all("segmentation" in r for r in results):
        detections["segm"] = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    else:
        reasons["segm"] = "detections without 'segmentation'"
    return detections, reasons


def load_result_set(label: str, path: Path, coco_gt) -> ResultSet:
    """Read any supported result file and check it against the ground truth."""
    data = read_results_file(path)
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise ComparisonError(f"{path}: expected a list of dicts (COCO results, MMDetection "
                              "per-image results or Detectron2 per-image predictions)")
    if not data:
        raise ComparisonError(f"{path}: the result set is empty")
    if "pred_instances" in data[0]:
        source = "MMDetection --out pickle"
        if not all("pred_instances" in item for item in data):
            raise ComparisonError(f"{path}: some entries have no 'pred_instances'")
        bbox, segm = from_mmdet_samples(data, coco_gt.getCatIds(), path)
        detections = {"bbox": bbox, "segm": segm}
        reasons = {} if segm is not None else {"segm": "no 'masks' in its pred_instances"}
    elif "instances" in data[0]:
        source = "Detectron2 instances_predictions"
        results = from_detectron2_predictions(data, sorted(coco_gt.getCatIds()), path)
        detections, reasons = _split_by_iou_type(results)
    elif "category_id" in data[0]:
        source = "COCO result JSON"
        results = [dict(r, segmentation=_rle_with_text_counts(r["segmentation"]))
                   if isinstance(r.get("segmentation"), dict) else r for r in data]
        detections, reasons = _split_by_iou_type(results)
    else:
        raise ComparisonError(f"{path}: unrecognised entries (keys {sorted(data[0])[:8]}); "
                              "expected COCO results, MMDetection results or Detectron2 "
                              "predictions")
    for results in detections.values():
        if results is not None:
            check_against_ground_truth(results, path, coco_gt)
            check_detection_values(results, path)
    if detections["segm"] is not None:
        check_compressed_rle(detections["segm"], path)
    if all(results is None for results in detections.values()):
        raise ComparisonError(f"{path}: detections have neither 'bbox' nor 'segmentation'")
    if not any(detections.values()):
        raise ComparisonError(f"{path}: the result set has no detections")
    return ResultSet(label, Path(path), source, detections, reasons)


def _few(values) -> str:
    values = sorted(values, key=repr)
    shown = ", ".join(repr(v) for v in values[:5])
    return shown + (f" and {len(values) - 5} more" if len(values) > 5 else "")


def check_against_ground_truth(results: list, path: Path, coco_gt) -> None:
    """Reject results pycocotools would reject, or silently mis-score."""
    for key in ("image_id", "category_id", "score"):
        if any(key not in r for r in results):
            raise ComparisonError(f"{path}: some detections have no '{key}'")
    unknown_images = {r["image_id"] for r in results} - set(coco_gt.getImgIds())
    if unknown_images:
        raise ComparisonError(f"{path}: image ids not in the ground truth: {_few(unknown_images)}")
    unknown_categories = {r["category_id"] for r in results} - set(coco_gt.getCatIds())
    if unknown_categories:
        raise ComparisonError(
            f"{path}: category ids not in the ground truth: {_few(unknown_categories)}")


def _number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _box_problem(box) -> Optional[str]:
    if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(_number(v) for v in box)):
        return "a bbox that is not four numbers [x, y, w, h]"
    if not all(math.isfinite(v) for v in box):
        return "a bbox that is not finite (NaN or inf)"
    if box[2] < 0 or box[3] < 0:
        return "a bbox of negative width or height"
    return None


def check_detection_values(results: list, path: Path) -> None:
    """Refuse detections COCOeval would score without a word (NaN or inf boxes or scores, boxes of
    negative size: a diverged model, or xyxy boxes given as xywh) or crash on (a box that is not four
    numbers), with how many of each kind and one example."""
    problems: Dict[str, list] = {}
    for r in results:
        if not (_number(r["score"]) and math.isfinite(r["score"])):
            problems.setdefault("a score that is not a finite number", []).append((r, r["score"]))
        problem = _box_problem(r["bbox"]) if "bbox" in r else None
        if problem:
            problems.setdefault(problem, []).append((r, r["bbox"]))
    if problems:
        kinds = "; ".join(f"{len(found)} with {kind} (e.g. image {found[0][0]['image_id']}: {found[0][1]!r})"
                          for kind, found in problems.items())
        raise ComparisonError(f"{path}: {len({id(r) for found in problems.values() for r, _ in found})} of "
                              f"{len(results)} detections cannot be scored: {kinds}")


def check_compressed_rle(results: list, path: Path) -> None:
    """pycocotools' ``loadRes`` scores masks only as compressed RLE dicts."""
    for r in results:
        seg = r["segmentation"]
        if not (isinstance(seg, dict) and "size" in seg and isinstance(seg.get("counts"), str)):
            raise ComparisonError(
                f"{path}: image {r['image_id']} has a segmentation that is not a compressed RLE "
                "dict ({'size': [h, w], 'counts': str}), which pycocotools requires for results")


# ----------------------------------------------------------------- scoring

def evaluate(coco_gt, results: list, iou_type: str):
    """``COCOeval`` run to completion with default parameters (maxDets 1/10/100)."""
    from pycocotools.cocoeval import COCOeval

    with _quietly():
        # loadRes adds keys to each dict it is given, so give it copies.
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        coco_eval = COCOeval(coco_gt, coco_dt, iou_type)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval


def _percent(value: float) -> float:
    """COCOeval's -1 ("no ground truth here") becomes NaN, as in Detectron2."""
    return float(value * 100) if value >= 0 else float("nan")


def summary_metrics(coco_eval) -> List[float]:
    """AP, AP50, AP75, APs, APm, APl in percent: ``100 * stats[0:6]``."""
    return [_percent(v) for v in coco_eval.stats[:6]]


def per_category_ap(coco_eval) -> List[float]:
    """AP per category, averaged from ``eval['precision']`` like mmdet/Detectron2.

    Area range "all" (index 0), the last maxDets (100); NaN when a category has
    no ground truth.
    """
    precisions = coco_eval.eval["precision"]  # (iou, recall, category, area, maxDets)
    values = []
    for idx in range(len(coco_eval.params.catIds)):
        precision = precisions[:, :, idx, 0, -1]
        precision = precision[precision > -1]
        values.append(float(np.mean(precision) * 100) if precision.size else float("nan"))
    return values


def category_names(coco_gt, cat_ids: Sequence[int]) -> List[str]:
    names = [cat["name"] for cat in coco_gt.loadCats(list(cat_ids))]
    return [f"{name} (id {cid})" if names.count(name) > 1 else name
            for name, cid in zip(names, cat_ids)]


def choose_iou_types(sets: Sequence[ResultSet], requested: Optional[Sequence[str]]
                     ) -> Tuple[List[str], List[str]]:
    """The IoU types to score and notes on the ones left out.

    By default every type that all sets support; an explicitly requested type a
    set cannot provide is an error naming that set's file.
    """
    if requested:
        for iou_type in requested:
            for rs in sets:
                if rs.detections[iou_type] is None:
                    raise ComparisonError(
                        f"{rs.path}: cannot evaluate {iou_type} for set '{rs.label}' "
                        f"({rs.source}): {rs.missing_reason[iou_type]}")
        return list(dict.fromkeys(requested)), []
    chosen, notes = [], []
    for iou_type in IOU_TYPES:
        lacking = [rs for rs in sets if rs.detections[iou_type] is None]
        if not lacking:
            chosen.append(iou_type)
        else:
            notes.append(f"{iou_type} not evaluated: " + "; ".join(
                f"set '{rs.label}' ({rs.path}) has {rs.missing_reason[iou_type]}"
                for rs in lacking))
    if not chosen:
        raise ComparisonError("no IoU type can be evaluated for every result set: "
                              + " ".join(notes))
    return chosen, notes


def compare_coco(gt_path: Path, results: Sequence[Tuple[str, Path]],
                 iou_types: Optional[Sequence[str]] = None,
                 per_category: bool = False) -> Comparison:
    """Score every labelled result file on the same ground truth, side by side."""
    if not results:
        raise ComparisonError("no result sets given")
    coco_gt = load_ground_truth(Path(gt_path))
    sets = [load_result_set(label, Path(path), coco_gt) for label, path in results]
    chosen, notes = choose_iou_types(sets, iou_types)
    comparison = Comparison(labels=[rs.label for rs in sets], unit="% (100 × COCOeval)")
    for iou_type in chosen:
        evals = {rs.label: evaluate(coco_gt, rs.detections[iou_type], iou_type) for rs in sets}
        comparison.add_section(iou_type, STAT_NAMES,
                               {label: summary_metrics(ev) for label, ev in evals.items()})
        if per_category:
            cat_ids = next(iter(evals.values())).params.catIds
            comparison.add_section(f"{iou_type} per-category AP", category_names(coco_gt, cat_ids),
                                   {label: per_category_ap(ev) for label, ev in evals.items()})
    comparison.notes = notes + [
        "pycocotools COCOeval with default parameters (maxDets 100); segm uses mask areas "
        "(bbox dropped from mask results), as MMDetection and Detectron2 do; "
        "n/a = no ground truth in that range."]
    comparison.notes += [f"set '{rs.label}': {rs.source} from {rs.path}" for rs in sets]
    return comparison


# ----------------------------------------------------------------- command line

def build_parser() -> ToolParser:
    parser = ToolParser(
        prog="compare_coco.py",
        description="Compare COCO bbox/segm AP of several result sets (e.g. GN vs DGN), "
                    "scored by pycocotools COCOeval. Deltas are against the first set.")
    parser.add_argument("--gt", required=True, type=existing_file, help="COCO annotation JSON")
    add_result_sets(parser, "--results", path_type=existing_file,
                    help="result files: COCO result JSON, MMDetection --out .pkl, "
                         "Detectron2 instances_predictions.pth or coco_instances_results.json")
    parser.add_argument("--iou-types", nargs="+", choices=IOU_TYPES,
                        help="default: bbox, plus segm when every set has masks")
    parser.add_argument("--per-category", action="store_true", help="add per-category AP")
    add_output_arguments(parser)
    return parser


def _compare_from_args(args) -> Comparison:
    return compare_coco(args.gt, args.results, args.iou_types, args.per_category)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_tool(argv, build_parser(), _compare_from_args)
