"""``ImageNetSDataset``: the ImageNet-S semantic segmentation splits for MMSegmentation 1.x.

Layout (what the official ``datapreparation`` scripts and annotation zips
produce), one folder per WordNet id in every split::

    data/ImageNetS/ImageNetS50/
        train-semi/n01443537/n01443537_16309.JPEG
        train-semi-segmentation/n01443537/n01443537_16309.png
        validation/n01443537/ILSVRC2012_val_00004677.JPEG
        validation-segmentation/n01443537/ILSVRC2012_val_00004677.png

Select a split with ``data_prefix=dict(img_path='validation',
seg_map_path='validation-segmentation')``. Labels are RGB PNGs (load them
with ``LoadImageNetSAnnotations``); ``ignore_index`` is 1000 and class 0
("others") is a real class, so ``reduce_zero_label`` stays False.
"""
from __future__ import annotations

import os
from typing import Optional

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from .classes import classes_of_subset
from .format import IGNORE_INDEX

__all__ = ["ImageNetSDataset"]


@DATASETS.register_module()
class ImageNetSDataset(BaseSegDataset):
    """ImageNet-S{50,300,919}: 51, 301 or 920 classes ("others" first).

    Args:
        subset: 50, 300 or 919; picks the class names. ``None`` requires
            ``metainfo=dict(classes=...)`` (a data set in the same format with
            other classes, such as the synthetic demo set).
        generate_if_missing: when ``data_root`` does not exist, write the
            synthetic demo set there first (:mod:`dgn_plugins.data.synthetic_seg`).
            Only for demo configs: the real data cannot be generated.
        img_suffix, seg_map_suffix: ImageNet's ``.JPEG`` and ``.png``.
        ignore_index: 1000, the benchmark's "ignore" id.
        **kwargs: as for MMSegmentation's ``BaseSegDataset``.
    """

    # Left empty on purpose: BaseSegDataset derives a label_map (old -> new
    # ids, dropped classes -> 255) from any difference between METAINFO's
    # classes and the given ones, and 255 is a class id here.
    METAINFO: dict = dict()

    def __init__(
        self,
        subset: Optional[int] = 919,
        generate_if_missing: bool = False,
        img_suffix: str = ".JPEG",
        seg_map_suffix: str = ".png",
        ignore_index: int = IGNORE_INDEX,
        reduce_zero_label: bool = False,
        metainfo: Optional[dict] = None,
        **kwargs,
    ) -> None:
        if reduce_zero_label:
            raise ValueError("ImageNet-S labels class 0 as 'others', a real class: use reduce_zero_label=False")
        metainfo = dict(metainfo or {})
        if subset is not None:
            subset_classes = classes_of_subset(subset)
            classes = metainfo.setdefault("classes", subset_classes)
            if len(classes) != len(subset_classes):
                raise ValueError(
                    f"ImageNet-S{subset} has {len(subset_classes)} classes ('others' included), "
                    f"metainfo gives {len(classes)}"
                )
        elif "classes" not in metainfo:
            raise ValueError("ImageNetSDataset needs subset=50/300/919 or metainfo=dict(classes=...)")
        if len(metainfo["classes"]) > ignore_index:
            raise ValueError(f"{len(metainfo['classes'])} classes would reach ignore_index={ignore_index}")
        self.subset = subset
        self.generate_if_missing = generate_if_missing
        if generate_if_missing:
            self._generate_if_missing(kwargs.get("data_root"), metainfo["classes"])
        super().__init__(
            img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix,
            metainfo=metainfo,
            ignore_index=ignore_index,
            reduce_zero_label=False,
            **kwargs,
        )

    @staticmethod
    def _generate_if_missing(data_root: Optional[str], classes) -> None:
        from ...data import synthetic_seg

        if not data_root:
            raise ValueError("generate_if_missing=True needs data_root (where to write the synthetic set)")
        if tuple(classes) != synthetic_seg.CLASSES:
            raise ValueError(
                f"generate_if_missing writes the synthetic shapes set, whose classes are "
                f"{synthetic_seg.CLASSES}; the config gives {tuple(classes)}"
            )
        if not os.path.isdir(data_root):
            synthetic_seg.ensure_synthetic_seg(data_root)
