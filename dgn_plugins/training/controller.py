"""``RegroupController``: regrouping during training, for any training loop.

One sequence, shared by both toolkits' hooks (which only translate their
events and loggers to it) and usable from a plain PyTorch loop: before
training, open the records and say what will happen; after each finished step,
if the schedule says so, regroup the model (ranks synchronised, see
:mod:`dgn_plugins.training.distributed`), count, log, record; and save/restore the
schedule for resume.

Example::

    >>> controller = RegroupController(interval=100, records_file="run/dgn_groups.jsonl")
    >>> controller.before_train(model, total_steps=1000, logger=logging.getLogger("train"))
    >>> for step in range(1, 1001):
    ...     train_one_step(model)
    ...     scalars = controller.after_step(model, step, logger)  # None when no regroup was due
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Optional, Sequence, Union

from torch import nn

from ..regrouping.policy import RegroupPolicy, check_momentum
from ..regrouping.rule import RegroupReport
from .model import dgn_layers, name_layers, regroup_model
from .records import RegroupRecords, regroup_record
from .schedule import RegroupSchedule

__all__ = ["RegroupController", "summarize", "regroup_scalars", "describe_regroup", "STATISTICS_OPTIONS"]

#: Running-statistics options a controller may set on the layers before training
#: (the layer's state, not the regroup policy).
STATISTICS_OPTIONS = ("momentum", "track_channel_stats")


def summarize(reports: Sequence[RegroupReport]) -> dict:
    """Totals over the layers of one regroup."""
    done = [r for r in reports if r.skipped is None]
    return {
        "layers": len(reports),
        "layers_regrouped": len(done),
        "layers_skipped": len(reports) - len(done),
        "groups_changed": sum(r.groups_changed for r in done),
        "channels_moved": sum(r.channels_moved for r in done),
        "groups_dissolved": sum(r.groups_dissolved for r in done),
    }


def regroup_scalars(reports: Sequence[RegroupReport], regroups_done: int) -> dict:
    """The totals both toolkit hooks log as scalars after a regroup."""
    totals = summarize(reports)
    keys = ("groups_changed", "channels_moved", "groups_dissolved", "layers_regrouped", "layers_skipped")
    return dict({key: totals[key] for key in keys}, regroups=regroups_done)


def describe_regroup(reports: Sequence[RegroupReport], regroups_done: int, when: str, per_layer: bool = True) -> str:
    """The log text for one regroup: a totals line, then one line per layer."""
    totals = summarize(reports)
    lines = [
        f"DGN regroup #{regroups_done} after {when}: {totals['groups_changed']} groups changed, "
        f"{totals['channels_moved']} channels moved, {totals['groups_dissolved']} groups dissolved in "
        f"{totals['layers_regrouped']} layers ({totals['layers_skipped']} skipped)"
    ]
    if per_layer:
        for report in reports:
            if report.skipped is not None:
                lines.append(f"  {report.name}: skipped ({report.skipped})")
            else:
                lines.append(f"  {report.name}: {report.groups_changed}/{report.num_groups} groups changed, "
                             f"{report.channels_moved} channels moved")
    return "\n".join(lines)


class RegroupController:
    """Regroup a model's DGN layers every ``interval`` finished steps.

    Args:
        interval, start, stop: the schedule (:class:`~dgn_plugins.training.schedule.RegroupSchedule`),
            in steps (ints) or shares of the run (floats in (0, 1)), resolved
            against ``total_steps`` in :meth:`before_train`; by default every
            tenth of the run and none in its last tenth (bench/RESULTS.md).
        policy: overrides the layers' own regroup settings where it sets a field.
        only_trainable: skip eval-mode and frozen layers.
        log_per_layer: log one line per layer besides the totals.
        records_file: ``.jsonl`` file the main process appends a record to per
            regroup (``None``: none), see :class:`~dgn_plugins.training.records.RegroupRecords`.
        unit: what a step is, ``"iteration"`` or ``"epoch"`` (log text only).
        statistics: running-statistics options (:data:`STATISTICS_OPTIONS`)
            set on every layer before training.
    """

    def __init__(
        self,
        interval: Union[int, float] = 0.1,
        *,
        start: Union[int, float] = 0,
        stop: Optional[Union[int, float]] = 0.9,
        policy: Optional[RegroupPolicy] = None,
        only_trainable: bool = True,
        log_per_layer: bool = True,
        records_file: Optional[str] = None,
        unit: str = "iteration",
        statistics: Optional[Dict[str, object]] = None,
    ) -> None:
        self.schedule = RegroupSchedule(interval=interval, start=start, stop=stop)
        self.policy = policy if policy is not None else RegroupPolicy()
        self.only_trainable = only_trainable
        self.log_per_layer = log_per_layer
        self.records_file = records_file
        self.records: Optional[RegroupRecords] = None
        self.unit = unit
        self.statistics = dict(statistics or {})
        unknown = sorted(set(self.statistics) - set(STATISTICS_OPTIONS))
        if unknown:
            raise TypeError(f"unknown running-statistics option(s) {unknown}; known: {list(STATISTICS_OPTIONS)}")
        if "momentum" in self.statistics:
            check_momentum(self.statistics["momentum"])
        self.regroups_done = 0

    @property
    def short_unit(self) -> str:
        return "iter" if self.unit == "iteration" else self.unit

    def before_train(self, model: nn.Module, total_steps: int, logger: logging.Logger, *,
                     is_main_process: bool = True, work_dir: Optional[str] = None) -> int:
        """Open the records, set the statistics options, log the plan; returns the number of DGN layers.

        Call it after a resumed checkpoint is loaded: the schedule says where
        the run stands. A relative ``records_file`` is taken in ``work_dir``.
        """
        if self.records_file is not None and is_main_process:
            self.records = RegroupRecords(os.path.join(work_dir or "", self.records_file))
            kept = self.records.start(self.schedule.last_regroup_step)
            warning = self.records.set_aside_warning()
            if warning is not None:
                logger.warning(f"DGNRegroupHook: {warning}")
            logger.info(f"DGNRegroupHook: regroup records go to {self.records.path} ({kept} kept from before)")
        layers = dgn_layers(model)
        name_layers(model)  # their errors (a wrong input layout) name them
        if not layers:
            logger.warning("DGNRegroupHook: the model has no DGN layers, nothing will be regrouped.")
            return 0
        self.schedule = self.schedule.resolve(total_steps)
        for _, layer in layers:
            for option, value in self.statistics.items():
                setattr(layer, option, value)
        warning = self.schedule.final_step_warning(total_steps, self.unit + "s")
        if warning is not None:
            logger.warning(warning)
        stop = f" to {self.schedule.stop}" if self.schedule.stop is not None else ""
        logger.info(f"DGNRegroupHook: {len(layers)} DGN layers, regroup every {self.schedule.interval} "
                    f"{self.unit}s from {self.schedule.start}{stop}")
        return len(layers)

    def after_step(self, model: nn.Module, step: int, logger: logging.Logger) -> Optional[dict]:
        """Regroup if one is due after ``step`` finished steps; returns the scalars to log, or None."""
        if not self.schedule.is_due(step):
            return None
        reports = regroup_model(model, only_trainable=self.only_trainable, policy=self.policy)
        self.schedule.mark_done(step)
        self.regroups_done += 1
        logger.info(describe_regroup(reports, self.regroups_done, f"{self.short_unit} {step}", self.log_per_layer))
        if self.records is not None:
            self.records.append(regroup_record(step, model, reports))
        return regroup_scalars(reports, self.regroups_done)

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {"schedule": self.schedule.state_dict(), "regroups_done": self.regroups_done}

    def load_state_dict(self, state: dict) -> None:
        self.schedule.load_state_dict(state["schedule"])
        self.regroups_done = int(state.get("regroups_done", 0))
