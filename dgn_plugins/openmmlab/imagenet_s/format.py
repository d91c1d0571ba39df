"""The ImageNet-S file conventions, as plain numpy (no toolkit needed).

- Label PNGs are RGB and a pixel's class id is ``R + 256 * G``, because 919
  classes do not fit a uint8 gray map; ``0`` is "others" and ``1000`` marks
  pixels to ignore.
- Images with more than ``1000 * 1000`` pixels are evaluated at a smaller
  size: the longer side becomes 1000 (the official ``inference.py`` of
  LUSSeg/ImageNetSegModel, ``--max_res 1000``; MMSegmentation 0.x's
  ``LoadImageNetSImageFromFile`` did the same), and the arg-max map is then
  brought back to the label's size with nearest-neighbour interpolation.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = [
    "IGNORE_INDEX",
    "OTHERS_INDEX",
    "MAX_RESOLUTION",
    "decode_label_rgb",
    "encode_label_rgb",
    "evaluation_size",
]

#: Label id of pixels that no metric or loss counts.
IGNORE_INDEX = 1000
#: Label id of "others": everything outside the 50/300/919 categories.
OTHERS_INDEX = 0
#: Images with more than MAX_RESOLUTION ** 2 pixels are downsampled.
MAX_RESOLUTION = 1000


def decode_label_rgb(rgb: np.ndarray) -> np.ndarray:
    """Class ids (int32, HxW) of an RGB label array (HxWx3, R first): ``R + 256 * G``."""
    if rgb.ndim != 3 or rgb.shape[2] < 3:
        raise ValueError(
            f"ImageNet-S labels are RGB images (class id = R + 256 * G); got an array of shape {rgb.shape}"
        )
    return rgb[:, :, 0].astype(np.int32) + 256 * rgb[:, :, 1].astype(np.int32)


def encode_label_rgb(label: np.ndarray) -> np.ndarray:
    """RGB uint8 array (HxWx3) holding class ids ``label`` as ``R + 256 * G``."""
    label = np.asarray(label)
    if label.size and (label.min() < 0 or label.max() >= 256 * 256):
        raise ValueError(f"class ids must lie in [0, 65535], got [{label.min()}, {label.max()}]")
    rgb = np.zeros(label.shape + (3,), dtype=np.uint8)
    rgb[:, :, 0] = label % 256
    rgb[:, :, 1] = label // 256
    return rgb


def evaluation_size(height: int, width: int, max_resolution: int = MAX_RESOLUTION) -> Tuple[int, int]:
    """``(height, width)`` at which the benchmark processes an image of this size.

    Unchanged up to ``max_resolution ** 2`` pixels; above, the longer side
    becomes ``max_resolution`` and the shorter one ``int(max_resolution *
    shorter / longer)``, as in the official inference script.
    """
    if max_resolution <= 0 or height * width <= max_resolution * max_resolution:
        return height, width
    if height > width:
        return max_resolution, int(max_resolution * width / height)
    return int(max_resolution * height / width), max_resolution
