"""Regroup records: one JSON line per regroup, the input of ``tools/plot_groups.py --records``.

A record is ``{"step": s, "group_id": {layer: [C ids]}, "reports":
[RegroupReport.as_dict(), ...]}``: every DGN layer's grouping right after the
regroup (frozen layers included, so a record is a whole snapshot) and what the
regroup did per layer (variance before/after). Both toolkit hooks write them
through :class:`RegroupRecords`, so the format lives here only;
:func:`dgn_plugins.evaluation.plots.read_records` reads them back.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import List, Optional, Sequence

from torch import nn

from ..regrouping.rule import RegroupReport
from .model import dgn_layers

__all__ = ["RECORDS_FILE", "RegroupRecords", "regroup_record"]

#: File name the hooks use inside a run's work/output directory.
RECORDS_FILE = "dgn_groups.jsonl"


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it: put it back at once
    os.umask(mask)
    return mask


def regroup_record(step: int, model: nn.Module, reports: Sequence[RegroupReport]) -> dict:
    """The record of a regroup that just happened after ``step`` finished steps."""
    return {
        "step": int(step),
        "group_id": {name: layer.group_id.tolist() for name, layer in dgn_layers(model)},
        "reports": [report.as_dict() for report in reports],
    }


class RegroupRecords:
    """A ``.jsonl`` file of regroup records, one line per regroup, appended as training goes.

    Call :meth:`start` once before training with the schedule's last regroup
    step: records up to it stay in the file and the run appends from there, so
    a resumed run continues the file and a rerun never mixes two runs' steps.
    Records after it (a previous run from scratch, or an earlier run past the
    checkpoint being resumed) are not lost: the whole old file is first kept
    beside it as ``<name>.<timestamp>.jsonl`` (:attr:`set_aside`), which the
    hooks log as a warning.
    """

    def __init__(self, path) -> None:
        self.path = os.fspath(path)
        self.set_aside: Optional[str] = None  # where start() kept an earlier run's file
        self.dropped_steps: List[int] = []  # the steps of the records it took out of the file

    def read(self) -> List[dict]:
        """The records in the file; a line that is not JSON (a write cut short) is skipped."""
        if not os.path.exists(self.path):
            return []
        records = []
        with open(self.path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and "step" in record:
                    records.append(record)
        return records

    def start(self, last_regroup_step: int) -> int:
        """Keep the records up to ``last_regroup_step`` (-1: none); returns how many were kept.

        When others were in the file, the old file is first copied to
        :attr:`set_aside` and their steps listed in :attr:`dropped_steps`.
        """
        if not os.path.exists(self.path):
            return 0
        records = self.read()
        kept = [r for r in records if int(r["step"]) <= last_regroup_step]
        self.dropped_steps = [int(r["step"]) for r in records if int(r["step"]) > last_regroup_step]
        if self.dropped_steps:
            self.set_aside = self._set_aside()
        self._rewrite(kept)
        return len(kept)

    def set_aside_warning(self) -> Optional[str]:
        """What :meth:`start` moved out of the file, for the hooks' WARNING; None if nothing."""
        if self.set_aside is None:
            return None
        steps = self.dropped_steps
        return (f"{self.path} held {len(steps)} regroup record(s) (steps {steps[0]}..{steps[-1]}) this run does "
                f"not continue (a fresh run, or a resume from an earlier checkpoint); the old file is kept as "
                f"{self.set_aside}")

    def _set_aside(self) -> str:
        """Copy the file to a free ``<stem>.<timestamp>[-n]<suffix>`` beside it."""
        stem, suffix = os.path.splitext(self.path)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(os.path.getmtime(self.path)))
        target, n = f"{stem}.{stamp}{suffix}", 1
        while os.path.exists(target):
            target, n = f"{stem}.{stamp}-{n}{suffix}", n + 1
        shutil.copy2(self.path, target)
        return target

    def append(self, record: dict) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def _rewrite(self, records: Sequence[dict]) -> None:
        """Replace the file in one rename, so an interruption leaves the old or the new file."""
        directory = os.path.dirname(os.path.abspath(self.path))
        handle, staging = tempfile.mkstemp(prefix=".dgn_records", dir=directory)
        try:
            with os.fdopen(handle, "w") as f:
                f.writelines(json.dumps(record) + "\n" for record in records)
            os.chmod(staging, 0o666 & ~_umask())  # mkstemp makes 0600; other outputs follow the umask
            os.replace(staging, self.path)
        except BaseException:
            if os.path.exists(staging):
                os.remove(staging)
            raise
