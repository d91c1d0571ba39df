"""Run an evaluator over clean + corruption x severity cells; report the results.

A sweep result is plain data (written as JSON as is)::

    {"label": "DGN", "task": "detection", "metric": "coco/bbox_mAP",
     "seed": 0, "clean": {...all metrics...},
     "cells": [{"corruption": "fog", "severity": 3, "metrics": {...}}, ...],
     "summary": {"P": .., "mPC": .., "rPC": ..,
                 "per_corruption": {...}, "per_severity": {...}}}

Several results (GN, DGN, ...) become one :class:`~dgn_plugins.evaluation.compare.report.Comparison`,
rendered by the comparison tools' Markdown/CSV/JSON code.
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Mapping, Optional, Sequence

from .corruptions import check_corruptions, check_severities
from .evaluators import CellEvaluator
from .metrics import (
    display_scale,
    per_corruption_mean,
    per_severity_mean,
    pick_primary_metric,
    robustness_summary,
    task_of_metric,
)

__all__ = ["run_sweep", "summarize_sweep", "comparison_of"]


def run_sweep(evaluator: CellEvaluator, corruptions: Optional[Sequence[str]] = None,
              severities: Optional[Sequence[int]] = None, *, label: str = "model", seed: int = 0,
              metric: Optional[str] = None, log: Callable[[str], None] = print) -> dict:
    """Clean once, then every selected cell; returns the result dict above."""
    corruptions, severities = check_corruptions(corruptions), check_severities(severities)
    start = time.perf_counter()
    clean = evaluator.evaluate(None, 0)
    metric = pick_primary_metric(clean, metric)
    log(f"[{label}] clean: {metric} = {clean[metric]:.4g}")
    cells = []
    for corruption in corruptions:
        for severity in severities:
            metrics = evaluator.evaluate(corruption, severity)
            cells.append({"corruption": corruption, "severity": severity, "metrics": metrics})
            log(f"[{label}] {corruption} {severity}: {metric} = {metrics.get(metric, float('nan')):.4g}")
    result = {"label": label, "task": getattr(evaluator, "task", None) or task_of_metric(metric), "metric": metric,
              "seed": seed, "clean": clean, "cells": cells, "seconds": time.perf_counter() - start}
    result["summary"] = summarize_sweep(result)
    return result


def _grid(result: Mapping) -> Dict[str, Dict[int, float]]:
    grid: Dict[str, Dict[int, float]] = {}
    for cell in result["cells"]:
        grid.setdefault(cell["corruption"], {})[int(cell["severity"])] = float(cell["metrics"][result["metric"]])
    return grid


def summarize_sweep(result: Mapping) -> dict:
    """P / mPC / rPC plus the means per corruption and per severity, of the headline metric."""
    grid = _grid(result)
    summary = robustness_summary(result["clean"][result["metric"]], grid)
    summary["per_corruption"] = per_corruption_mean(grid)
    summary["per_severity"] = {str(k): v for k, v in per_severity_mean(grid).items()}
    return summary


def _names(task: str) -> Dict[str, str]:
    if task == "segmentation":
        return {"P": "clean mIoU", "mPC": "mean corrupted mIoU (mPC)", "rPC": "rPC = mPC / clean (%)"}
    return {"P": "clean AP (P)", "mPC": "mPC", "rPC": "rPC = mPC / P (%)"}


def comparison_of(results: Sequence[Mapping]):
    """One Comparison (first result = baseline) of summaries and every cell."""
    from dgn_plugins.evaluation.compare.report import Comparison

    labels = [r["label"] for r in results]
    metrics = {r["metric"] for r in results}
    if len(metrics) != 1:
        raise ValueError(f"results use different headline metrics {sorted(metrics)}; pass the same --metric")
    metric = metrics.pop()
    scale, unit = display_scale(metric, [r["clean"][metric] for r in results])
    comparison = Comparison(labels=labels, unit=unit)
    names = _names(results[0]["task"])
    summaries = [r["summary"] for r in results]
    comparison.add_section(
        f"{metric}: summary", [names["P"], names["mPC"], names["rPC"]],
        {r["label"]: [s["P"] * scale, s["mPC"] * scale, s["rPC"] * 100.0] for r, s in zip(results, summaries)})
    corruptions = list(summaries[0]["per_corruption"])
    comparison.add_section(
        f"{metric} per corruption (mean over severities)", corruptions,
        {r["label"]: [s["per_corruption"].get(c, float("nan")) * scale for c in corruptions]
         for r, s in zip(results, summaries)})
    severities = list(summaries[0]["per_severity"])
    comparison.add_section(
        f"{metric} per severity (mean over corruptions)", [f"severity {s}" for s in severities],
        {r["label"]: [s["per_severity"].get(k, float("nan")) * scale for k in severities]
         for r, s in zip(results, summaries)})
    grids = [_grid(r) for r in results]
    cells = [(c, s) for c in corruptions for s in sorted(grids[0].get(c, {}))]
    comparison.add_section(
        f"{metric} per cell", [f"{c} {s}" for c, s in cells],
        {r["label"]: [g.get(c, {}).get(s, float("nan")) * scale for c, s in cells] for r, g in zip(results, grids)})
    comparison.notes.append("mPC = mean over the evaluated corruptions and severities; rPC = mPC / clean "
                            "(MMDetection's robustness benchmark). Corruptions: ImageNet-C via imagecorruptions-imaug, "
                            f"seeded per image (seed {results[0]['seed']}).")
    return comparison
