"""Loading transforms for ImageNet-S images and RGB-encoded labels.

MMSegmentation's ``LoadAnnotations`` casts label maps to uint8, which keeps
none of the ids above 255 (ImageNet-S has up to 919 classes and ignores
1000), so the labels get their own loader.
"""
from __future__ import annotations

from typing import Optional

import mmcv
import mmengine.fileio as fileio
import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmseg.datasets.transforms import LoadAnnotations
from mmseg.registry import TRANSFORMS

from .format import MAX_RESOLUTION, decode_label_rgb, evaluation_size

__all__ = ["LoadImageNetSImageFromFile", "LoadImageNetSAnnotations"]


@TRANSFORMS.register_module()
class LoadImageNetSImageFromFile(LoadImageFromFile):
    """Load an image; images above ``max_resolution ** 2`` pixels are downsampled.

    The benchmark's rule (see :func:`~.format.evaluation_size`): the longer
    side becomes ``max_resolution``, bilinear. ``ori_shape`` is the
    downsampled size, so the model's arg-max map comes back at that size and
    :class:`~.metric.ImageNetSIoUMetric` brings it to the label's size by
    nearest neighbour, as the official inference does. The size on disk is
    kept as ``original_shape`` (add it to ``PackSegInputs``' ``meta_keys`` to
    write test-set predictions at full size).

    Args:
        downsample_large_image: apply the rule (False can exhaust memory on
            the few multi-megapixel images).
        max_resolution: the rule's side length, 1000 in the benchmark.
        **kwargs: as for mmcv's ``LoadImageFromFile``.
    """

    def __init__(self, downsample_large_image: bool = True, max_resolution: int = MAX_RESOLUTION, **kwargs) -> None:
        super().__init__(**kwargs)
        self.downsample_large_image = downsample_large_image
        self.max_resolution = max_resolution

    def transform(self, results: dict) -> Optional[dict]:
        results = super().transform(results)
        if results is None:  # ignore_empty and an unreadable file
            return None
        height, width = results["img"].shape[:2]
        results["original_shape"] = (height, width)
        if not self.downsample_large_image:
            return results
        new_height, new_width = evaluation_size(height, width, self.max_resolution)
        if (new_height, new_width) != (height, width):
            img = mmcv.imresize(results["img"], (new_width, new_height), interpolation="bilinear")
            results["img"] = img.astype(np.float32) if self.to_float32 else img
            results["img_shape"] = (new_height, new_width)
            results["ori_shape"] = (new_height, new_width)
        return results

    def __repr__(self) -> str:
        return (
            f"{super().__repr__()[:-1]}, downsample_large_image={self.downsample_large_image}, "
            f"max_resolution={self.max_resolution})"
        )


@TRANSFORMS.register_module()
class LoadImageNetSAnnotations(LoadAnnotations):
    """Load an RGB label PNG as int32 class ids ``R + 256 * G`` (``gt_seg_map``).

    Ids keep their values (0 "others", 1..919 classes, 1000 ignore); int32
    because OpenCV's resize, flip, crop, pad and rotate keep it (not int64).

    Args:
        downsample_large_label: apply the large-image rule to the label too
            (nearest neighbour), so that it stays aligned with an image loaded
            by :class:`LoadImageNetSImageFromFile`. Use it for training; for
            evaluation keep the label at full size (the benchmark scores at
            the label's resolution).
        max_resolution: the rule's side length, 1000 in the benchmark.
        backend_args, imdecode_backend: as for MMSegmentation's ``LoadAnnotations``.
    """

    def __init__(
        self,
        downsample_large_label: bool = False,
        max_resolution: int = MAX_RESOLUTION,
        backend_args: Optional[dict] = None,
        imdecode_backend: str = "pillow",
    ) -> None:
        super().__init__(reduce_zero_label=None, backend_args=backend_args, imdecode_backend=imdecode_backend)
        self.downsample_large_label = downsample_large_label
        self.max_resolution = max_resolution

    def _load_seg_map(self, results: dict) -> None:
        path = results["seg_map_path"]
        data = fileio.get(path, backend_args=self.backend_args)
        # 'unchanged' keeps a gray or palette PNG two-dimensional (so it can
        # be refused) and gives colour channels in BGR order for both backends.
        bgr = mmcv.imfrombytes(data, flag="unchanged", backend=self.imdecode_backend)
        if bgr.ndim != 3 or bgr.shape[2] < 3:
            raise ValueError(
                f"{path}: ImageNet-S labels are RGB PNGs (class id = R + 256 * G), got an array of shape {bgr.shape}"
            )
        label = decode_label_rgb(bgr[:, :, 2::-1])
        if results.get("reduce_zero_label", False):
            raise ValueError("ImageNet-S labels class 0 as 'others', a real class: use reduce_zero_label=False")
        label_map = results.get("label_map")
        if label_map:
            source = label.copy()
            for old_id, new_id in label_map.items():
                label[source == old_id] = new_id
        if self.downsample_large_label:
            height, width = label.shape
            new_height, new_width = evaluation_size(height, width, self.max_resolution)
            if (new_height, new_width) != (height, width):
                label = mmcv.imresize(label, (new_width, new_height), interpolation="nearest")
        results["gt_seg_map"] = label
        results["seg_fields"].append("gt_seg_map")

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(downsample_large_label={self.downsample_large_label}, "
            f"max_resolution={self.max_resolution}, imdecode_backend='{self.imdecode_backend}', "
            f"backend_args={self.backend_args})"
        )
