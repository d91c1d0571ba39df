"""``MultiViewClsDataPreprocessor``: several views per image, stacked along the batch, view by view.

With ``AugMix(jsd=True)`` each sample's ``inputs`` is a list of views, and the
collated batch a list with one batch per view. mmpretrain's
``ClsDataPreprocessor`` takes one tensor or one list of images. This one runs
it on each view and concatenates them, so the classifier sees one batch of
``views x B`` images, clean first, and ``AugMixJSDLoss`` splits the scores
again. The labels are the B samples' own. Single-view batches (validation,
testing) pass through the parent unchanged.
"""
from __future__ import annotations

import torch
from mmpretrain.models.utils.data_preprocessor import ClsDataPreprocessor
from mmpretrain.registry import MODELS

__all__ = ["MultiViewClsDataPreprocessor"]


def _is_multi_view(inputs) -> bool:
    """A list of per-view batches: tensors (default_collate) or lists of images (pseudo_collate)."""
    if not isinstance(inputs, (list, tuple)) or not inputs:
        return False
    first = inputs[0]
    return (isinstance(first, torch.Tensor) and first.dim() == 4) or isinstance(first, (list, tuple))


@MODELS.register_module(force=True)
class MultiViewClsDataPreprocessor(ClsDataPreprocessor):
    """``ClsDataPreprocessor`` that also takes several views per sample (no batch augments with them)."""

    def forward(self, data: dict, training: bool = False) -> dict:
        inputs = data["inputs"]
        if not _is_multi_view(inputs):
            return super().forward(data, training)
        if self.batch_augments is not None:
            raise ValueError("MultiViewClsDataPreprocessor: batch augments (mixup, cutmix) would mix each view "
                             "differently; use them without multi-view inputs")
        views = [super(MultiViewClsDataPreprocessor, self).forward(dict(data, inputs=view), training)
                 for view in inputs]
        return {"inputs": torch.cat([view["inputs"] for view in views]), "data_samples": views[0]["data_samples"]}
