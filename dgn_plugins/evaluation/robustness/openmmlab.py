"""Robustness evaluator for MMDetection / MMSegmentation / MMPretrain models (MMEngine Runner).

As mmdet's ``tools/analysis_tools/test_robustness.py`` does: build the Runner
once (the checkpoint loads once), then per cell rebuild only the test
dataloader, with :class:`ApplyCorruption` inserted right after the image is
loaded, and call ``Runner.test()``.

The corruptions run in RGB (the corruption library's convention, and the
Detectron2 evaluator's): ``ApplyCorruption`` gets the loader's
``channel_order`` (mmcv's default ``'bgr'`` when the config names none) and
turns a BGR image to RGB and back around the corruption. mmdet's own
``Corrupt`` corrupts the BGR array, so colour corruptions (snow, frost,
jpeg_compression, ...) differ from its benchmark's images; mPC and rPC are
defined the same.

Classifiers trained on in-memory data sets (CIFAR: no loading transform) get
``ApplyCorruption`` first in their pipeline. Given a published benchmark
(``corruption_data``: CIFAR-10/100-C's ``.npy`` files or ImageNet-C's folders),
each corrupted cell reads its images from there instead
(:mod:`dgn_plugins.openmmlab.mmpretrain.corruption_datasets`).
"""
from __future__ import annotations

import copy
import logging
import uuid
from typing import Dict, List, Optional

from .metrics import nothing_detected, pick_primary_metric, task_of_metric
from .transforms import ApplyCorruption, check_channel_order  # noqa: F401  (registers the transform)

__all__ = ["OpenMMLabEvaluator", "insert_corruption", "published_cell", "IN_MEMORY_DATASETS"]

#: Data sets whose samples carry the image itself (no loading transform in their pipelines).
IN_MEMORY_DATASETS = ("CIFAR10", "CIFAR100", "MNIST", "FashionMNIST")

logger = logging.getLogger(__name__)


def _pipeline_of(dataset_cfg) -> List:
    """The pipeline list of a dataset config, looking through wrappers (``dataset=``)."""
    while "pipeline" not in dataset_cfg and "dataset" in dataset_cfg:
        dataset_cfg = dataset_cfg["dataset"]
    if "pipeline" not in dataset_cfg:
        raise ValueError("the test dataset config has no pipeline to insert the corruption into")
    return dataset_cfg["pipeline"]


def insert_corruption(dataset_cfg, corruption: str, severity: int, seed: int) -> None:
    """Put ``ApplyCorruption`` right after the first image-loading transform (in place).

    The transform is told the loader's ``channel_order`` (a config key or an
    attribute of a built transform), so that it corrupts in RGB. Without one it
    is ``'bgr'``: mmcv 2.x's ``LoadImageFromFile`` has no such argument and
    always gives BGR colour images (mmcv 1.x's took ``channel_order='bgr'``).
    """
    pipeline = _pipeline_of(dataset_cfg)
    types = [str(step.get("type", "")) if isinstance(step, dict) else type(step).__name__ for step in pipeline]
    loaders = [i for i, t in enumerate(types) if "Load" in t and "Image" in t]
    if not loaders:
        if _dataset_type(dataset_cfg) in IN_MEMORY_DATASETS:  # the sample holds the image (RGB, as CIFAR's)
            pipeline.insert(0, dict(type="ApplyCorruption", corruption=corruption, severity=severity, seed=seed,
                                    channel_order="rgb"))
            return
        raise ValueError(f"no image-loading transform in the test pipeline {types}")
    loader = pipeline[loaders[0]]
    order = loader.get("channel_order") if isinstance(loader, dict) else getattr(loader, "channel_order", None)
    pipeline.insert(loaders[0] + 1, dict(type="ApplyCorruption", corruption=corruption, severity=severity, seed=seed,
                                         channel_order=check_channel_order(order or "bgr")))


def _dataset_type(dataset_cfg) -> str:
    while "pipeline" not in dataset_cfg and "dataset" in dataset_cfg:
        dataset_cfg = dataset_cfg["dataset"]
    kind = dataset_cfg.get("type", "")
    return kind if isinstance(kind, str) else getattr(kind, "__name__", "")


