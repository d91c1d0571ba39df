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
from typing import List, Optional, Union

from detectron2.engine import HookBase, hooks
from detectron2.utils import comm

from ..regrouping.policy import RegroupPolicy
from ..training.controller import RegroupController

__all__ = ["DGNRegroupHook", "insert_regroup_hook", "SCALAR_PREFIX"]

logger = logging.getLogger(__name__)

#: EventStorage names; ``PeriodicWriter`` sends them to metrics.json and TensorBoard.
SCALAR_PREFIX = "dgn/"

#: Hooks that should see the regrouped model: checkpointing, evaluation, writing.
_AFTER_REGROUP = (hooks.PeriodicCheckpointer, hooks.BestCheckpointer, hooks.EvalHook, hooks.PeriodicWriter)


class DGNRegroupHook(HookBase):
    """Regroup every trainable DGN layer after each ``interval`` finished iterations:
    Detectron2's events translated to a :class:`~dgn_plugins.training.controller.RegroupController`.

    Args:
        interval: regroup after iterations ``interval, 2 * interval, ...``,
            counted from the start of training (a resumed run keeps the calendar).
        start, stop: regroup only after ``start`` and up to ``stop`` finished
            iterations (``stop=None``: until the end). Each of the three may be
            a share of the run instead (a float in (0, 1), resolved against
            ``SOLVER.MAX_ITER``/``train.max_iter``). The defaults, ``interval=0.1,
            stop=0.9``, are the schedule the study in bench/RESULTS.md chose;
            ``cfg.MODEL.DGN.REGROUP`` still gives iterations (1000, to the end).
        percentile: overrides each layer's dissolve percentile.
        only_trainable: skip eval-mode and frozen layers (``FREEZE_AT`` stages).
        log_per_layer: log one line per layer besides the totals.
        records_file: path of the ``.jsonl`` regroup records the main process
            appends to (``None``: none). A resumed run keeps the records up to
            its checkpoint and appends; a run from scratch starts the file anew,
            keeping the old one beside it as ``<name>.<timestamp>.jsonl``.
    """

    def __init__(self, interval: Union[int, float] = 0.1, *, start: Union[int, float] = 0, stop: Optional[Union[int, float]] = 0.9,
                 percentile: Optional[float] = None, only_trainable: bool = True, log_per_layer: bool = False,
                 records_file: Optional[str] = None) -> None:
        self.controller = RegroupController(
            interval, start=start, stop=stop, policy=RegroupPolicy(percentile=percentile),
            only_trainable=only_trainable, log_per_layer=log_per_layer, records_file=records_file)

    schedule = property(lambda self: self.controller.schedule)

    @property
    def regroups_done(self) -> int:
        return self.controller.regroups_done

    @regroups_done.setter
    def regroups_done(self, value: int) -> None:
        self.controller.regroups_done = value

    def before_train(self) -> None:
        # resume_or_load ran before train(): the schedule says where a resumed run stands.
        self.controller.before_train(self.trainer.model, getattr(self.trainer, "max_iter", 0), logger,
                                     is_main_process=comm.is_main_process())

    def after_step(self) -> None:
        step = self.trainer.iter + 1  # trainer.iter is the 0-based index of the step just run
        scalars = self.controller.after_step(self.trainer.model, step, logger)
        if scalars is not None:
            self.trainer.storage.put_scalars(**{SCALAR_PREFIX + k: v for k, v in scalars.items()},
                                             smoothing_hint=False)

    # Saved by DetectionCheckpointer through trainer.state_dict()["hooks"].
    def state_dict(self) -> dict:
        return self.controller.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.controller.load_state_dict(state)


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
