"""``DGNRegroupHook``: regroup a Detectron2 model's DGN layers on a schedule.

It works in ``after_step``: ``DefaultTrainer`` forwards ``after_backward``
only to its inner ``SimpleTrainer``'s hooks, never to its own, so a hook
registered the usual way would never see it. After a step the weights are
updated and the running statistics include that step's batch.

Every rank runs it: :func:`dgn_plugins.regroup_model` averages the running
statistics across ranks and broadcasts rank 0's groupings (Detectron2 wraps
DDP with ``broadcast_buffers=False``, so nothing else would keep the groupings
equal). Place it before ``PeriodicCheckpointer`` (see
:func:`insert_regroup_hook`) so a checkpoint taken at a regroup step already
holds the new groupings and the schedule that produced them.

The main process also appends one record per regroup (every layer's group
ids, per-layer reports) to ``records_file``, what ``tools/plot_groups.py
--records`` draws; ``DGNTrainer`` puts it at ``OUTPUT_DIR/dgn_groups.jsonl``.
"""
from __future__ import annotations

import logging
from typing import List, Optional

from detectron2.engine import HookBase, hooks
from detectron2.utils import comm

from ..model import dgn_layers, regroup_model
from ..records import RegroupRecords, regroup_record
from ..regroup import describe_regroup, regroup_scalars
from ..schedule import RegroupSchedule

__all__ = ["DGNRegroupHook", "insert_regroup_hook", "SCALAR_PREFIX"]

logger = logging.getLogger(__name__)

#: EventStorage names; ``PeriodicWriter`` sends them to metrics.json and TensorBoard.
SCALAR_PREFIX = "dgn/"

#: Hooks that should see the regrouped model: checkpointing, evaluation, writing.
_AFTER_REGROUP = (hooks.PeriodicCheckpointer, hooks.BestCheckpointer, hooks.EvalHook, hooks.PeriodicWriter)


class DGNRegroupHook(HookBase):
    """Regroup every trainable DGN layer after each ``interval`` finished iterations.

    Args:
        interval: regroup after iterations ``interval, 2 * interval, ...``,
            counted from the start of training (a resumed run keeps the calendar).
        start, stop: regroup only after ``start`` and up to ``stop`` finished
            iterations (``stop=None``: until the end).
        percentile: overrides each layer's dissolve percentile.
        only_trainable: skip eval-mode and frozen layers (``FREEZE_AT`` stages).
        log_per_layer: log one line per layer besides the totals.
        records_file: path of the ``.jsonl`` regroup records the main process
            appends to (``None``: none). A resumed run keeps the records up to
            its checkpoint and appends; a run from scratch starts the file anew,
            keeping the old one beside it as ``<name>.<timestamp>.jsonl``.
    """

    def __init__(
        self,
        interval: int = 1000,
        *,
        start: int = 0,
        stop: Optional[int] = None,
        percentile: Optional[float] = None,
        only_trainable: bool = True,
        log_per_layer: bool = False,
        records_file: Optional[str] = None,
    ) -> None:
        self.schedule = RegroupSchedule(interval=interval, start=start, stop=stop)
        if percentile is not None and not 0.0 <= percentile <= 1.0:
            raise ValueError(f"percentile must lie in [0, 1], got {percentile}")
        self.percentile = percentile
        self.only_trainable = only_trainable
        self.log_per_layer = log_per_layer
        self.records_file = records_file
        self.records: Optional[RegroupRecords] = None
        self.regroups_done = 0

    def before_train(self) -> None:
        # resume_or_load ran before train(): the schedule says where a resumed run stands.
        if self.records_file is not None and comm.is_main_process():
            self.records = RegroupRecords(self.records_file)
            kept = self.records.start(self.schedule.last_regroup_step)
            warning = self.records.set_aside_warning()
            if warning is not None:
                logger.warning(f"DGNRegroupHook: {warning}")
            logger.info(f"DGNRegroupHook: regroup records go to {self.records.path} ({kept} kept from before)")
        layers = dgn_layers(self.trainer.model)
        if not layers:
            logger.warning("DGNRegroupHook: the model has no DGN layers, nothing will be regrouped.")
            return
        warning = self.schedule.final_step_warning(self.trainer.max_iter)
        if warning is not None:
            logger.warning(warning)
        stop = f" to {self.schedule.stop}" if self.schedule.stop is not None else ""
        logger.info(
            f"DGNRegroupHook: {len(layers)} DGN layers, regroup every {self.schedule.interval} "
            f"iterations from {self.schedule.start}{stop}"
        )

    def after_step(self) -> None:
        step = self.trainer.iter + 1  # trainer.iter is the 0-based index of the step just run
        if not self.schedule.is_due(step):
            return
        reports = regroup_model(self.trainer.model, only_trainable=self.only_trainable, percentile=self.percentile)
        self.schedule.mark_done(step)
        self.regroups_done += 1
        self._record(step, reports)

    def _record(self, step: int, reports) -> None:
        scalars = regroup_scalars(reports, self.regroups_done)
        self.trainer.storage.put_scalars(
            **{SCALAR_PREFIX + key: value for key, value in scalars.items()}, smoothing_hint=False
        )
        logger.info(describe_regroup(reports, self.regroups_done, f"iter {step}", self.log_per_layer))
        if self.records is not None:
            self.records.append(regroup_record(step, self.trainer.model, reports))

    # Saved by DetectionCheckpointer through trainer.state_dict()["hooks"].
    def state_dict(self) -> dict:
        return {"schedule": self.schedule.state_dict(), "regroups_done": self.regroups_done}

    def load_state_dict(self, state: dict) -> None:
        self.schedule.load_state_dict(state["schedule"])
        self.regroups_done = int(state.get("regroups_done", 0))


def insert_regroup_hook(hook_list: List[Optional[HookBase]], hook: Optional[HookBase]) -> List[Optional[HookBase]]:
    """``hook_list`` with ``hook`` placed before the first checkpoint/eval/writer hook.

    For a trainer's ``build_hooks``: the regroup then lands in the checkpoint,
    the evaluation and the logged metrics of the same iteration.
    """
    if hook is None:
        return list(hook_list)
    for index, existing in enumerate(hook_list):
        if isinstance(existing, _AFTER_REGROUP):
            return list(hook_list[:index]) + [hook] + list(hook_list[index:])
    return list(hook_list) + [hook]
