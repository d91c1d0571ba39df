"""``ApplyCorruption``: an ImageNet-C corruption as a data-pipeline step.

Like MMDetection's ``Corrupt`` (mmdet/datasets/transforms/transforms.py), but
registered in MMEngine's root ``TRANSFORMS`` (so MMDetection, MMSegmentation
and any other OpenMMLab pipeline can use it), backed by the numpy-2-compatible
library, and seeded per image: the seed derives from ``(seed, corruption,
severity, image file name)``, so an image is corrupted identically whatever
the worker, batch or run.

Channel order: the corruptions are applied in RGB, the corruption library's
convention (and what the Detectron2 evaluator does), so a colour image loaded
as BGR (mmcv's default) is turned to RGB, corrupted and turned back; both
toolkits give the same corrupted pixels. mmdet's own ``Corrupt`` corrupts the
BGR array as loaded, so the colour-dependent corruptions here (snow, frost,
jpeg_compression; brightness by rounding; the noises draw the same noise in
another channel order) give other images than mmdet's benchmark, while mPC
and rPC are defined the same.
"""
from __future__ import annotations

import os

import numpy as np
from mmcv.transforms import BaseTransform
from mmengine.registry import TRANSFORMS

from .corruptions import CorruptionError, cell_seed, check_corruptions, check_severities, corrupt_image

__all__ = ["ApplyCorruption", "CHANNEL_ORDERS", "check_channel_order"]

#: The channel orders a colour image can be loaded in (mmcv's ``channel_order``).
CHANNEL_ORDERS = ("bgr", "rgb")


def check_channel_order(channel_order: str) -> str:
    """``'bgr'`` or ``'rgb'`` (any case), else :class:`CorruptionError`."""
    order = str(channel_order).lower()
    if order not in CHANNEL_ORDERS:
        raise CorruptionError(f"channel_order must be one of {list(CHANNEL_ORDERS)}, got {channel_order!r}")
    return order


@TRANSFORMS.register_module()
class ApplyCorruption(BaseTransform):
    """Corrupt ``results['img']`` (uint8 HxWx3 or greyscale, as loaded) in place.

    Args:
        corruption: one of the 15 ImageNet-C corruption names.
        severity: 1-5.
        seed: base seed of the cell; each image adds its file name.
        channel_order: the order of a colour image's channels as loaded,
            ``'bgr'`` (mmcv's default) or ``'rgb'``; the corruption runs in
            RGB either way. Greyscale images (H, W) or (H, W, 1) have none.
    """

    def __init__(self, corruption: str, severity: int = 1, seed: int = 0, channel_order: str = "bgr") -> None:
        self.corruption = check_corruptions([corruption])[0]
        self.severity = check_severities([severity])[0]
        self.seed = int(seed)
        self.channel_order = check_channel_order(channel_order)

    def _image_key(self, results: dict) -> str:
        path = results.get("img_path")
        if path:
            return os.path.basename(str(path))
        return str(results.get("sample_idx", ""))

    def transform(self, results: dict) -> dict:
        image = np.asarray(results["img"]).astype(np.uint8)
        seed = cell_seed(self.seed, self.corruption, self.severity, self._image_key(results))
        bgr = self.channel_order == "bgr" and image.ndim == 3 and image.shape[2] == 3
        rgb = np.ascontiguousarray(image[..., ::-1]) if bgr else image
        out = corrupt_image(rgb, self.corruption, self.severity, seed)
        results["img"] = np.ascontiguousarray(out[..., ::-1]) if bgr else out
        return results

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(corruption={self.corruption}, severity={self.severity}, seed={self.seed}, "
                f"channel_order={self.channel_order})")
