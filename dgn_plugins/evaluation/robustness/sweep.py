"""Run an evaluator over clean + corruption x severity cells; report the results.

A sweep result is plain data (written as JSON as is)::

    {"label": "DGN", "task": "detection", "metric": "coco/bbox_mAP",
     "seed": 0, "clean": {...all metrics...},
     "cells": [{"corruption": "fog", "severity": 3, "metrics": {...}}, ...],
     "summary": {"P": .., "mPC": .., "rPC": ..,
                 "per_corruption": {...}, "per_severity": {...}}}

Classifiers' summaries add ``"classification"``: clean error, the mean
corruption error, ImageNet-C's mCE and relative mCE (:mod:`.classification`).

Several results (GN, DGN, ...) become one :class:`~dgn_plugins.evaluation.compare.report.Comparison`,
rendered by the comparison tools' Markdown/CSV/JSON code; several checkpoints
per model (seeds) become one with the means and the paired differences' 95%
CIs (:func:`comparison_over_checkpoints`).
"""
from __future__ import annotations

import time
from typing import Callable, Dict, Mapping, Optional, Sequence

from .classification import classification_summary
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
from .stats import paired_ci

__all__ = ["run_sweep", "summarize_sweep", "comparison_of", "comparison_over_checkpoints"]


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
    if result.get("task") == "classification":
        summary["classification"] = classification_summary(result["clean"][result["metric"]], grid)
    return summary


def _names(task: str) -> Dict[str, str]:
    if task == "classification":
        return {"P": "clean top-1 accuracy", "mPC": "mean corrupted top-1 accuracy", "rPC": "rPC = mPC / clean (%)"}
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
    if results[0]["task"] == "classification":
        rows = list(summaries[0]["classification"])
        comparison.add_section("corruption error (top-1 error, %; lower is better)", rows,
                               {r["label"]: [s["classification"][k] for k in rows] for r, s in zip(results, summaries)})
        comparison.notes.append("mean corruption error: over every evaluated corruption x severity (the CIFAR-C "
                                "convention); mCE and relative mCE: ImageNet-C's, each corruption's error over "
                                "severities 1-5 divided by AlexNet's published one (meaningful for ImageNet models "
                                "only; n/a without all five severities).")
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


def comparison_over_checkpoints(runs: Sequence[Sequence[Mapping]]):
    """``runs[i]``: the results of every model's i-th checkpoint (same models, same order).

    Values are the means over checkpoints; each delta carries the paired
    difference's 95% CI (t, checkpoint i of a model paired with checkpoint i of
    the baseline: train them on the same seeds).
    """
    from dgn_plugins.evaluation.compare.report import Comparison

    per = [comparison_of(results) for results in runs]
    first = per[0]
    combined = Comparison(labels=first.labels, unit=first.unit, notes=list(first.notes))
    for k, section in enumerate(first.sections):
        mean = {label: [sum(p.sections[k].values[label][m] for p in per) / len(per) for m in range(len(section.metrics))]
                for label in first.labels}
        new = combined.add_section(f"{section.title} (mean of {len(per)} checkpoints)", section.metrics, mean)
        new.delta_ci = {label: [paired_ci([p.sections[k].values[first.baseline][m] for p in per],
                                          [p.sections[k].values[label][m] for p in per]).half_width
                                for m in range(len(section.metrics))] for label in first.labels[1:]}
    combined.notes.append(f"Δ ± h: the paired difference to {first.baseline} and its 95% CI (t) over "
                          f"{len(per)} checkpoints, the i-th of each model paired (n/a: no interval, e.g. one pair).")
    return combined
