"""Robustness summaries, as MMDetection's robustness benchmark defines them.

``tools/analysis_tools/robustness_eval.py`` (mmdet v3.3.0) stores results as
``[corruption, severity, metric]`` with severity 0 = clean and computes

- ``P``   = clean performance,
- ``mPC`` = mean over corruptions and severities 1-5 of the performance,
- ``rPC`` = ``mPC / P``.

Here a sweep is a mapping ``{corruption: {severity: value}}`` over whichever
subset was evaluated; the same numbers serve segmentation (mIoU), where mPC
is the mean corrupted mIoU.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Mapping, Optional, Tuple

import numpy as np

__all__ = ["robustness_summary", "per_corruption_mean", "per_severity_mean", "PRIMARY_METRICS",
           "pick_primary_metric", "task_of_metric", "display_scale", "nothing_detected"]

Cells = Mapping[str, Mapping[int, float]]


def _values(cells: Cells) -> np.ndarray:
    return np.array([float(v) for by_severity in cells.values() for v in by_severity.values()], dtype=np.float64)


def robustness_summary(clean: float, cells: Cells) -> Dict[str, float]:
    """``{"P": clean, "mPC": ..., "rPC": ...}``; rPC is NaN when P is 0."""
    values = _values(cells)
    if values.size == 0:
        raise ValueError("no corrupted cells to summarise")
    mpc = float(values.mean())
    rpc = mpc / clean if clean else math.nan
    return {"P": float(clean), "mPC": mpc, "rPC": rpc}


def per_corruption_mean(cells: Cells) -> Dict[str, float]:
    """Mean over the evaluated severities of each corruption."""
    return {name: float(np.mean([float(v) for v in by_severity.values()])) for name, by_severity in cells.items()}


def per_severity_mean(cells: Cells) -> Dict[int, float]:
    """Mean over the evaluated corruptions at each severity."""
    severities = sorted({int(s) for by_severity in cells.values() for s in by_severity})
    return {s: float(np.mean([float(b[s]) for b in cells.values() if s in b])) for s in severities}


#: Preferred headline metric per task, first found wins (keys as Runner.test() returns them).
PRIMARY_METRICS = {
    "detection": ("coco/bbox_mAP", "coco/segm_mAP", "pascal_voc/mAP", "bbox/AP", "segm/AP"),
    "segmentation": ("mIoU",),
    "classification": ("accuracy/top1",),  # mmpretrain's Accuracy, in %
}

#: Detectron2's evaluators report in percent (``bbox/AP``, ``sem_seg/mIoU``), as do
#: mmseg's IoUMetric (``mIoU``, ``aAcc``, ...) and mmpretrain's Accuracy (``accuracy/top1``);
#: mmdet's metrics (``coco/``, ``pascal_voc/``) are fractions.
_PERCENT_TASKS = ("bbox", "segm", "keypoints", "sem_seg", "panoptic_seg", "accuracy")
_PERCENT_NAMES = ("mIoU", "mAcc", "aAcc", "mDice", "mFscore", "mPrecision", "mRecall")
_FRACTION_PREFIXES = ("coco", "pascal_voc")


def pick_primary_metric(metrics: Dict[str, float], requested: Optional[str] = None) -> str:
    if requested is not None:
        if requested not in metrics:
            raise KeyError(f"metric {requested!r} not among the evaluator's {sorted(metrics)}")
        return requested
    for task in ("detection", "segmentation", "classification"):
        for key in PRIMARY_METRICS[task]:
            found = [k for k in metrics if k == key or k.endswith("/" + key)]
            if found:
                return found[0]
    raise KeyError(f"cannot tell the headline metric among {sorted(metrics)}; pass --metric")


def task_of_metric(key: str) -> str:
    if key.split("/")[0] == "accuracy":
        return "classification"
    return "segmentation" if "mIoU" in key else "detection"


def display_scale(key: str, values: Iterable[float]) -> Tuple[float, str]:
    """``(factor, unit)`` that shows ``key`` in percent, decided by the key when it is known.

    A value heuristic alone would turn a weak Detectron2 model's AP of 0.8 (%) into 80.
    Unknown keys: fractions when every value is within [-1, 1], else shown as they are.
    """
    parts = key.split("/")
    if any(part in _PERCENT_TASKS for part in parts[:-1]) or parts[-1] in _PERCENT_NAMES:
        return 1.0, "%"
    if parts[0] in _FRACTION_PREFIXES or max(abs(float(v)) for v in values) <= 1.0:
        return 100.0, "%"
    return 1.0, key


def nothing_detected(reference: Mapping[str, float]) -> Dict[str, float]:
    """The metrics of a cell where the model detected nothing, keyed like ``reference`` (clean).

    Neither toolkit scores that case: mmdet's ``CocoMetric`` returns no
    metrics ("The testing results of the whole dataset is empty"), Detectron2's
    ``COCOEvaluator`` NaN. It is AP 0, which a strong corruption can cause;
    values meaning "no ground truth in that size range" (-1, NaN) stay.
    """
    return {key: (value if value == -1.0 or math.isnan(value) else 0.0) for key, value in reference.items()}
