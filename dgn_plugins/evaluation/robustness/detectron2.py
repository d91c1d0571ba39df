"""Robustness evaluator for Detectron2 models (yacs ``.yaml`` or LazyConfig ``.py``).

The model is built (``NORM: "DGN"`` resolved, see :mod:`dgn_plugins.detectron2`)
and its checkpoint loaded once; per cell the test loader is rebuilt with its
mapper wrapped so that the corruption is the first augmentation, applied to the
image as read, and ``inference_on_dataset`` runs the data set's evaluator:
``COCOEvaluator`` (metric keys ``bbox/AP``, ``segm/AP``, ...) or
``SemSegEvaluator`` (``sem_seg/mIoU``, ...). Each image is corrupted in RGB
(the corruption library's convention: a ``BGR`` image is turned and turned
back), with the seed :class:`~dgn_plugins.evaluation.robustness.transforms.ApplyCorruption`
gives it (base seed, cell, file name), as that transform does, so both
toolkits see the same corrupted images.
"""
from __future__ import annotations

import copy
import logging
import math
import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

try:
    import detectron2.config  # noqa: F401  (a submodule: a stray "detectron2" folder on sys.path is no Detectron2)
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the Detectron2 robustness evaluator needs the detectron2 package, built from source "
        f"(see docs/detectron2.md): {error}"
    ) from error

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import LazyConfig, get_cfg, instantiate
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.data.dataset_mapper import DatasetMapper
from detectron2.evaluation import COCOEvaluator, SemSegEvaluator, inference_on_dataset

from ...detectron2 import add_dgn_config, build_model, lazy
from ...detectron2.data import register_datasets_of
from ...detectron2.launcher import cuda_or_cpu, is_lazy_config, lazy_dataset_names
from .corruptions import cell_seed, check_corruptions, check_severities, corrupt_image
from .metrics import nothing_detected, pick_primary_metric, task_of_metric

__all__ = ["Detectron2Evaluator", "CorruptImage", "CorruptingMapper", "flatten_results"]

logger = logging.getLogger(__name__)

#: evaluator_type in MetadataCatalog -> (the evaluator, the task the report names).
_EVALUATORS = {"coco": (COCOEvaluator, "detection"), "sem_seg": (SemSegEvaluator, "segmentation")}


class CorruptImage(T.Transform):
    """One ImageNet-C corruption as a Detectron2 transform: the image changes, geometry does not.

    The corruptions are defined on RGB, so a ``BGR`` image (Detectron2's
    default ``INPUT.FORMAT``) is corrupted in RGB order and turned back.
    """

    def __init__(self, corruption: str, severity: int, seed: int, image_format: Optional[str] = "BGR") -> None:
        super().__init__()
        if image_format not in (None, "BGR", "RGB", "L"):
            raise ValueError(f"cannot corrupt images read as {image_format!r}; use INPUT.FORMAT BGR, RGB or L")
        self._set_attributes(dict(corruption=corruption, severity=severity, seed=seed, image_format=image_format))

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        bgr = self.image_format == "BGR"
        image = np.ascontiguousarray(img[..., ::-1] if bgr else img).astype(np.uint8)
        out = corrupt_image(image, self.corruption, self.severity, self.seed)
        return np.ascontiguousarray(out[..., ::-1] if bgr else out)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation  # labels are not corrupted

    def inverse(self) -> T.Transform:
        return T.NoOpTransform()


class CorruptingMapper:
    """A test mapper (``DatasetMapper`` or any mapper with ``augmentations``) that corrupts first.

    Per image, a shallow copy of the wrapped mapper gets ``[CorruptImage] +
    its augmentations``, the corruption seeded by the image's file name.
    """

    def __init__(self, mapper, corruption: str, severity: int, seed: int = 0) -> None:
        if not isinstance(getattr(mapper, "augmentations", None), T.AugmentationList):
            raise TypeError(f"{type(mapper).__name__} has no AugmentationList 'augmentations' to put the corruption in")
        self.mapper = mapper
        self.corruption = check_corruptions([corruption])[0]
        self.severity = check_severities([severity])[0]
        self.seed = int(seed)

    def __call__(self, dataset_dict: dict):
        key = os.path.basename(str(dataset_dict.get("file_name", dataset_dict.get("image_id", ""))))
        seed = cell_seed(self.seed, self.corruption, self.severity, key)
        corruption = CorruptImage(self.corruption, self.severity, seed, getattr(self.mapper, "image_format", "BGR"))
        mapper = copy.copy(self.mapper)
        mapper.augmentations = T.AugmentationList([corruption] + list(self.mapper.augmentations.augs))
        return mapper(dataset_dict)


def flatten_results(results: dict, prefix: str = "") -> Dict[str, float]:
    """``{"bbox": {"AP": 40.1}}`` -> ``{"bbox/AP": 40.1}`` (numbers only)."""
    flat: Dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_results(value, name + "/"))
        elif np.ndim(value) == 0 and isinstance(value, (int, float, np.number)):
            flat[name] = float(value)
    return flat


def _overrides(cfg_options: Union[None, dict, Sequence[str]]) -> List[str]:
    """``KEY=VALUE`` strings from a list of them or from a dict (what ``--cfg-options`` gives)."""
    if not cfg_options:
        return []
    if isinstance(cfg_options, dict):
        return [f"{key}={value}" for key, value in cfg_options.items()]
    return [str(item) for item in cfg_options]


