"""``DGNRegroupHook``: regroup a model's DGN layers on a schedule during training.

Add it to a config as::

    custom_hooks = [dict(type='DGNRegroupHook', interval=1000)]

It regroups every trainable DGN layer (training mode, parameters not frozen:
frozen stages and ``requires_grad=False`` layers are left alone), keeps the
EMA copies of ``EMAHook`` on the same groupings, logs what changed, appends
one record per regroup to ``<work_dir>/dgn_groups.jsonl`` (for
``tools/plot_groups.py --records``), and stores its schedule in checkpoints so
``--resume`` continues the calendar (and the records file).
"""
from __future__ import annotations

import os
from typing import Optional

from mmengine.dist import is_main_process
from mmengine.hooks import Hook
from mmengine.model import BaseAveragedModel, is_model_wrapper
from mmengine.runner import IterBasedTrainLoop

from ..layer import DynamicGroupNorm
from ..model import dgn_layers, regroup_model
from ..records import RECORDS_FILE, RegroupRecords, regroup_record
from ..regroup import describe_regroup, regroup_scalars
from ..schedule import RegroupSchedule

__all__ = ["DGNRegroupHook", "RUNTIME_DGN_OPTIONS", "follow_groupings"]

#: DGN layer options the hook may change on a built model. The others
#: (``num_groups``, ``group_size``, ``alpha``, ``eps``, ``affine``) decide the
#: layout bounds and checkpoint shapes, so they belong in ``norm_cfg``.
RUNTIME_DGN_OPTIONS = ("momentum", "track_channel_stats", "cluster_features", "seed", "n_init", "max_iter")

#: Totals pushed to the message hub; the ``train/`` prefix is what
#: ``LogProcessor`` collects for the text log, the json log and vis backends.
SCALAR_PREFIX = "train/dgn_"


def _check_runtime_options(options: dict) -> dict:
    unsupported = sorted(set(options) - set(RUNTIME_DGN_OPTIONS))
    if unsupported:
        raise TypeError(
            f"DGNRegroupHook got unsupported DGN option(s) {unsupported}; the hook can change "
            f"{list(RUNTIME_DGN_OPTIONS)} and 'percentile'. Set layout options such as "
            f"num_groups/group_size/alpha in norm_cfg=dict(type='DGN', ...)."
        )
    DynamicGroupNorm(4, num_groups=2, **options)  # same validation as the layer's
    if "cluster_features" in options:
        options = dict(options, cluster_features=tuple(options["cluster_features"]))
    return options


def follow_groupings(target, source) -> int:
    """Give ``target``'s DGN layers the groupings of ``source``'s (matched by name).

    An averaged copy of the model (``EMAHook``) must normalise with the same
    groups as the model it averages; mmengine copies integer buffers only when
    ``update_buffers=False`` and then only at its next update. Returns the
    number of layers that changed.
    """
    source_layers = dict(dgn_layers(source))
    changed = 0
    for name, layer in dgn_layers(target):
        origin = source_layers.get(name)
        if origin is None or layer.num_channels != origin.num_channels:
            continue
        if not layer.group_id.equal(origin.group_id.to(layer.group_id.device)):
            layer.set_group_ids(origin.group_id)
            changed += 1
        layer.num_regroups.copy_(origin.num_regroups)
    return changed