def published_cell(dataset_cfg, root: str, corruption: str, severity: int) -> dict:
    """The test set's config for one cell of a published benchmark under ``root`` (layout detected).

    CIFAR-C keeps the clean test pipeline less its loading step (in-memory 32 x 32 RGB images, as CIFAR's);
    ImageNet-C's images are the benchmark's crops: loaded and packed, no resize.
    """
    from ...openmmlab.mmpretrain.corruption_datasets import corruption_layout

    layout = corruption_layout(root)
    if layout == "imagenet-c":
        return dict(type="ImageNetC", data_root=root, corruption=corruption, severity=severity,
                    pipeline=[dict(type="LoadImageFromFile"), dict(type="PackInputs")])
    kind = "CIFAR10C" if _dataset_type(dataset_cfg) == "CIFAR10" else "CIFAR100C"
    pipeline = [step for step in copy.deepcopy(_pipeline_of(dataset_cfg))  # the images come in memory
                if not ("Load" in str(step.get("type", "")) and "Image" in str(step.get("type", "")))]
    return dict(type=kind, data_root=root, corruption=corruption, severity=severity, pipeline=pipeline)


def _is_scalar(value) -> bool:
    """Python, numpy or 0-d tensor numbers (IoUMetric returns numpy float32)."""
    try:
        import numpy as np

        return np.ndim(value) == 0 and np.isreal(value) and not isinstance(value, (str, bytes))
    except TypeError:
        return False


class OpenMMLabEvaluator:
    """Evaluate ``config`` + ``checkpoint`` on clean and corrupted test data.

    Args:
        config: an MMEngine config file (or a ``Config``).
        checkpoint: weights to load (``None``: the config's initialisation, for tests).
        work_dir: where the Runner writes its logs.
        seed: base seed of the corruptions.
        cfg_options: overrides merged into the config (``--cfg-options``).
        corruption_data: a published benchmark's root (CIFAR-C ``.npy`` files or
            ImageNet-C folders) that corrupted cells read instead of corrupting on the fly.
    """

    def __init__(self, config, checkpoint: Optional[str], work_dir: str, seed: int = 0,
                 cfg_options: Optional[dict] = None, log_level: str = "WARNING",
                 corruption_data: Optional[str] = None) -> None:
        from mmengine.config import Config
        from mmengine.runner import Runner

        from ...openmmlab import allow_checkpoint_types

        allow_checkpoint_types()  # load_from may be a full training checkpoint (MMEngine's types)
        cfg = config if isinstance(config, Config) else Config.fromfile(config)
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
        cfg.work_dir = work_dir
        cfg.load_from = checkpoint
        cfg.resume = False
        cfg.log_level = log_level
        if isinstance(cfg.get("visualizer"), dict):
            # The toolkits call theirs 'visualizer', a process-wide instance: a second model's
            # Runner would get the first one back and write into the first model's work_dir.
            cfg.visualizer.name = f"robustness-{uuid.uuid4().hex[:8]}"
        # Only testing: drop training pieces that would make the Runner demand data or build optimisers.
        # (the Runner refuses a param_scheduler without an optim_wrapper)
        for key in ("train_dataloader", "train_cfg", "optim_wrapper", "param_scheduler",
                    "val_dataloader", "val_cfg", "val_evaluator"):
            cfg[key] = None
        cfg.default_hooks = {k: v for k, v in (cfg.get("default_hooks") or {}).items() if k != "visualization"}
        self.cfg = cfg
        self.seed = int(seed)
        self.corruption_data = corruption_data
        self.runner = Runner.from_cfg(cfg)
        self._test_loader_cfg = copy.deepcopy(cfg.test_dataloader)
        self.task: Optional[str] = None  # known after the first evaluation
        self._reference: Optional[Dict[str, float]] = None  # the first (clean) metrics

    def evaluate(self, corruption: Optional[str], severity: int) -> Dict[str, float]:
        loader_cfg = copy.deepcopy(self._test_loader_cfg)
        if corruption is not None and severity > 0 and self.corruption_data is not None:
            loader_cfg["dataset"] = published_cell(loader_cfg["dataset"], self.corruption_data, corruption, severity)
        elif corruption is not None and severity > 0:
            insert_corruption(loader_cfg["dataset"], corruption, severity, self.seed)
        test_loop = self.runner.test_loop  # built on first access
        test_loop.dataloader = self.runner.build_dataloader(loader_cfg, seed=self.seed)
        logging.getLogger("mmengine").setLevel(self.cfg.log_level)
        metrics = {k: float(v) for k, v in self.runner.test().items() if _is_scalar(v)}
        if not metrics:  # CocoMetric's answer when the model detected nothing
            if self._reference is None:
                raise ValueError(
                    "the clean test set gave no metrics: mmdet's CocoMetric gives none when the model detects "
                    "nothing. Is the checkpoint trained? (A weak model may need a lower score threshold, e.g. "
                    "--cfg-options model.test_cfg.rcnn.score_thr=0.0)")
            logger.warning(f"{corruption} {severity}: the model detected nothing; its AP is 0")
            metrics = nothing_detected(self._reference)
        if self._reference is None:
            self._reference = metrics
            self.task = task_of_metric(pick_primary_metric(metrics))
        return metrics
