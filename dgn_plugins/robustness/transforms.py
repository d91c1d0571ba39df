"""``ApplyCorruption``: an ImageNet-C corruption as a data-pipeline step.

Like MMDetection's ``Corrupt`` (mmdet/datasets/transforms/transforms.py), but
registered in MMEngine's root ``TRANSFORMS`` (so MMDetection, MMSegmentation
and any other OpenMMLab pipeline can use it), backed by the numpy-2-compatible
library, and seeded per image: the seed derives from ``(seed, corruption,
severity, image file name)``, so an image is corrupted identically whatever
the worker, batch or run.
"""
from __future__ import annotations

import os

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.registry import TRANSFORMS

from .corruptions import cell_seed, check_corruptions, check_severities, corrupt_image

__all__ = ["ApplyCorruption"]


@TRANSFORMS.register_module()
class ApplyCorruption(BaseTransform):
    """Corrupt ``results['img']`` (uint8 HxWx3, as loaded) in place.

    Args:
        corruption: one of the 15 ImageNet-C corruption names.
        severity: 1-5.
        seed: base seed of the cell; each image adds its file name.
    """

    def __init__(self, corruption: str, severity: int = 1, seed: int = 0) -> None:
        self.corruption = check_corruptions([corruption])[0]
        self.severity = check_severities([severity])[0]
        self.seed = int(seed)

    def _image_key(self, results: dict) -> str:
        path = results.get("img_path")
        if path:
            return os.path.basename(str(path))
        return str(results.get("sample_idx", ""))

    def transform(self, results: dict) -> dict:
        image = np.asarray(results["img"])
        seed = cell_seed(self.seed, self.corruption, self.severity, self._image_key(results))
        results["img"] = corrupt_image(image.astype(np.uint8), self.corruption, self.severity, seed)
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(corruption={self.corruption}, severity={self.severity}, seed={self.seed})"
