"""Regroup records: one JSON line per regroup, the input of ``tools/plot_groups.py --records``.

A record is ``{"step": s, "group_id": {layer: [C ids]}, "reports":
[RegroupReport.as_dict(), ...]}``: every DGN layer's grouping right after the
regroup (frozen layers included, so a record is a whole snapshot) and what the
regroup did per layer (variance before/after). Both toolkit hooks write them
through :class:`RegroupRecords`, so the format lives here only;
:func:`dgn_plugins.plots.read_records` reads them back.
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import List, Sequence

from torch import nn

from .model import dgn_layers
from .regroup import RegroupReport

__all__ = ["RECORDS_FILE", "RegroupRecords", "regroup_record"]

#: File name the hooks use inside a run's work/output directory.
RECORDS_FILE = "dgn_groups.jsonl"


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
    step: records after it (written by an earlier run past the checkpoint
    being resumed, or by a previous run from scratch) are dropped, those up to
    it are kept, and the run appends from there. So a resumed run continues
    the file, and a rerun never mixes two runs' steps.
    """

    def __init__(self, path) -> None:
        self.path = os.fspath(path)

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
        """Keep the records up to ``last_regroup_step`` (-1: none); returns how many were kept."""
        if not os.path.exists(self.path):
            return 0
        kept = [r for r in self.read() if int(r["step"]) <= last_regroup_step]
        self._rewrite(kept)
        return len(kept)

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
            os.replace(staging, self.path)
        except BaseException:
            if os.path.exists(staging):
                os.remove(staging)
            raise
