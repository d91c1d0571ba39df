"""A small image-classification set in the image-folder layout, generated, no download.

mmpretrain's ``CustomDataset`` reads it as it reads ImageNet's folders::

    <root>/train/<class>/<class>_00000.png
    <root>/val/<class>/<class>_00000.png

Class ``c`` shows stripes at angle ``c * 180 / classes`` degrees over a
random tint, with noise, so a small network learns it in a few iterations.
Image ``i`` of a class and split depends only on ``(seed, split, class, i)``;
the set is written atomically and reused when its spec matches (:mod:`.staging`).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import numpy as np

from .staging import ensure, write_atomically

__all__ = ["SyntheticClsSpec", "class_names", "render", "ensure_synthetic_cls"]

_SPLIT_OFFSET = {"train": 0, "val": 1_000_003}


@dataclass(frozen=True)
class SyntheticClsSpec:
    classes: int = 4
    train_per_class: int = 8
    val_per_class: int = 4
    image_size: int = 32
    seed: int = 0
    version: int = 1  # bump when the drawing changes

    def count(self, split: str) -> int:
        return {"train": self.train_per_class, "val": self.val_per_class}[split]


def class_names(spec: SyntheticClsSpec):
    return [f"class{c:03d}" for c in range(spec.classes)]


def render(spec: SyntheticClsSpec, split: str, label: int, index: int) -> np.ndarray:
    """One uint8 RGB image (H, W, 3) of class ``label``."""
    rng = np.random.default_rng((spec.seed, _SPLIT_OFFSET[split], label, index))
    size = spec.image_size
    angle = math.pi * label / spec.classes
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    phase = rng.uniform(0, 2 * math.pi)
    stripes = 0.5 + 0.5 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / 6 + phase)
    tint = rng.uniform(0.3, 1.0, size=3)
    image = stripes[..., None] * tint + rng.normal(0, 0.08, size=(size, size, 3))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def _write(spec: SyntheticClsSpec, staging: str) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for label, name in enumerate(class_names(spec)):
            folder = os.path.join(staging, split, name)
            os.makedirs(folder)
            for i in range(spec.count(split)):
                Image.fromarray(render(spec, split, label, i)).save(os.path.join(folder, f"{name}_{i:05d}.png"))


def ensure_synthetic_cls(root: str, spec: SyntheticClsSpec = SyntheticClsSpec()) -> str:
    """``root`` holding ``spec``'s images (generated unless already there); returns its absolute path."""
    values = dict(asdict(spec), kind="synthetic_cls")
    return ensure(root, values, lambda: write_atomically(root, values, lambda d: _write(spec, d), ".synthetic_cls."),
                  owner="ensure_synthetic_cls")
