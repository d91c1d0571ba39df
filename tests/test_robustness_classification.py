"""Corruption error of classifiers (mean CE, ImageNet-C mCE and relative mCE) and the over-seeds comparison."""
import math

import numpy as np
import pytest

from dgn_plugins.evaluation.robustness.classification import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_ERRORS,
    classification_summary,
    imagenet_c_mce,
    mean_corruption_error,
    relative_mce,
)
from dgn_plugins.evaluation.robustness.sweep import comparison_of, comparison_over_checkpoints, summarize_sweep

#: top-1 accuracies (%) of a made-up model: fog 1-5 and snow 1-5
CELLS = {"fog": {1: 80.0, 2: 70.0, 3: 60.0, 4: 50.0, 5: 40.0}, "snow": {1: 90.0, 2: 85.0, 3: 80.0, 4: 75.0, 5: 70.0}}


def test_mean_corruption_error_by_hand():
    # errors: fog 20..60 (mean 40), snow 10..30 (mean 20): 30 over the ten cells
    assert mean_corruption_error(CELLS) == pytest.approx(30.0, abs=1e-12)
    assert mean_corruption_error({"fog": {3: 61.5}}) == pytest.approx(38.5, abs=1e-12)


def test_alexnet_table_is_the_published_one():
    assert len(ALEXNET_ERRORS) == 15 and ALEXNET_ERRORS["gaussian_noise"] == 0.886428
    assert ALEXNET_ERRORS["jpeg_compression"] == 0.606500 and ALEXNET_CLEAN_ERROR == 0.4348


def test_mce_and_relative_mce_by_hand():
    ce = imagenet_c_mce(CELLS)
    fog, snow = 100 * 40.0 / (100 * 0.819324), 100 * 20.0 / (100 * 0.866816)
    assert ce["fog"] == pytest.approx(fog, rel=1e-12) and ce["snow"] == pytest.approx(snow, rel=1e-12)
    assert ce["mCE"] == pytest.approx((fog + snow) / 2, rel=1e-12)
    rel = relative_mce(92.0, CELLS)  # clean error 8
    fog_r = 100 * (40.0 - 8.0) / (81.9324 - 43.48)
    snow_r = 100 * (20.0 - 8.0) / (86.6816 - 43.48)
    assert rel["relative mCE"] == pytest.approx((fog_r + snow_r) / 2, rel=1e-12)


@pytest.mark.parametrize("cells, message", [
    ({"fog": {1: 50.0, 3: 50.0}}, "needs severities 1-5 of each corruption; fog lacks some"),
    ({"speckle_noise": {s: 50.0 for s in range(1, 6)}}, "speckle_noise is not one of them"),
])
def test_mce_refuses_what_it_is_not_defined_on(cells, message):
    with pytest.raises(ValueError, match=message):
        imagenet_c_mce(cells)


def test_summary_has_no_mce_without_all_severities():
    full = classification_summary(92.0, CELLS)
    assert full["clean error"] == pytest.approx(8.0) and full["mean corruption error"] == pytest.approx(30.0)
    assert math.isfinite(full["mCE (ImageNet-C, AlexNet = 100)"])
    part = classification_summary(92.0, {"fog": {3: 60.0}})
    assert math.isnan(part["mCE (ImageNet-C, AlexNet = 100)"]) and part["mean corruption error"] == pytest.approx(40.0)


def _result(label, clean, shift):
    cells = [{"corruption": c, "severity": s, "metrics": {"accuracy/top1": a + shift}}
             for c, by in CELLS.items() for s, a in by.items()]
    result = {"label": label, "task": "classification", "metric": "accuracy/top1", "seed": 0,
              "clean": {"accuracy/top1": clean}, "cells": cells}
    result["summary"] = summarize_sweep(result)
    return result


def test_one_comparison_prints_each_metric_under_its_name():
    from dgn_plugins.evaluation.compare.report import render_markdown

    text = render_markdown(comparison_of([_result("GN", 92.0, 0.0), _result("DGN", 93.0, 1.0)]))
    assert "| mean corruption error | 30.00 | 29.00 | -1.00 |" in text
    assert "mCE (ImageNet-C, AlexNet = 100)" in text and "relative mCE (ImageNet-C, AlexNet = 100)" in text
    assert "| clean error | 8.00 | 7.00 | -1.00 |" in text


def test_over_checkpoints_means_and_paired_cis():
    from scipy import stats

    from dgn_plugins.evaluation.compare.report import comparison_to_dict, render_markdown

    shifts = [(0.0, 1.0), (0.5, 0.25), (-1.0, 2.0)]  # per seed: GN's and DGN's accuracy shifts
    runs = [[_result("GN", 92.0 + g, g), _result("DGN", 92.0 + d, d)] for g, d in shifts]
    comparison = comparison_over_checkpoints(runs)
    section = next(s for s in comparison.sections if s.title.startswith("corruption error"))
    row = section.metrics.index("mean corruption error")
    gn = [30.0 - g for g, _ in shifts]
    dgn = [30.0 - d for _, d in shifts]
    assert section.values["GN"][row] == pytest.approx(np.mean(gn)) and section.values["DGN"][row] == pytest.approx(np.mean(dgn))
    diffs = np.subtract(dgn, gn)
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / math.sqrt(3)
    assert section.delta_ci["DGN"][row] == pytest.approx(half, rel=1e-12)
    text = render_markdown(comparison)
    assert f"| mean corruption error | {np.mean(gn):.2f} | {np.mean(dgn):.2f} | {diffs.mean():+.2f} ± {half:.2f} |" in text
    assert "(mean of 3 checkpoints)" in text and "95% CI (t) over 3 checkpoints" in text
    as_dict = comparison_to_dict(comparison)
    rows = [r for s in as_dict["sections"] if s["title"].startswith("corruption error") for r in s["rows"]]
    assert rows[row]["delta_ci95"]["DGN"] == pytest.approx(half, rel=1e-12)
