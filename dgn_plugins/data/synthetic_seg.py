"""A small semantic-segmentation set in the ImageNet-S layout, generated, no download.

Each image shows one to three objects of a single shape class (as an
ImageNet-S image shows one category) on a shaded, noisy background
("others"); the objects' hue hints at their class, their shape decides.
The files follow ImageNet-S exactly, so the demo runs the real code path
(``ImageNetSDataset``, ``LoadImageNetSAnnotations``, ``ImageNetSIoUMetric``):

    <root>/train-semi/<class>/<class>_00000.JPEG
    <root>/train-semi-segmentation/<class>/<class>_00000.png    RGB, id = R + 256 * G
    <root>/validation/<class>/val_<class>_00000.JPEG
    <root>/validation-segmentation/<class>/val_<class>_00000.png

Class ids are 0 ("others") and 1..4; the one-pixel inner rim of every object
is 1000 ("ignore"), like the ambiguous pixels of the real labels.
Deterministic: image ``i`` of a class and split depends only on ``(seed,
split, class, i)``. Files are written to a temporary folder that is then
renamed, so concurrent callers (distributed ranks, the train and val data
sets) never see half a data set.

    python -m dgn_plugins.data.synthetic_seg data/generated/imagenets_synthetic
"""
from __future__ import annotations

import argparse
import colorsys
import math
import os
from dataclasses import asdict, dataclass
from typing import Optional, Tuple

import numpy as np

from .staging import ensure, write_atomically

__all__ = ["CLASSES", "IGNORE_ID", "SPLITS", "SyntheticSegSpec", "generate_synthetic_seg", "ensure_synthetic_seg"]

#: Class names by id; id 0 is ImageNet-S's "others".
CLASSES = ("others", "circle", "square", "triangle", "cross")
#: ImageNet-S's "ignore" id (needs the G channel: R = 232, G = 3).
IGNORE_ID = 1000
#: image folder -> label folder, as in ImageNet-S.
SPLITS = {"train-semi": "train-semi-segmentation", "validation": "validation-segmentation"}

_SPLIT_OFFSET = {"train-semi": 0, "validation": 1_000_003}


@dataclass(frozen=True)
class SyntheticSegSpec:
    train_per_class: int = 60
    val_per_class: int = 20
    image_size: int = 64
    max_objects: int = 3
    min_object_size: int = 16
    max_object_size: int = 36
    seed: int = 0
    version: int = 1  # bump when the drawing changes

    def count(self, split: str) -> int:
        return {"train-semi": self.train_per_class, "validation": self.val_per_class}[split]


def _file_stem(split: str, class_name: str, index: int) -> str:
    return f"{class_name}_{index:05d}" if split == "train-semi" else f"val_{class_name}_{index:05d}"


# --------------------------------------------------------------------- shapes
def _shape_polygon(rng: np.random.RandomState, class_name: str, cx: float, cy: float, size: float) -> np.ndarray:
    """Vertices ``[n, 2]`` (x, y) of one object of ``class_name``."""
    half = size / 2
    if class_name == "circle":
        t = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        points = np.stack([half * np.cos(t), half * np.sin(t)], 1)
    elif class_name == "square":
        points = np.array([[-half, -half], [half, -half], [half, half], [-half, half]]) * 0.85
    elif class_name == "triangle":
        t = np.array([0.0, 2 * math.pi / 3, 4 * math.pi / 3]) - math.pi / 2
        points = np.stack([half * np.cos(t), half * np.sin(t)], 1)
    else:  # cross: a plus sign with arms a third of its size wide
        a, b = half, half / 3
        points = np.array(
            [[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b]]
        )
    angle = rng.uniform(0, 2 * math.pi)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return points @ rotation.T + np.array([cx, cy])


def _background(rng: np.random.RandomState, size: int) -> np.ndarray:
    base = rng.uniform(40, 200, 3)
    ys, xs = np.mgrid[0:size, 0:size] / size
    shade = rng.uniform(-50, 50, 3)[None, None] * (xs * rng.uniform(-1, 1) + ys * rng.uniform(-1, 1))[..., None]
    return np.clip(base[None, None] + shade, 0, 255)


def _object_colour(
    rng: np.random.RandomState, class_id: int, background: np.ndarray, min_distance: float = 80.0
) -> tuple:
    """A colour that stands out from the background under the object.

    Its hue hints at the class (classes 90 degrees apart, +-50 degrees of
    jitter, so neighbouring classes overlap): colour alone is not enough, the
    shape decides, yet a tiny network learns it in a few hundred iterations.
    """
    centre = (class_id - 1) / (len(CLASSES) - 1)
    for _ in range(20):
        hue = (centre + rng.uniform(-50, 50) / 360) % 1.0
        colour = 255 * np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.45, 1.0), rng.uniform(0.45, 1.0)))
        if np.linalg.norm(colour - background) >= min_distance:
            break
    return tuple(int(c) for c in colour)


