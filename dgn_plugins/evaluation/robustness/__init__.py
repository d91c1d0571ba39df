"""Robustness to corruptions (ImageNet-C protocol) for models of any toolkit.

``corruptions`` seeds the 15 ImageNet-C corruptions; ``metrics`` turns a
sweep's cells into mPC / rPC; ``sweep`` runs an evaluator over the cells;
``openmmlab`` is the MMDetection/MMSegmentation evaluator (and the
``ApplyCorruption`` transform). Toolkit modules are imported on demand.
"""
from .corruptions import CORRUPTIONS, SEVERITIES, CorruptionError, check_corruptions, check_severities, corrupt_image

__all__ = ["CORRUPTIONS", "SEVERITIES", "CorruptionError", "check_corruptions", "check_severities", "corrupt_image"]
