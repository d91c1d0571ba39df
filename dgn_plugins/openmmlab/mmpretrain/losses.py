"""``AugMixJSDLoss`` in mmpretrain's MODELS: a head's ``loss=dict(type='AugMixJSDLoss')``.

mmpretrain's ``ClsHead`` calls its loss as ``loss(cls_score, target,
avg_factor=N, **kwargs)`` with ``N`` the rows of ``cls_score``; here those are
``views x B`` rows for B labels, so the count is checked, not used to average.
"""
from __future__ import annotations

from mmpretrain.registry import MODELS

from ...augmix import AugMixJSDLoss as _AugMixJSDLoss

__all__ = ["AugMixJSDLoss"]


@MODELS.register_module(force=True)
class AugMixJSDLoss(_AugMixJSDLoss):
    """Cross-entropy on the clean view + ``jsd_weight`` (12) x JS consistency, as a head's loss."""

    def forward(self, cls_score, label, weight=None, avg_factor=None, reduction_override=None, **kwargs):
        if weight is not None or reduction_override is not None or kwargs:
            extra = sorted(k for k, v in dict(kwargs, weight=weight, reduction_override=reduction_override).items()
                           if v is not None)
            raise TypeError(f"AugMixJSDLoss takes no {', '.join(extra)}: it averages over the clean view's samples")
        if avg_factor is not None and avg_factor != cls_score.size(0):
            raise ValueError(f"AugMixJSDLoss: avg_factor {avg_factor} is not the {cls_score.size(0)} rows of scores")
        return super().forward(cls_score, label)
