"""``ImageNetSIoUMetric``: MMSegmentation's IoU plus the ImageNet-S evaluator's mean.

Both means come from the same per-class intersection and union areas
(``IoUMetric.intersect_and_union``, pixels labelled 1000 dropped):

- ``mIoU`` (MMSegmentation): ``nanmean(I / U)``, so a class that is neither
  in the labels nor in the predictions does not count;
- ``mIoU_official`` (LUSSeg/ImageNet-S ``evaluator.py``): ``mean(I / (U +
  1e-10))`` over every class, "others" included, absent classes as 0. This is
  the number the benchmark reports.

Predictions of downsampled large images (see ``LoadImageNetSImageFromFile``)
are brought to the label's size by nearest neighbour before counting, as the
official inference does.
"""
from __future__ import annotations

import os.path as osp
from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from mmengine.utils import mkdir_or_exist
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS
from PIL import Image

from .format import IGNORE_INDEX, encode_label_rgb

__all__ = ["ImageNetSIoUMetric", "official_mean_iou", "resize_label_nearest"]

#: The official evaluator's guard against 0 / 0.
OFFICIAL_EPS = 1e-10


def official_mean_iou(total_area_intersect, total_area_union) -> float:
    """The ImageNet-S evaluator's mIoU in percent: every class counts, absent ones as 0."""
    intersect = torch.as_tensor(total_area_intersect, dtype=torch.float64)
    union = torch.as_tensor(total_area_union, dtype=torch.float64)
    return float((intersect / (union + OFFICIAL_EPS)).mean() * 100)


def resize_label_nearest(label: torch.Tensor, size) -> torch.Tensor:
    """An (H, W) id map at ``size`` by nearest neighbour (the official up-sampling)."""
    size = tuple(int(s) for s in size)
    if tuple(label.shape) == size:
        return label
    resized = F.interpolate(label[None, None].float(), size=size, mode="nearest")
    return resized[0, 0].to(label.dtype)


@METRICS.register_module()
class ImageNetSIoUMetric(IoUMetric):
    """IoU for ImageNet-S: ``ignore_index`` 1000, both conventions of the mean.

    Reports ``aAcc``, ``mIoU``, ``mAcc`` (MMSegmentation) and
    ``mIoU_official`` (the ImageNet-S evaluator), in percent. With
    ``output_dir`` the predictions are written as the benchmark wants them:
    RGB PNGs (``R + 256 * G``) at the label's size, in one folder per class
    folder of the input (``<output_dir>/n01443537/<name>.png``).

    Args:
        ignore_index: label id left out of every count (1000).
        **kwargs: as for MMSegmentation's ``IoUMetric``.
    """

    def __init__(self, ignore_index: int = IGNORE_INDEX, **kwargs) -> None:
        super().__init__(ignore_index=ignore_index, **kwargs)

    def process(self, data_batch: dict, data_samples: Sequence[dict]) -> None:
        num_classes = len(self.dataset_meta["classes"])
        for data_sample in data_samples:
            pred_label = data_sample["pred_sem_seg"]["data"][0]
            label = None
            if not self.format_only:
                label = data_sample["gt_sem_seg"]["data"][0].to(pred_label)
                pred_at_label = resize_label_nearest(pred_label, label.shape)
                self.results.append(self.intersect_and_union(pred_at_label, label, num_classes, self.ignore_index))
            if self.output_dir is not None:
                self._save_prediction(pred_label, label, data_sample)

    def _save_prediction(self, pred_label: torch.Tensor, label, data_sample: dict) -> None:
        if label is not None:
            size = label.shape
        else:  # test split: the size on disk, when the pipeline packed it
            size = data_sample.get("original_shape", pred_label.shape)
        pred = resize_label_nearest(pred_label, size).cpu().numpy()
        img_path = data_sample["img_path"]
        class_folder = osp.basename(osp.dirname(img_path))
        folder = osp.join(self.output_dir, class_folder)
        mkdir_or_exist(folder)
        stem = osp.splitext(osp.basename(img_path))[0]
        Image.fromarray(encode_label_rgb(pred.astype(np.int64))).save(osp.join(folder, f"{stem}.png"))

    def compute_metrics(self, results: list) -> Dict[str, float]:
        metrics = super().compute_metrics(results)
        if self.format_only:
            return metrics
        total_area_intersect = sum(result[0] for result in results)
        total_area_union = sum(result[1] for result in results)
        metrics["mIoU_official"] = round(official_mean_iou(total_area_intersect, total_area_union), 2)
        return metrics
