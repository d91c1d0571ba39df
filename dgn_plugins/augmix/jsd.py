"""AugMix's Jensen-Shannon consistency loss over a clean view and AugMix views.

As the reference code (google-research/augmix, ``cifar.py``) computes it: with
``p_i = softmax(logits_i)`` and the mixture ``M = mean_i p_i`` (clamped to
``[1e-7, 1]`` before the log, as there),
``JS = mean_i KL(p_i || M)``, each KL summed over classes and averaged over
the batch. The training loss is cross-entropy on the **clean** view only plus
``lambda * JS`` with lambda = 12.

The views arrive stacked along the batch, view by view (all clean images, then
every first AugMix image, ...), which is how a model that sees one batch of
``views * B`` images returns them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["jsd_consistency", "split_views", "AugMixJSDLoss"]


def split_views(logits: torch.Tensor, batch: int, views: int):
    """``views`` tensors of ``batch`` rows from logits stacked view by view; a mismatch is a one-line error."""
    if logits.dim() != 2:
        raise ValueError(f"AugMix JSD takes logits of shape (views * batch, classes), got {tuple(logits.shape)}")
    if logits.size(0) != views * batch:
        raise ValueError(f"AugMix JSD expects {views} views x {batch} samples = {views * batch} rows of logits, "
                         f"got {logits.size(0)}: is the data pipeline's AugMix set to jsd=True?")
    return logits.split(batch)


def jsd_consistency(*logits: torch.Tensor) -> torch.Tensor:
    """Mean KL of each view's softmax to their mixture, batch-averaged (the paper's JS term, before lambda)."""
    if len(logits) < 2:
        raise ValueError(f"a consistency loss needs 2 or more views, got {len(logits)}")
    probs = [F.softmax(view, dim=1) for view in logits]
    log_mixture = torch.clamp(torch.stack(probs).mean(0), 1e-7, 1).log()
    return sum(F.kl_div(log_mixture, p, reduction="batchmean") for p in probs) / len(probs)


class AugMixJSDLoss(nn.Module):
    """Cross-entropy on the clean view plus ``jsd_weight`` x the JS consistency of all views.

    ``forward(logits, target)``: ``logits`` hold ``views * B`` rows (clean first),
    ``target`` the B labels (class indices, or soft scores of shape (B, classes)).
    """

    def __init__(self, views: int = 3, jsd_weight: float = 12.0, loss_weight: float = 1.0):
        super().__init__()
        if isinstance(views, bool) or not isinstance(views, int) or views < 2:
            raise ValueError(f"AugMixJSDLoss views must be an integer >= 2 (clean + AugMix views), got {views!r}")
        for name, value in (("jsd_weight", jsd_weight), ("loss_weight", loss_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"AugMixJSDLoss {name} must be a number >= 0, got {value!r}")
        self.views, self.jsd_weight, self.loss_weight = views, float(jsd_weight), float(loss_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        batch = target.size(0)
        chunks = split_views(logits, batch, self.views)
        clean = chunks[0]
        if target.dim() == 2:  # soft scores (mixup-style targets)
            ce = -(target * F.log_softmax(clean, dim=1)).sum(1).mean()
        else:
            ce = F.cross_entropy(clean, target)
        return self.loss_weight * (ce + self.jsd_weight * jsd_consistency(*chunks))

    def extra_repr(self) -> str:
        return f"views={self.views}, jsd_weight={self.jsd_weight:g}, loss_weight={self.loss_weight:g}"