class Detectron2Evaluator:
    """Evaluate a Detectron2 ``config`` + ``checkpoint`` on clean and corrupted test data.

    Args:
        config: a ``.yaml`` (yacs, ``MODEL.DGN`` added) or LazyConfig ``.py`` file.
        checkpoint: weights for ``DetectionCheckpointer``; ``None``: the
            config's ``MODEL.WEIGHTS`` / ``train.init_checkpoint`` if set.
        work_dir: where each cell's evaluator writes (``<work_dir>/<cell>``).
        seed: base seed of the corruptions.
        cfg_options: overrides, ``["KEY=VALUE", ...]`` or a dict (yacs keys
            such as ``DATASETS.TEST``, LazyConfig keys such as ``dataloader.test.num_workers``).
    """

    def __init__(self, config: str, checkpoint: Optional[str], work_dir: str, seed: int = 0,
                 cfg_options: Union[None, dict, Sequence[str]] = None) -> None:
        self.config = str(config)
        self.work_dir = work_dir
        self.seed = int(seed)
        self.lazy = is_lazy_config(self.config)
        self.cfg = self._load_lazy(cfg_options) if self.lazy else self._load_yacs(cfg_options)
        self.model = lazy.build_model(self.cfg) if self.lazy else build_model(self.cfg)
        weights = checkpoint or (self.cfg.train.init_checkpoint if self.lazy else self.cfg.MODEL.WEIGHTS)
        if weights:
            DetectionCheckpointer(self.model).load(weights)
        self.model.eval()
        self.task: Optional[str] = None if self.lazy else self._yacs_task()
        self._reference: Optional[Dict[str, float]] = None  # the first (clean) metrics

    # ------------------------------------------------------------------ configs
    def _load_yacs(self, cfg_options):
        cfg = get_cfg()
        add_dgn_config(cfg)
        cfg.merge_from_file(self.config)
        cfg.merge_from_list([part for item in _overrides(cfg_options) for part in item.split("=", 1)])
        cfg.MODEL.DEVICE = cuda_or_cpu(cfg.MODEL.DEVICE, "MODEL.DEVICE")
        cfg.freeze()
        if not cfg.DATASETS.TEST:
            raise ValueError(f"{self.config}: DATASETS.TEST is empty, nothing to evaluate")
        register_datasets_of(cfg.DATASETS.TEST)
        return cfg

    def _load_lazy(self, cfg_options):
        cfg = LazyConfig.apply_overrides(LazyConfig.load(self.config), _overrides(cfg_options))
        cfg.train.device = cuda_or_cpu(cfg.train.device, "train.device")
        if "evaluator" not in cfg.dataloader:
            raise ValueError(f"{self.config}: no dataloader.evaluator, nothing to evaluate")
        register_datasets_of(lazy_dataset_names(cfg))
        return cfg

    def _yacs_task(self) -> str:
        return _EVALUATORS.get(self._evaluator_type(self.cfg.DATASETS.TEST[0]), (None, "detection"))[1]

    @staticmethod
    def _evaluator_type(dataset: str) -> Optional[str]:
        return MetadataCatalog.get(dataset).get("evaluator_type", None)

    # ---------------------------------------------------------------- the cells
    def evaluate(self, corruption: Optional[str], severity: int) -> Dict[str, float]:
        cell = f"{corruption}_{severity}" if corruption is not None and severity > 0 else "clean"

        def mapper_of(mapper):
            return mapper if cell == "clean" else CorruptingMapper(mapper, corruption, severity, self.seed)

        metrics = self._evaluate_lazy(mapper_of, cell) if self.lazy else self._evaluate_yacs(mapper_of, cell)
        if all(math.isnan(value) for value in metrics.values()):  # COCOEvaluator without a single prediction
            if self._reference is None:
                raise ValueError(
                    "the clean test set gave no predictions (every metric is NaN). Is the checkpoint trained? "
                    "(A weak model may need a lower score threshold, e.g. --cfg-options "
                    "MODEL.ROI_HEADS.SCORE_THRESH_TEST=0.0)")
            logger.warning(f"{cell}: the model predicted nothing; its AP is 0")
            metrics = nothing_detected(self._reference)
        if self._reference is None:
            self._reference = metrics
            self.task = self.task or task_of_metric(pick_primary_metric(metrics))
        return metrics

    def _evaluate_yacs(self, mapper_of, cell: str) -> Dict[str, float]:
        datasets = list(self.cfg.DATASETS.TEST)
        metrics: Dict[str, float] = {}
        for dataset in datasets:
            loader = build_detection_test_loader(self.cfg, dataset, mapper=mapper_of(DatasetMapper(self.cfg, False)))
            output_dir = os.path.join(self.work_dir, cell, dataset)
            results = inference_on_dataset(self.model, loader, self._dataset_evaluator(dataset, output_dir))
            metrics.update(flatten_results(results, f"{dataset}/" if len(datasets) > 1 else ""))
        return metrics

    def _dataset_evaluator(self, dataset: str, output_dir: str):
        kind = self._evaluator_type(dataset)
        if kind not in _EVALUATORS:
            raise ValueError(f"{dataset!r} has evaluator_type {kind!r}; the robustness evaluator knows "
                             f"{sorted(_EVALUATORS)} (COCOEvaluator, SemSegEvaluator)")
        return _EVALUATORS[kind][0](dataset, output_dir=output_dir)

    def _evaluate_lazy(self, mapper_of, cell: str) -> Dict[str, float]:
        loader_cfg = copy.deepcopy(self.cfg.dataloader.test)
        loader_cfg.mapper = mapper_of(instantiate(self.cfg.dataloader.test.mapper))
        results = inference_on_dataset(self.model, instantiate(loader_cfg), instantiate(self.cfg.dataloader.evaluator))
        return flatten_results(results)
