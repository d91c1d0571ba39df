"""``SyntheticCocoDataset``: mmdet's ``CocoDataset`` over the generated shapes set.

It generates the data set (:mod:`dgn_plugins.data.synthetic_coco`) under
``data_root`` on first use, so the demo configs run on a fresh machine with
no download. Registered in mmdet's ``DATASETS``; configs load it with
``custom_imports=dict(imports=['dgn_plugins.openmmlab.synthetic_coco_dataset'])``,
which keeps ``import dgn_plugins`` free of an mmdet import.
"""
from __future__ import annotations

from typing import Optional

from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS

from ..data.synthetic_coco import METAINFO, SyntheticCocoSpec, ensure_synthetic_coco

__all__ = ["SyntheticCocoDataset"]


@DATASETS.register_module(force=True)
class SyntheticCocoDataset(CocoDataset):
    """Args: as ``CocoDataset``, plus ``generator``: the
    :class:`SyntheticCocoSpec` fields (sizes, counts, seed) of the data set."""

    METAINFO = METAINFO

    def __init__(self, *args, data_root: str = "data/synthetic_coco/", generator: Optional[dict] = None, **kwargs):
        ensure_synthetic_coco(data_root, SyntheticCocoSpec(**(generator or {})))
        super().__init__(*args, data_root=data_root, **kwargs)
