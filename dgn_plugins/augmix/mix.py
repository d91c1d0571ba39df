"""One AugMix image: ``width`` chains of 1-3 random operations, mixed, then mixed with the original.

As the reference code's ``aug()`` (google-research/augmix, ``cifar.py``): chain
weights ``w ~ Dirichlet(alpha, ..., alpha)``, a skip weight ``m ~ Beta(alpha,
alpha)``, and ``(1 - m) * x + m * sum_i w_i * chain_i(x)``. The reference code
mixes after its affine ``ToTensor + Normalize``; the weights sum to one, so
mixing the pixel values first is the same image, and the caller normalises as
it always does. The result is therefore float32 in the input's range
``[0, 255]`` (it is not rounded back to uint8: that would change the mixture).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np
from PIL import Image

from .ops import ALL_OPS, OPS

__all__ = ["AugMixParams", "augment_and_mix", "augment_batch", "augmix_views"]


@dataclass(frozen=True)
class AugMixParams:
    """The paper's settings: severity 3, width 3, depth 1-3 at random (``depth=-1``), alpha 1."""

    severity: int = 3
    width: int = 3
    depth: int = -1
    alpha: float = 1.0
    all_ops: bool = False

    def __post_init__(self):
        if isinstance(self.severity, bool) or not isinstance(self.severity, int) or not 1 <= self.severity <= 10:
            raise ValueError(f"AugMix severity must be an integer in 1-10, got {self.severity!r}")
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
            raise ValueError(f"AugMix width must be an integer >= 1, got {self.width!r}")
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or not (self.depth == -1 or self.depth >= 1):
            raise ValueError(f"AugMix depth must be -1 (1-3 at random) or an integer >= 1, got {self.depth!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ValueError(f"AugMix alpha must be a number > 0, got {self.alpha!r}")

    @property
    def ops(self):
        return ALL_OPS if self.all_ops else OPS


def _check_image(image) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = image.dtype if isinstance(image, np.ndarray) else type(image).__name__
        raise TypeError(f"AugMix takes a uint8 numpy image (H, W) or (H, W, 1|3), got {kind}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise ValueError(f"AugMix takes a uint8 image of shape (H, W) or (H, W, 1|3), got shape {image.shape}")
    return image


def _to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)


def _to_array(image: Image.Image, like: np.ndarray) -> np.ndarray:
    return np.asarray(image, dtype=np.float32).reshape(like.shape)


def augment_and_mix(image: np.ndarray, rng: np.random.Generator, params: AugMixParams = AugMixParams()) -> np.ndarray:
    """One AugMix image of ``image`` (uint8), float32 of the same shape, values in [0, 255]."""
    image = _check_image(image)
    weights = np.float32(rng.dirichlet([params.alpha] * params.width))
    skip = np.float32(rng.beta(params.alpha, params.alpha))
    source = _to_pil(image)
    ops = params.ops
    mix = np.zeros(image.shape, dtype=np.float32)
    for weight in weights:
        chained = source
        depth = params.depth if params.depth > 0 else int(rng.integers(1, 4))
        for _ in range(depth):
            chained = ops[int(rng.integers(len(ops)))](chained, params.severity, rng)
        mix += weight * _to_array(chained, image)
    mixed = (1 - skip) * image.astype(np.float32) + skip * mix
    return np.clip(mixed, 0.0, 255.0, out=mixed)  # float rounding only: a convex mixture of [0, 255]


def augmix_views(image: np.ndarray, rng: np.random.Generator, params: AugMixParams = AugMixParams(),
                 views: int = 3) -> List[np.ndarray]:
    """The JSD setting's views: the clean image (as float32) then ``views - 1`` independent AugMix images."""
    if isinstance(views, bool) or not isinstance(views, int) or views < 2:
        raise ValueError(f"AugMix views must be an integer >= 2 (the clean image and AugMix ones), got {views!r}")
    image = _check_image(image)
    return [image.astype(np.float32)] + [augment_and_mix(image, rng, params) for _ in range(views - 1)]


def augment_batch(images: Sequence[np.ndarray], rng: np.random.Generator,
                  params: AugMixParams = AugMixParams()) -> np.ndarray:
    """``augment_and_mix`` over a batch of uint8 images, one generator for all, stacked as float32."""
    return np.stack([augment_and_mix(image, rng, params) for image in images])