def _inner_rim(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (image borders do not count)."""
    padded = np.pad(mask, 1, mode="edge")
    inside_all = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inside_all


def draw_sample(spec: SyntheticSegSpec, split: str, class_id: int, index: int) -> Tuple[np.ndarray, np.ndarray]:
    """One image (uint8 HxWx3, RGB) and its class ids (int64 HxW)."""
    from PIL import Image, ImageDraw

    class_name = CLASSES[class_id]
    key = spec.seed * 7919 + _SPLIT_OFFSET[split] + class_id * 100_003 + index
    rng = np.random.RandomState(key % (2**32))
    size = spec.image_size
    background = _background(rng, size)
    image = Image.fromarray(background.astype(np.uint8))
    mask_image = Image.new("L", (size, size), 0)
    draw, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask_image)
    for _ in range(rng.randint(1, spec.max_objects + 1)):
        extent = rng.uniform(spec.min_object_size, spec.max_object_size)
        cx, cy = rng.uniform(extent / 2, size - extent / 2, 2)
        polygon = [tuple(p) for p in _shape_polygon(rng, class_name, cx, cy, extent).tolist()]
        draw.polygon(polygon, fill=_object_colour(rng, class_id, background[int(cy), int(cx)]))
        draw_mask.polygon(polygon, fill=1)
    noise = rng.normal(0, 10, (size, size, 3))  # texture on objects and background alike
    pixels = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    mask = np.asarray(mask_image) > 0
    label = np.where(mask, class_id, 0).astype(np.int64)
    label[_inner_rim(mask)] = IGNORE_ID
    return pixels, label


def encode_label_rgb(label: np.ndarray) -> np.ndarray:
    """ImageNet-S's RGB label encoding: ``R = id % 256``, ``G = id // 256``, ``B = 0``."""
    rgb = np.zeros(label.shape + (3,), dtype=np.uint8)
    rgb[:, :, 0] = label % 256
    rgb[:, :, 1] = label // 256
    return rgb


# ------------------------------------------------------------------ writing
def _write_split(spec: SyntheticSegSpec, split: str, root: str) -> None:
    from PIL import Image

    for class_id, class_name in enumerate(CLASSES):
        if class_id == 0:  # "others" is background, it has no images of its own
            continue
        image_dir = os.path.join(root, split, class_name)
        label_dir = os.path.join(root, SPLITS[split], class_name)
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(label_dir, exist_ok=True)
        for index in range(spec.count(split)):
            pixels, label = draw_sample(spec, split, class_id, index)
            stem = _file_stem(split, class_name, index)
            Image.fromarray(pixels).save(os.path.join(image_dir, stem + ".JPEG"), format="JPEG", quality=92)
            Image.fromarray(encode_label_rgb(label)).save(os.path.join(label_dir, stem + ".png"))


def generate_synthetic_seg(root: str, spec: Optional[SyntheticSegSpec] = None) -> str:
    """Write the data set to ``root`` (replacing it) and return ``root``."""
    spec = spec or SyntheticSegSpec()

    def write(staging: str) -> None:
        for split in SPLITS:
            _write_split(spec, split, staging)

    return write_atomically(root, asdict(spec), write, prefix=".synthetic_seg-")


def ensure_synthetic_seg(root: str, spec: Optional[SyntheticSegSpec] = None) -> str:
    """Generate the data set at ``root`` unless the same spec is already there.

    A folder without this generator's ``spec.json`` is never touched: it is
    someone's data, not ours to replace.
    """
    spec = spec or SyntheticSegSpec()
    return ensure(root, asdict(spec), lambda: generate_synthetic_seg(root, spec), owner=__name__)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", default="data/generated/imagenets_synthetic")
    parser.add_argument("--train-per-class", type=int, default=SyntheticSegSpec.train_per_class)
    parser.add_argument("--val-per-class", type=int, default=SyntheticSegSpec.val_per_class)
    parser.add_argument("--image-size", type=int, default=SyntheticSegSpec.image_size)
    parser.add_argument("--seed", type=int, default=SyntheticSegSpec.seed)
    args = parser.parse_args(argv)
    spec = SyntheticSegSpec(
        train_per_class=args.train_per_class,
        val_per_class=args.val_per_class,
        image_size=args.image_size,
        seed=args.seed,
    )
    print(ensure_synthetic_seg(args.root, spec))


if __name__ == "__main__":
    main()
