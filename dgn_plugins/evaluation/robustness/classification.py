"""Corruption error of classifiers, under the names the papers report.

From a sweep's top-1 accuracies (%), with ``E`` the error (100 - accuracy):

- **mean corruption error** (the CIFAR-10/100-C convention, e.g. AugMix's
  Table 1): the mean of ``E`` over every evaluated corruption x severity;
- **mCE** (ImageNet-C, Hendrycks & Dietterich 2019): per corruption
  ``CE_c = mean_s E_{c,s} / mean_s E^AlexNet_{c,s}``, averaged over the
  corruptions, in %; AlexNet's published per-corruption errors below;
- **relative mCE**: ``(mean_s E_{c,s} - E_clean) / (mean_s E^AlexNet_{c,s} -
  E^AlexNet_clean)``, averaged over the corruptions, in %.

mCE and relative mCE need all five severities of a corruption; they are
ImageNet-C's numbers (AlexNet's errors are ImageNet's), and a CIFAR model's
"mCE" would divide by errors of another data set: the report labels them.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping

import numpy as np

__all__ = ["ALEXNET_ERRORS", "ALEXNET_CLEAN_ERROR", "mean_corruption_error", "imagenet_c_mce", "relative_mce",
           "classification_summary"]

#: AlexNet's ImageNet-C top-1 error per corruption, the mean over severities 1-5 (fractions), as published with
#: the benchmark (hendrycks/robustness; the values AugMix's ``imagenet.py`` divides by).
ALEXNET_ERRORS = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948, "zoom_blur": 0.798360,
    "snow": 0.866816, "frost": 0.826572, "fog": 0.819324, "brightness": 0.564592,
    "contrast": 0.853204, "elastic_transform": 0.646056, "pixelate": 0.717840, "jpeg_compression": 0.606500,
}
#: AlexNet's clean ImageNet top-1 error (Hendrycks & Dietterich 2019, Appendix C), for the relative mCE.
ALEXNET_CLEAN_ERROR = 0.4348

Cells = Mapping[str, Mapping[int, float]]


def _errors(accuracies: Cells) -> Dict[str, Dict[int, float]]:
    return {c: {int(s): 100.0 - float(a) for s, a in by.items()} for c, by in accuracies.items()}


def mean_corruption_error(accuracies: Cells) -> float:
    """Mean top-1 error (%) over every evaluated (corruption, severity) cell."""
    values = [e for by in _errors(accuracies).values() for e in by.values()]
    if not values:
        raise ValueError("no corrupted cells to average")
    return float(np.mean(values))


def _per_corruption_error(accuracies: Cells) -> Dict[str, float]:
    """Mean error over severities 1-5 of each corruption; anything else is refused in one line."""
    errors = _errors(accuracies)
    unknown = sorted(set(errors) - set(ALEXNET_ERRORS))
    if unknown:
        raise ValueError(f"mCE is defined on ImageNet-C's 15 corruptions; {', '.join(unknown)} is not one of them")
    partial = sorted(c for c, by in errors.items() if sorted(by) != [1, 2, 3, 4, 5])
    if partial:
        raise ValueError(f"mCE needs severities 1-5 of each corruption; {', '.join(partial)} lacks some")
    return {c: float(np.mean(list(by.values()))) for c, by in errors.items()}


def imagenet_c_mce(accuracies: Cells) -> Dict[str, float]:
    """``{"mCE": .., "<corruption>": CE_c, ...}`` in %, AlexNet-normalised."""
    per = {c: 100.0 * e / (100.0 * ALEXNET_ERRORS[c]) for c, e in _per_corruption_error(accuracies).items()}
    return dict(mCE=float(np.mean(list(per.values()))), **per)


def relative_mce(clean_accuracy: float, accuracies: Cells) -> Dict[str, float]:
    """``{"relative mCE": .., "<corruption>": relative CE_c, ...}`` in %, AlexNet-normalised."""
    clean_error = 100.0 - float(clean_accuracy)
    base = 100.0 * ALEXNET_CLEAN_ERROR
    per = {c: 100.0 * (e - clean_error) / (100.0 * ALEXNET_ERRORS[c] - base)
           for c, e in _per_corruption_error(accuracies).items()}
    return {"relative mCE": float(np.mean(list(per.values()))), **per}


def classification_summary(clean_accuracy: float, accuracies: Cells) -> Dict[str, float]:
    """Clean error, mean corruption error, and (when all five severities are there) mCE and relative mCE."""
    summary = {"clean error": 100.0 - float(clean_accuracy),
               "mean corruption error": mean_corruption_error(accuracies)}
    try:
        summary["mCE (ImageNet-C, AlexNet = 100)"] = imagenet_c_mce(accuracies)["mCE"]
        summary["relative mCE (ImageNet-C, AlexNet = 100)"] = relative_mce(clean_accuracy, accuracies)["relative mCE"]
    except ValueError:  # a subset of severities: no mCE, by definition
        summary["mCE (ImageNet-C, AlexNet = 100)"] = math.nan
        summary["relative mCE (ImageNet-C, AlexNet = 100)"] = math.nan
    return summary
