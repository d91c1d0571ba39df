"""The generated shapes data set under Detectron2 names, for the demo configs.

``dgn_synthetic_coco_train`` / ``dgn_synthetic_coco_val`` are registered with
``register_coco_instances`` (so ``COCOEvaluator`` works as on COCO) over
:mod:`dgn_plugins.data.synthetic_coco`, generated on first use under
``$DGN_SYNTHETIC_COCO`` (default ``data/synthetic_coco``, the folder the
OpenMMLab demo configs use too).
"""
from __future__ import annotations

import json
import os
from dataclasses import fields
from typing import Iterable, Optional

from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances

from ..data.synthetic_coco import CLASSES, SyntheticCocoSpec, annotation_path, ensure_synthetic_coco

__all__ = ["SYNTHETIC_COCO_PREFIX", "default_root", "register_synthetic_coco", "register_datasets_of"]

SYNTHETIC_COCO_PREFIX = "dgn_synthetic_coco"


def default_root() -> str:
    return os.environ.get("DGN_SYNTHETIC_COCO", os.path.join("data", "synthetic_coco"))


def _spec_at(root: str) -> Optional[SyntheticCocoSpec]:
    """The spec of the data set already generated at ``root``, if any."""
    try:
        with open(os.path.join(root, "spec.json")) as f:
            values = json.load(f)
        return SyntheticCocoSpec(**{f.name: values[f.name] for f in fields(SyntheticCocoSpec)})
    except (OSError, ValueError, KeyError, TypeError):
        return None


def register_synthetic_coco(root: Optional[str] = None, spec: Optional[SyntheticCocoSpec] = None) -> str:
    """Register the splits of the data set at ``root``; returns the root.

    Without ``spec``, a data set already generated there is used as it is and
    the default one is generated otherwise. Safe to call from every rank and
    more than once (names already registered are kept).
    """
    root = root or default_root()
    root = ensure_synthetic_coco(root, spec or _spec_at(root))
    for split in ("train", "val"):
        name = f"{SYNTHETIC_COCO_PREFIX}_{split}"
        if name in DatasetCatalog.list():
            continue
        metadata = {"thing_classes": list(CLASSES)}
        register_coco_instances(name, metadata, annotation_path(root, split), os.path.join(root, split))
    return root


def register_datasets_of(names: Iterable[str]) -> None:
    """Register the generated data set if any of ``names`` is one of its splits."""
    if any(name.startswith(SYNTHETIC_COCO_PREFIX) for name in names):
        register_synthetic_coco()
