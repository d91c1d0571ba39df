"""The published corruption benchmarks as mmpretrain data sets, one (corruption, severity) cell each.

- ``CIFAR100C`` (and ``CIFAR10C``): Hendrycks & Dietterich's release, one
  ``<corruption>.npy`` per corruption holding severities 1-5 one after the
  other (uint8 RGB, ``(5 * N, 32, 32, 3)``, N = 10,000), and ``labels.npy``
  (``5 * N`` labels); severity ``s`` is rows ``(s - 1) * N`` to ``s * N``.
- ``ImageNetC``: ``<root>/<corruption>/<severity>/<wnid>/<image>.JPEG``,
  mmpretrain's ``CustomDataset`` over one cell's class folders (sorted wnids:
  ImageNet's class indices). Its images are the benchmark's 224 x 224 crops,
  scored as they are, without the resize and crop of the clean test pipeline.

``tools/test_robustness.py --corruption-data ROOT`` reads them; without it,
the seeded on-the-fly corruptions serve.
"""
from __future__ import annotations

import os
import os.path as osp

import numpy as np
from mmpretrain.datasets import CustomDataset
from mmpretrain.datasets.base_dataset import BaseDataset
from mmpretrain.datasets.categories import CIFAR10_CATEGORIES, CIFAR100_CATEGORIES
from mmpretrain.registry import DATASETS

__all__ = ["CIFAR10C", "CIFAR100C", "ImageNetC", "corruption_layout"]

SEVERITIES = (1, 2, 3, 4, 5)


def _check_cell(corruption, severity) -> None:
    if not isinstance(corruption, str) or not corruption or "/" in corruption:
        raise ValueError(f"corruption must be a corruption's name, got {corruption!r}")
    if severity not in SEVERITIES:
        raise ValueError(f"severity must be one of 1-5, got {severity!r}")


def corruption_layout(root: str) -> str:
    """``'cifar-c'`` (``labels.npy`` beside per-corruption ``.npy``) or ``'imagenet-c'`` (folders), else an error."""
    if osp.isfile(osp.join(root, "labels.npy")):
        return "cifar-c"
    if osp.isdir(root) and any(osp.isdir(osp.join(root, name, "1")) for name in sorted(os.listdir(root))):
        return "imagenet-c"
    raise ValueError(f"{root}: neither CIFAR-C's layout (labels.npy and <corruption>.npy) nor ImageNet-C's "
                     "(<corruption>/<severity>/<class>/ folders)")


class _CIFARC(BaseDataset):
    def __init__(self, data_root: str, corruption: str, severity: int, **kwargs):
        _check_cell(corruption, severity)
        self.corruption, self.severity = corruption, severity
        super().__init__(ann_file="", data_root=data_root, **kwargs)

    def load_data_list(self):
        root = self.data_root
        paths = [osp.join(root, f"{self.corruption}.npy"), osp.join(root, "labels.npy")]
        missing = [p for p in paths if not osp.isfile(p)]
        if missing:
            raise FileNotFoundError(f"{type(self).__name__}: no {', '.join(missing)} (the release's layout: "
                                    "<corruption>.npy and labels.npy)")
        images, labels = np.load(paths[0], mmap_mode="r"), np.load(paths[1])
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8:
            raise ValueError(f"{paths[0]}: expected uint8 images (5 * N, H, W, 3), got {images.dtype} {images.shape}")
        if len(images) % len(SEVERITIES) or len(labels) != len(images):
            raise ValueError(f"{paths[0]}: {len(images)} images and {len(labels)} labels; expected 5 severities x N "
                             "images and as many labels")
        n = len(images) // len(SEVERITIES)
        rows = range((self.severity - 1) * n, self.severity * n)
        return [dict(img=np.array(images[i]), gt_label=int(labels[i])) for i in rows]


@DATASETS.register_module(force=True)
class CIFAR100C(_CIFARC):
    """CIFAR-100-C, one cell: ``CIFAR100C(data_root, corruption='fog', severity=3, pipeline=...)``."""

    METAINFO = {"classes": CIFAR100_CATEGORIES}


@DATASETS.register_module(force=True)
class CIFAR10C(_CIFARC):
    """CIFAR-10-C, one cell (the same layout as CIFAR-100-C)."""

    METAINFO = {"classes": CIFAR10_CATEGORIES}


@DATASETS.register_module(force=True)
class ImageNetC(CustomDataset):
    """ImageNet-C, one cell: the class folders under ``<data_root>/<corruption>/<severity>``."""

    def __init__(self, data_root: str, corruption: str, severity: int, **kwargs):
        _check_cell(corruption, severity)
        folder = osp.join(data_root, corruption, str(severity))
        if not osp.isdir(folder):
            raise FileNotFoundError(f"ImageNetC: no folder {folder} (the release's layout: "
                                    "<corruption>/<severity>/<class>/<image>)")
        self.corruption, self.severity = corruption, severity
        super().__init__(data_root=data_root, data_prefix=f"{corruption}/{severity}", **kwargs)
