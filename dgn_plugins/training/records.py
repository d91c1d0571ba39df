"""Regroup records: one JSON line per regroup, the input of ``tools/plot_groups.py --records``.

A record is ``{"step": s, "group_id": {layer: [C ids]}, "reports":
[RegroupReport.as_dict(), ...]}``: every DGN layer's grouping right after the
regroup (frozen layers included, so a record is a whole snapshot) and what the
regroup did per layer (variance before/after). Both toolkit hooks write them
through :class:`RegroupRecords`, and :func:`read_records` reads them back for
``tools/plot_groups.py``, so the format lives here only.
"""
from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from torch import nn

from ..atomic import write_atomically
from ..regrouping.rule import RegroupReport
from .model import dgn_layers

__all__ = ["RECORDS_FILE", "RecordsError", "RegroupRecords", "regroup_record", "read_records", "check_records"]

#: File name the hooks use inside a run's work/output directory.
RECORDS_FILE = "dgn_groups.jsonl"


class RecordsError(ValueError):
    """A records file that is not one run's regroups; the message names the file, and the line or layer and step
    (:attr:`step`: the step of the record at fault, when there is one)."""

    def __init__(self, message: str, step: Optional[int] = None) -> None:
        super().__init__(message)
        self.step = step


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
        return [record for _, record in _lines(self.path) if isinstance(record, dict) and "step" in record]

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

        def write(staging: str) -> None:
            with open(staging, "w") as f:
                f.writelines(json.dumps(record) + "\n" for record in records)

        write_atomically(self.path, write)


# ------------------------------------------------------------------ reading back
_NOT_JSON = object()


def _lines(path) -> Iterator[Tuple[int, object]]:
    """``(line number, parsed JSON or _NOT_JSON)`` of every non-blank line."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except ValueError:
                    yield number, _NOT_JSON


def read_records(path, warn: Optional[Callable[[str], None]] = None) -> List[dict]:
    """The records of a ``.jsonl`` file (one per line), or of a JSON list or ``{"regroups": [...]}``
    (``tools/demo_core.py``'s ``results.json``), checked by :func:`check_records`.

    A last line that is not JSON is what a run killed while writing leaves: it is
    skipped, and ``warn`` (default: :func:`warnings.warn`) told so with its line
    number. Any other line that is not a record makes the file unreadable
    (:class:`RecordsError`), as does a record that contradicts a DGN layer.
    """
    path = os.fspath(path)
    try:
        records = _read(path, warn or warnings.warn)
    except UnicodeDecodeError:
        raise RecordsError(f"{path}: not a text file; records are JSON lines") from None
    check_records(records, path)
    return records


def _read(path: str, warn: Callable[[str], None]) -> List[dict]:
    if path.endswith(".jsonl"):
        lines = list(_lines(path))
        if lines and lines[-1][1] is _NOT_JSON:
            warn(f"{path}: line {lines[-1][0]} is not JSON (a write cut short?): skipped")
            lines.pop()
        records = []
        for number, record in lines:
            if not (isinstance(record, dict) and "step" in record and isinstance(record.get("group_id"), dict)):
                raise RecordsError(f"{path}: line {number} is not a regroup record "
                                   '({"step": s, "group_id": {layer: ids}, "reports": [...]})')
            records.append(record)
    else:
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except ValueError as error:
                raise RecordsError(f"{path}: not JSON ({error}); records are .jsonl, one per line") from None
        records = data.get("regroups") if isinstance(data, dict) else data
        if not isinstance(records, list) or not all(isinstance(r, dict) and isinstance(r.get("group_id"), dict)
                                                    and "step" in r for r in records):
            raise RecordsError(f"{path}: expected a list of regroup records, or {{\"regroups\": [...]}}")
    return records


def check_records(records: Sequence[Mapping], source: str = "records") -> None:
    """Refuse records no DGN run writes, naming the layer and step: a step that is not a whole
    number or does not follow the one before, a layer whose channel count or number of groups
    changes, group ids outside ``[0, K)``, an empty group (no DGN group ever is)."""
    previous = None
    channels: Dict[str, Tuple[int, int]] = {}  # layer -> (C, step first seen)
    groups: Dict[str, Tuple[int, int]] = {}  # layer -> (K, step it was learnt from)
    for index, record in enumerate(records):
        step = record["step"]
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise RecordsError(f"{source}: record {index + 1} has step {step!r}; a step is a whole number "
                               "of finished iterations")
        if previous is not None and step <= previous:
            raise RecordsError(f"{source}: step {step} follows step {previous}; one run's records go forward "
                               "(two runs' records in one file?)", step)
        previous = step
        reported = {rep.get("name"): rep.get("num_groups") or None  # 0: a report without it
                    for rep in record.get("reports") or [] if isinstance(rep, Mapping)}
        for layer, ids in record["group_id"].items():
            _check_layer_ids(source, layer, step, ids, reported.get(layer), channels, groups)


def _check_layer_ids(source, layer, step, ids, reported_k, channels, groups) -> None:
    def fail(message: str):
        raise RecordsError(f"{source}: layer {layer} at step {step}: {message}", step)

    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        fail("group_id must be a list of integer ids")
    if not ids:
        fail("group_id is empty; a layer has at least one channel")
    count, first = channels.setdefault(layer, (len(ids), step))
    if len(ids) != count:
        fail(f"{len(ids)} channels, but {count} at step {first}; a layer keeps its channels")
    if reported_k is not None:
        if not isinstance(reported_k, int) or isinstance(reported_k, bool) or reported_k < 1:
            fail(f"the report's num_groups is {reported_k!r}, not a positive integer")
        num_groups, learnt = groups.setdefault(layer, (reported_k, step))
        if reported_k != num_groups:
            fail(f"{reported_k} groups, but {num_groups} at step {learnt}; a layer keeps its number of groups")
    else:
        num_groups, learnt = groups.setdefault(layer, (max(ids) + 1, step))
    low, high = min(ids), max(ids)
    if low < 0 or high >= num_groups:
        fail(f"group id {low if low < 0 else high} outside [0, {num_groups}) (K={num_groups}, from step {learnt})")
    used = set(ids)
    empty = [k for k in range(num_groups) if k not in used]
    if empty:
        fail(f"group {empty[0]} of {num_groups} has no channel ({len(empty)} empty); a DGN group never empties")
