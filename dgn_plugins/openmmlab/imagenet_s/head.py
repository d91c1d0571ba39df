"""``ImageNetSFCNHead``: MMSegmentation's ``FCNHead`` with 0.x's ``downsample_label_ratio``.

The ImageNet-S fine-tuning takes its loss at a low resolution: the official
code (LUSSeg/ImageNetSegModel) upsamples the ViT's 14 x 14 logits twice and
nearest-downsamples the 224 x 224 labels to the same 28 x 28; MMSegmentation
0.x's port did it with ``downsample_label_ratio=8`` in its decode heads.
MMSegmentation 1.x dropped the option and always takes the loss at the
label's resolution. With ``downsample_label_ratio=r > 0`` this head
nearest-downsamples the labels by ``r`` first (ids, ignore 1000 included, stay
ids), and the base's loss resizes the logits to them, as 0.x did.
"""
from __future__ import annotations

import torch.nn.functional as F
from mmseg.models.decode_heads import FCNHead
from mmseg.registry import MODELS
from torch import Tensor

__all__ = ["ImageNetSFCNHead"]


@MODELS.register_module()
class ImageNetSFCNHead(FCNHead):
    """``FCNHead`` whose loss sees labels nearest-downsampled by ``downsample_label_ratio`` (0: off)."""

    def __init__(self, *args, downsample_label_ratio: int = 0, **kwargs) -> None:
        if isinstance(downsample_label_ratio, bool) or not isinstance(downsample_label_ratio, int) \
                or downsample_label_ratio < 0:
            raise ValueError(f"downsample_label_ratio must be an integer >= 0 (0: off), got {downsample_label_ratio!r}")
        super().__init__(*args, **kwargs)
        self.downsample_label_ratio = downsample_label_ratio

    def _stack_batch_gt(self, batch_data_samples) -> Tensor:
        labels = super()._stack_batch_gt(batch_data_samples)
        ratio = self.downsample_label_ratio
        if ratio <= 1:
            return labels
        size = (labels.shape[-2] // ratio, labels.shape[-1] // ratio)
        return F.interpolate(labels.float(), size=size, mode="nearest").to(labels.dtype)
