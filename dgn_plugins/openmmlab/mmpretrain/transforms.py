"""``AugMix`` in mmpretrain's TRANSFORMS: :mod:`dgn_plugins.augmix` on ``results['img']``.

Its draws come from a generator seeded from numpy's global state, which
mmengine seeds (``randomness=dict(seed=...)``, and per dataloader worker), as
mmpretrain's own random transforms use it: a seeded run repeats its images.
The paper's operations treat the three channels alike, so images loaded as
BGR (mmcv's order) get the AugMix they would get as RGB; only ``all_ops``'s
``color`` and ``contrast`` (through a grey image) weigh the channels as RGB.
"""
from __future__ import annotations

import numpy as np
from mmcv.transforms import BaseTransform
from mmpretrain.registry import TRANSFORMS

from ...augmix import AugMixParams, augment_and_mix, augmix_views

__all__ = ["AugMix"]


@TRANSFORMS.register_module(force=True)
class AugMix(BaseTransform):
    """AugMix (Hendrycks et al. 2020) with the paper's defaults.

    ``jsd=False``: ``img`` becomes one AugMix image. ``jsd=True``: ``img``
    becomes the list ``[clean, AugMix, AugMix]`` (``PackInputs`` packs a list
    of views), for :class:`MultiViewClsDataPreprocessor` and ``AugMixJSDLoss``.
    Images come out float32 in [0, 255] (uint8 in), normalised later by the data
    preprocessor as usual. Put it after the crop and flip, before ``PackInputs``.
    """

    def __init__(self, severity: int = 3, width: int = 3, depth: int = -1, alpha: float = 1.0,
                 all_ops: bool = False, jsd: bool = False):
        self.params = AugMixParams(severity=severity, width=width, depth=depth, alpha=alpha, all_ops=all_ops)
        if not isinstance(jsd, bool):
            raise TypeError(f"AugMix jsd must be True or False, got {jsd!r}")
        self.jsd = jsd

    def transform(self, results: dict) -> dict:
        rng = np.random.default_rng(np.random.randint(2**31))  # numpy's global state, seeded by mmengine
        image = results["img"]
        results["img"] = augmix_views(image, rng, self.params) if self.jsd else augment_and_mix(image, rng, self.params)
        return results

    def __repr__(self) -> str:
        p = self.params
        return (f"{type(self).__name__}(severity={p.severity}, width={p.width}, depth={p.depth}, alpha={p.alpha:g}, "
                f"all_ops={p.all_ops}, jsd={self.jsd})")
