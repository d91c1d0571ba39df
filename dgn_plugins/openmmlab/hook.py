"""``DGNRegroupHook``: regroup a model's DGN layers on a schedule during training.

Add it to a config as::

    custom_hooks = [dict(type='DGNRegroupHook')]  # every 10% of the run, none in its last 10%

It regroups every trainable DGN layer (training mode, parameters not frozen:
frozen stages and ``requires_grad=False`` layers are left alone), keeps the
EMA copies of ``EMAHook`` on the same groupings, logs what changed, appends
one record per regroup to ``<work_dir>/dgn_groups.jsonl`` (for
``tools/plot_groups.py --records``), and stores its schedule in checkpoints so
``--resume`` continues the calendar (and the records file).
"""
from __future__ import annotations

from dataclasses import fields
from typing import Optional, Union

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import BaseAveragedModel, is_model_wrapper
from mmengine.runner import IterBasedTrainLoop

from ..regrouping.policy import RegroupPolicy
from ..training.controller import STATISTICS_OPTIONS, RegroupController
from ..training.model import follow_groupings
from ..training.records import RECORDS_FILE

__all__ = ["DGNRegroupHook", "follow_groupings"]

#: Totals pushed to the message hub; the ``train/`` prefix is what
#: ``LogProcessor`` collects for the text log, the json log and vis backends.
SCALAR_PREFIX = "train/dgn_"

#: The regroup policy's fields besides ``percentile`` (an argument of its own).
_POLICY_OPTIONS = tuple(f.name for f in fields(RegroupPolicy) if f.name != "percentile")


def _split_options(options: dict):
    """The hook's DGN keyword arguments as (regroup policy fields, running-statistics options)."""
    unsupported = sorted(set(options) - set(_POLICY_OPTIONS) - set(STATISTICS_OPTIONS))
    if unsupported:
        raise TypeError(
            f"DGNRegroupHook got unsupported DGN option(s) {unsupported}; the hook can change "
            f"{list(STATISTICS_OPTIONS + _POLICY_OPTIONS)} and 'percentile'. Set layout options such as "
            f"num_groups/group_size/alpha in norm_cfg=dict(type='DGN', ...)."
        )
    policy = {k: v for k, v in options.items() if k in _POLICY_OPTIONS}
    return policy, {k: v for k, v in options.items() if k in STATISTICS_OPTIONS}


class DGNRegroupHook(Hook):
    """Regroup DGN layers every ``interval`` iterations (or epochs): MMEngine's events
    translated to a :class:`~dgn_plugins.training.controller.RegroupController`.

    Args:
        interval: regroup after every ``interval`` finished iterations
            (epochs with ``by_epoch=True``), counted from the start of training.
        by_epoch: count epochs instead of iterations. Iteration-based is the
            default because ``IterBasedTrainLoop`` (mmseg's) calls epoch hooks
            only once per run.
        start, stop: regroup only after ``start`` and up to ``stop`` finished
            steps (``stop=None``: until the end).

            ``interval``, ``start`` and ``stop`` are steps (ints) or shares of
            the run (floats in (0, 1), resolved against ``max_iters`` or
            ``max_epochs``). The defaults, ``interval=0.1, stop=0.9`` (every
            tenth of training, none in the last tenth), are the schedule the
            study in bench/RESULTS.md chose on validation corruptions.
        percentile: overrides each layer's dissolve percentile at regroups.
        only_trainable: skip eval-mode and frozen layers (frozen stages,
            ``requires_grad=False``). Leave it on: regrouping a frozen layer
            changes a pretrained network that is not learning to adapt.
        log_per_layer: log one line per regrouped layer, besides the totals.
        records_file: after every regroup, the main process appends a record
            (step, every layer's group ids, per-layer reports) to this
            ``.jsonl`` file, relative to ``runner.work_dir``; plot it with
            ``tools/plot_groups.py --records``. ``None``: no records. A resumed
            run keeps the records up to its checkpoint and appends; a run from
            scratch starts the file anew, keeping the old one beside it as
            ``<name>.<timestamp>.jsonl`` (logged as a warning).
        **dgn_options: ``cluster_features``, ``seed``, ``n_init``, ``max_iter``
            override the layers' regroup policy (:class:`~dgn_plugins.regrouping.policy.RegroupPolicy`);
            ``momentum``, ``track_channel_stats`` are set on every layer before training.
    """

    # After the model step, before EMAHook (NORMAL) copies buffers, LoggerHook
    # (BELOW_NORMAL) logs scalars and CheckpointHook (VERY_LOW) saves.
    priority = "ABOVE_NORMAL"

    checkpoint_key = "dgn_regroup_hook"

    def __init__(self, interval: Union[int, float] = 0.1, by_epoch: bool = False, start: Union[int, float] = 0, stop: Optional[Union[int, float]] = 0.9,
                 percentile: Optional[float] = None, only_trainable: bool = True, log_per_layer: bool = True,
                 records_file: Optional[str] = RECORDS_FILE, **dgn_options) -> None:
        policy, statistics = _split_options(dgn_options)
        self.by_epoch = by_epoch
        self.controller = RegroupController(
            interval, start=start, stop=stop, policy=RegroupPolicy(percentile=percentile, **policy),
            only_trainable=only_trainable, log_per_layer=log_per_layer, records_file=records_file,
            unit="epoch" if by_epoch else "iteration", statistics=statistics)

    schedule = property(lambda self: self.controller.schedule)
    policy = property(lambda self: self.controller.policy)
    regroups_done = property(lambda self: self.controller.regroups_done)

    def before_train(self, runner) -> None:
        if self.by_epoch and isinstance(runner.train_loop, IterBasedTrainLoop):
            runner.logger.warning(
                "DGNRegroupHook(by_epoch=True) with an iteration-based loop: epoch hooks run once per run, "
                "so at most one regroup happens. Use by_epoch=False."
            )
        total = runner.max_epochs if self.by_epoch else runner.max_iters
        self.controller.before_train(runner.model, total, runner.logger, is_main_process=is_main_process(),
                                     work_dir=runner.work_dir)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self.by_epoch:
            self._after_step(runner, runner.iter + 1)  # runner.iter counts from 0

    def after_train_epoch(self, runner) -> None:
        if self.by_epoch:
            self._after_step(runner, runner.epoch + 1)

    def _after_step(self, runner, step: int) -> None:
        scalars = self.controller.after_step(runner.model, step, runner.logger)
        if scalars is None:
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        for hook in runner.hooks:  # EMAHook's averaged model normalises with the same groups
            averaged = getattr(hook, "ema_model", None)
            if isinstance(averaged, BaseAveragedModel):
                follow_groupings(averaged.module, model)
        for key, value in scalars.items():
            runner.message_hub.update_scalar(SCALAR_PREFIX + key, value)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[self.checkpoint_key] = self.controller.state_dict()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # Only a resumed run continues the calendar; ``load_from`` starts anew.
        state = checkpoint.get(self.checkpoint_key)
        if state is not None and getattr(runner, "_resume", False):
            self.controller.load_state_dict(state)