class DGNRegroupHook(Hook):
    """Regroup DGN layers every ``interval`` iterations (or epochs).

    Args:
        interval: regroup after every ``interval`` finished iterations
            (epochs with ``by_epoch=True``), counted from the start of training.
        by_epoch: count epochs instead of iterations. Iteration-based is the
            default because ``IterBasedTrainLoop`` (mmseg's) calls epoch hooks
            only once per run.
        start, stop: regroup only after ``start`` and up to ``stop`` finished
            steps (``stop=None``: until the end).
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
        **dgn_options: runtime DGN options applied to every layer before
            training, see :data:`RUNTIME_DGN_OPTIONS`.
    """

    # After the model step, before EMAHook (NORMAL) copies buffers, LoggerHook
    # (BELOW_NORMAL) logs scalars and CheckpointHook (VERY_LOW) saves.
    priority = "ABOVE_NORMAL"

    checkpoint_key = "dgn_regroup_hook"

    def __init__(
        self,
        interval: int = 1000,
        by_epoch: bool = False,
        start: int = 0,
        stop: Optional[int] = None,
        percentile: Optional[float] = None,
        only_trainable: bool = True,
        log_per_layer: bool = True,
        records_file: Optional[str] = RECORDS_FILE,
        **dgn_options,
    ) -> None:
        self.schedule = RegroupSchedule(interval=interval, start=start, stop=stop)
        self.by_epoch = by_epoch
        if percentile is not None and not 0.0 <= percentile <= 1.0:
            raise ValueError(f"percentile must lie in [0, 1], got {percentile}")
        self.percentile = percentile
        self.only_trainable = only_trainable
        self.log_per_layer = log_per_layer
        self.dgn_options = _check_runtime_options(dgn_options)
        self.records_file = records_file
        self.records: Optional[RegroupRecords] = None
        self.regroups_done = 0

    # ------------------------------------------------------------------ set-up
    def before_train(self, runner) -> None:
        layers = dgn_layers(runner.model)
        if not layers:
            runner.logger.warning("DGNRegroupHook: the model has no DGN layers, nothing will be regrouped.")
        for _, layer in layers:
            for option, value in self.dgn_options.items():
                setattr(layer, option, value)
        if self.by_epoch and isinstance(runner.train_loop, IterBasedTrainLoop):
            runner.logger.warning(
                "DGNRegroupHook(by_epoch=True) with an iteration-based loop: epoch hooks run once per run, "
                "so at most one regroup happens. Use by_epoch=False."
            )
        self._start_records(runner)
        total = runner.max_epochs if self.by_epoch else runner.max_iters
        warning = self.schedule.final_step_warning(total, self._unit)
        if warning is not None:
            runner.logger.warning(warning)
        runner.logger.info(
            f"DGNRegroupHook: {len(layers)} DGN layers, regroup every {self.schedule.interval} "
            f"{self._unit} from {self.schedule.start}"
            + (f" to {self.schedule.stop}" if self.schedule.stop is not None else "")
        )

    def _start_records(self, runner) -> None:
        # before_train runs after the checkpoint is loaded: the schedule says where a resumed run stands.
        if self.records_file is None or not is_main_process():
            return
        self.records = RegroupRecords(os.path.join(runner.work_dir, self.records_file))
        kept = self.records.start(self.schedule.last_regroup_step)
        warning = self.records.set_aside_warning()
        if warning is not None:
            runner.logger.warning(f"DGNRegroupHook: {warning}")
        runner.logger.info(f"DGNRegroupHook: regroup records go to {self.records.path} ({kept} kept from before)")

    @property
    def _unit(self) -> str:
        return "epochs" if self.by_epoch else "iterations"

    # ---------------------------------------------------------------- schedule
    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self.by_epoch:
            self._regroup_if_due(runner, runner.iter + 1)  # runner.iter counts from 0

    def after_train_epoch(self, runner) -> None:
        if self.by_epoch:
            self._regroup_if_due(runner, runner.epoch + 1)

    def _regroup_if_due(self, runner, step: int) -> None:
        if not self.schedule.is_due(step):
            return
        reports = regroup_model(runner.model, only_trainable=self.only_trainable, percentile=self.percentile)
        self.schedule.mark_done(step)
        self.regroups_done += 1
        self._update_averaged_models(runner)
        self._log(runner, step, reports)
        if self.records is not None:
            self.records.append(regroup_record(step, runner.model, reports))

    def _update_averaged_models(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        for hook in runner.hooks:
            averaged = getattr(hook, "ema_model", None)
            if isinstance(averaged, BaseAveragedModel):
                follow_groupings(averaged.module, model)

    # ----------------------------------------------------------------- logging
    def _log(self, runner, step: int, reports) -> None:
        unit = "epoch" if self.by_epoch else "iter"
        runner.logger.info(describe_regroup(reports, self.regroups_done, f"{unit} {step}", self.log_per_layer))
        for key, value in regroup_scalars(reports, self.regroups_done).items():
            runner.message_hub.update_scalar(SCALAR_PREFIX + key, value)

    # ------------------------------------------------------------- checkpoints
    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[self.checkpoint_key] = dict(schedule=self.schedule.state_dict(), regroups_done=self.regroups_done)

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # Only a resumed run continues the calendar; ``load_from`` starts anew.
        state = checkpoint.get(self.checkpoint_key)
        if state is None or not getattr(runner, "_resume", False):
            return
        self.schedule.load_state_dict(state["schedule"])
        self.regroups_done = int(state.get("regroups_done", 0))
