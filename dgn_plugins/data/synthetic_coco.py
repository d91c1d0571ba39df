"""A small COCO-format instance-segmentation set, generated, no download.

Images of a few simple shape classes (rectangles, ellipses, triangles) in
random colours on noisy, shaded backgrounds; every object is a polygon, so
the annotations hold exact polygon masks, boxes and areas. Objects never
overlap, so each polygon is exactly its visible mask. Deterministic: image
``i`` of a split depends only on ``(seed, split, i)``, and files are written to
a temporary folder then renamed, so concurrent callers (distributed ranks)
never see half a data set.

    python -m dgn_plugins.data.synthetic_coco data/synthetic_coco
"""
from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import numpy as np

from .staging import ensure, write_atomically

__all__ = ["CLASSES", "METAINFO", "SyntheticCocoSpec", "generate_synthetic_coco", "ensure_synthetic_coco", "annotation_path"]

CLASSES = ("rectangle", "ellipse", "triangle")
PALETTE = [(220, 20, 60), (0, 128, 255), (60, 180, 75)]
#: For mmdet's ``CocoDataset(metainfo=...)``.
METAINFO = dict(classes=CLASSES, palette=PALETTE)

_SPLIT_OFFSET = {"train": 0, "val": 1_000_003}


@dataclass(frozen=True)
class SyntheticCocoSpec:
    num_train: int = 300
    num_val: int = 50
    image_size: int = 96
    max_objects: int = 4
    min_object_size: int = 14
    max_object_size: int = 40
    seed: int = 0
    version: int = 1  # bump when the drawing changes

    def count(self, split: str) -> int:
        return {"train": self.num_train, "val": self.num_val}[split]


def annotation_path(root: str, split: str) -> str:
    return os.path.join(root, "annotations", f"instances_{split}.json")


# --------------------------------------------------------------------- shapes
def _shape_polygon(rng: np.random.RandomState, label: int, cx: float, cy: float, size: float) -> np.ndarray:
    """Vertices ``[n, 2]`` (x, y) of one object of class ``label``."""
    angle = rng.uniform(0, math.pi)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    if CLASSES[label] == "rectangle":
        half_w, half_h = size / 2, size / 2 * rng.uniform(0.45, 1.0)
        points = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
    elif CLASSES[label] == "ellipse":
        t = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        points = np.stack([size / 2 * np.cos(t), size / 2 * rng.uniform(0.55, 1.0) * np.sin(t)], 1)
    else:  # triangle
        t = np.array([0.0, 2 * math.pi / 3, 4 * math.pi / 3]) + rng.uniform(-0.25, 0.25, 3)
        points = np.stack([size / 2 * np.cos(t), size / 2 * np.sin(t)], 1)
    return points @ rotation.T + np.array([cx, cy])


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return float(abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) / 2)


def _overlaps(box, boxes, margin: float = 2.0) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] + margin and b[0] < x1 + margin and y0 < b[3] + margin and b[1] < y1 + margin for b in boxes)


def _background(rng: np.random.RandomState, size: int) -> np.ndarray:
    base = rng.uniform(40, 200, 3)
    ys, xs = np.mgrid[0:size, 0:size] / size
    shade = rng.uniform(-40, 40, 3)[None, None] * (xs * rng.uniform(-1, 1) + ys * rng.uniform(-1, 1))[..., None]
    return np.clip(base[None, None] + shade, 0, 255)


def _draw_image(spec: SyntheticCocoSpec, split: str, index: int):
    """One image (uint8 HxWx3) and its objects (label, polygon)."""
    from PIL import Image, ImageDraw

    rng = np.random.RandomState((spec.seed * 7919 + _SPLIT_OFFSET[split] + index) % (2**32))
    size = spec.image_size
    image = Image.fromarray(_background(rng, size).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    objects, boxes = [], []
    for _ in range(rng.randint(1, spec.max_objects + 1)):
        for _attempt in range(20):
            label = rng.randint(len(CLASSES))
            extent = rng.uniform(spec.min_object_size, spec.max_object_size)
            cx, cy = rng.uniform(extent / 2, size - extent / 2, 2)
            polygon = np.clip(_shape_polygon(rng, label, cx, cy, extent), 0, size - 1)
            box = (*polygon.min(0), *polygon.max(0))
            if box[2] - box[0] >= 4 and box[3] - box[1] >= 4 and not _overlaps(box, boxes):
                break
        else:
            continue
        colour = tuple(int(c) for c in rng.randint(0, 256, 3))
        draw.polygon([tuple(p) for p in polygon.tolist()], fill=colour)
        objects.append((label, polygon))
        boxes.append(box)
    noise = rng.normal(0, 12, (size, size, 3))  # texture on objects and background alike
    return np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8), objects


# ------------------------------------------------------------------ writing
def _write_split(spec: SyntheticCocoSpec, split: str, root: str) -> None:
    from PIL import Image

    os.makedirs(os.path.join(root, split), exist_ok=True)
    images: List[Dict] = []
    annotations: List[Dict] = []
    for index in range(spec.count(split)):
        pixels, objects = _draw_image(spec, split, index)
        file_name = f"{index:06d}.png"
        Image.fromarray(pixels).save(os.path.join(root, split, file_name))
        image_id = index + 1
        images.append(dict(id=image_id, file_name=file_name, width=spec.image_size, height=spec.image_size))
        for label, polygon in objects:
            x0, y0 = polygon.min(0)
            x1, y1 = polygon.max(0)
            annotations.append(
                dict(
                    id=len(annotations) + 1,
                    image_id=image_id,
                    category_id=label + 1,
                    segmentation=[np.round(polygon, 2).reshape(-1).tolist()],
                    area=round(_polygon_area(polygon), 2),
                    bbox=[round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                    iscrowd=0,
                )
            )
    categories = [dict(id=i + 1, name=name, supercategory="shape") for i, name in enumerate(CLASSES)]
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(annotation_path(root, split), "w") as f:
        json.dump(dict(images=images, annotations=annotations, categories=categories), f)


def generate_synthetic_coco(root: str, spec: Optional[SyntheticCocoSpec] = None) -> str:
    """Write the data set to ``root`` (replacing it) and return ``root``."""
    spec = spec or SyntheticCocoSpec()

    def write(staging: str) -> None:
        for split in ("train", "val"):
            _write_split(spec, split, staging)

    return write_atomically(root, asdict(spec), write, prefix=".synthetic_coco-")


def ensure_synthetic_coco(root: str, spec: Optional[SyntheticCocoSpec] = None) -> str:
    """Generate the data set at ``root`` unless the same spec is already there; a folder there that
    this generator did not write (no ``spec.json``) is someone's data and is refused, never replaced."""
    spec = spec or SyntheticCocoSpec()
    return ensure(root, asdict(spec), lambda: generate_synthetic_coco(root, spec), owner=__name__)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", default="data/synthetic_coco")
    parser.add_argument("--num-train", type=int, default=SyntheticCocoSpec.num_train)
    parser.add_argument("--num-val", type=int, default=SyntheticCocoSpec.num_val)
    parser.add_argument("--image-size", type=int, default=SyntheticCocoSpec.image_size)
    parser.add_argument("--seed", type=int, default=SyntheticCocoSpec.seed)
    args = parser.parse_args(argv)
    spec = SyntheticCocoSpec(num_train=args.num_train, num_val=args.num_val, image_size=args.image_size, seed=args.seed)
    print(ensure_synthetic_coco(args.root, spec))


if __name__ == "__main__":
    main()
