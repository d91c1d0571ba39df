"""``DGNTrainer``: Detectron2's ``DefaultTrainer`` for configs with ``NORM: "DGN"``.

What it adds to ``DefaultTrainer``, one method each:

- ``build_model`` resolves ``"DGN"`` norms (:mod:`.norm`) before building;
- ``build_hooks`` adds :class:`DGNRegroupHook` from ``MODEL.DGN.REGROUP``,
  before the checkpointer, so checkpoints hold the regrouped layers;
- ``build_evaluator`` evaluates COCO-style data sets with ``COCOEvaluator``
  (``DefaultTrainer`` leaves it to ``train_net.py``).

Everything else is ``DefaultTrainer``'s own; training several processes on
CPU is the launcher's business (:func:`~dgn_plugins.detectron2.launcher.cpu_ddp`).

A ``train_net.py`` of your own keeps its ``Trainer`` and mixes :class:`DGNMixin`
in (``class Trainer(DGNMixin, DefaultTrainer)``): DGN norms, the regroup hook
and our log lines, in one base class; ``add_dgn_config(cfg)`` goes in its
``setup`` before ``merge_from_file`` (docs/detectron2.md has the recipe).
"""
from __future__ import annotations

import logging
import os

from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .config import regroup_options
from .hook import DGNRegroupHook, insert_regroup_hook
from .norm import build_model

__all__ = ["DGNMixin", "DGNTrainer", "setup_dgn_logger", "with_regroup_hook"]

logger = logging.getLogger(__name__)


def setup_dgn_logger(output_dir=None) -> None:
    """Send ``dgn_plugins`` log lines where Detectron2's go (console, ``log.txt``), once."""
    if not logging.getLogger("dgn_plugins").handlers:
        setup_logger(output_dir, distributed_rank=comm.get_rank(), name="dgn_plugins", abbrev_name="dgn")


def with_regroup_hook(cfg, hook_list: list) -> list:
    """``hook_list`` plus :class:`DGNRegroupHook` from ``MODEL.DGN.REGROUP`` (before the checkpointer)."""
    options = regroup_options(cfg)
    if options is None:
        logger.info("MODEL.DGN.REGROUP.INTERVAL is 0: DGN layers keep their groupings.")
        return list(hook_list)
    return insert_regroup_hook(hook_list, DGNRegroupHook(**options))


class DGNMixin:
    """DGN for a ``DefaultTrainer`` subclass of your own: ``class Trainer(DGNMixin, DefaultTrainer)``.

    ``build_model`` resolves ``"DGN"`` norms, ``build_hooks`` adds the regroup
    hook, and ``dgn_plugins``' log lines (each regroup's) go to the console and
    ``OUTPUT_DIR/log.txt`` like Detectron2's. Put it first so its methods wrap
    yours; the config needs ``add_dgn_config(cfg)`` before ``merge_from_file``.
    """

    def __init__(self, cfg, *args, **kwargs):
        setup_dgn_logger(cfg.OUTPUT_DIR)
        super().__init__(cfg, *args, **kwargs)

    @classmethod
    def build_model(cls, cfg):
        model = build_model(cfg)
        logging.getLogger("detectron2").info("Model:\n{}".format(model))
        return model

    def build_hooks(self):
        return with_regroup_hook(self.cfg, super().build_hooks())


class DGNTrainer(DGNMixin, DefaultTrainer):
    """``DefaultTrainer`` with DGN norms, the regroup hook and COCO evaluation."""

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
