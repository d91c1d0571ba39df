"""``DGNTrainer``: Detectron2's ``DefaultTrainer`` for configs with ``NORM: "DGN"``.

What it adds to ``DefaultTrainer``, one method each:

- ``build_model`` resolves ``"DGN"`` norms (:mod:`.norm`) before building;
- ``build_hooks`` adds :class:`DGNRegroupHook` from ``MODEL.DGN.REGROUP``,
  before the checkpointer, so checkpoints hold the regrouped layers;
- ``build_evaluator`` evaluates COCO-style data sets with ``COCOEvaluator``
  (``DefaultTrainer`` leaves it to ``train_net.py``);
- ``__init__`` also trains several processes on CPU: ``DefaultTrainer`` passes
  ``device_ids=[local_rank]`` to DDP, which PyTorch refuses for CPU modules.

Custom trainers can reuse the pieces instead: ``dgn_plugins.detectron2.build_model``
and ``insert_regroup_hook(hooks, DGNRegroupHook(**regroup_options(cfg)))``.
"""
from __future__ import annotations

import logging
import os
import weakref

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .config import regroup_options
from .hook import DGNRegroupHook, insert_regroup_hook
from .norm import build_model

__all__ = ["DGNTrainer", "ddp_device_kwargs", "setup_dgn_logger"]

logger = logging.getLogger(__name__)


def ddp_device_kwargs(model) -> dict:
    """DDP ``device_ids``: Detectron2's default (the local GPU) except for CPU models, where it must be None."""
    parameter = next(model.parameters(), None)
    if parameter is not None and parameter.device.type == "cpu":
        return {"device_ids": None}
    return {}


def setup_dgn_logger(output_dir=None) -> None:
    """Send ``dgn_plugins`` log lines where Detectron2's go (console, ``log.txt``), once."""
    if not logging.getLogger("dgn_plugins").handlers:
        setup_logger(output_dir, distributed_rank=comm.get_rank(), name="dgn_plugins", abbrev_name="dgn")


class DGNTrainer(DefaultTrainer):
    """``DefaultTrainer`` with DGN norms, the regroup hook and COCO evaluation."""

    def __init__(self, cfg):
        # DefaultTrainer.__init__, step for step, but with CPU-capable DDP.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        setup_dgn_logger(cfg.OUTPUT_DIR)
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)

        model = create_ddp_model(model, broadcast_buffers=False, **ddp_device_kwargs(model))
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg

        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        model = build_model(cfg)
        logging.getLogger("detectron2").info("Model:\n{}".format(model))
        return model

    def build_hooks(self):
        options = regroup_options(self.cfg)
        if options is None:
            logger.info("MODEL.DGN.REGROUP.INTERVAL is 0: DGN layers keep their groupings.")
            return super().build_hooks()
        return insert_regroup_hook(super().build_hooks(), DGNRegroupHook(**options))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type != "coco":
            raise NotImplementedError(
                f"DGNTrainer evaluates COCO-format data sets; {dataset_name!r} has evaluator_type "
                f"{evaluator_type!r}. Override build_evaluator for it."
            )
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        return COCOEvaluator(dataset_name, output_dir=output_folder)
