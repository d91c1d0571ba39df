"""How DGN's groups evolved: channel-to-group maps, group sizes, intra-group variance.

Two sources give the same :class:`GroupTimeline` per layer:

- regroup records (``{"step", "group_id": {layer: [C ids]}, "reports": [RegroupReport.as_dict()]}``,
  one per regroup: what ``tools/demo_core.py`` keeps, one JSON object per line
  in a ``.jsonl`` file) give the variance before *and* after each regroup;
- a sequence of checkpoints (mmengine, Detectron2 or plain ``torch.save``)
  gives each checkpoint's grouping, and its intra-group variance of
  ``channel_mean_ema`` (the poster's sigma_k^2, averaged over groups).

Drawing uses ``Figure`` + ``FigureCanvasAgg`` so the caller's matplotlib
backend is left alone. Needs numpy and matplotlib; torch only for checkpoints.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from .regroup import intra_group_variance

__all__ = [
    "GroupTimeline", "PlotError", "timelines_from_records", "read_records", "timelines_from_checkpoints",
    "grouping_state", "select_layers", "plot_timelines", "plot_history",
]


class PlotError(ValueError):
    """An input plot_groups cannot use; the message says which and why."""


@dataclass
class GroupTimeline:
    """One layer's groupings over training (``group_ids`` is [T, C])."""

    layer: str
    steps: List[int]
    group_ids: np.ndarray
    num_groups: int
    variance_before: List[float] = field(default_factory=list)  # per step; NaN where unknown
    variance_after: List[float] = field(default_factory=list)
    variance_label: str = "after regroup"

    @property
    def sizes(self) -> np.ndarray:
        """[T, K] channels per group."""
        return np.stack([np.bincount(row, minlength=self.num_groups) for row in self.group_ids])


# ------------------------------------------------------------------ sources
def read_records(path) -> List[dict]:
    """Regroup records from a ``.jsonl`` (one per line) or a JSON list / ``{"regroups": [...]}``."""
    path = Path(path)
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    records = data.get("regroups", data) if isinstance(data, dict) else data
    if not isinstance(records, list):
        raise PlotError(f"{path}: expected a list of regroup records")
    return records


def timelines_from_records(records: Sequence[Mapping], layers: Optional[Sequence[str]] = None,
                           initial: Optional[Mapping[str, Sequence[int]]] = None) -> Dict[str, GroupTimeline]:
    """Per layer: the grouping after each regroup, and the mean intra-group variance before/after it.

    ``initial`` (layer -> ids at step 0, e.g. GN's contiguous grouping) is prepended when given.
    """
    if not records:
        raise PlotError("no regroup records")
    names = layers or list(records[0]["group_id"])
    timelines = {}
    for name in names:
        rows = [r for r in records if name in r.get("group_id", {})]
        if not rows:
            raise PlotError(f"layer {name!r} is in no regroup record")
        ids = [np.asarray(r["group_id"][name], dtype=np.int64) for r in rows]
        reports = [next((rep for rep in r.get("reports", []) if rep.get("name") == name), {}) for r in rows]
        before = [float(rep.get("mean_group_variance_before", np.nan)) for rep in reports]
        after = [float(rep.get("mean_group_variance_after", np.nan)) for rep in reports]
        steps = [int(r["step"]) for r in rows]
        num_groups = max(int(max(row.max() for row in ids)) + 1,
                         max((int(rep.get("num_groups", 0)) for rep in reports), default=0))
        if initial is not None and name in initial:
            ids.insert(0, np.asarray(initial[name], dtype=np.int64))
            steps.insert(0, 0)
            before.insert(0, np.nan)
            after.insert(0, np.nan)
        timelines[name] = GroupTimeline(name, steps, np.stack(ids), num_groups, before, after)
    return timelines


def grouping_state(checkpoint: Mapping) -> Dict[str, dict]:
    """``{layer: {"group_id", "channel_mean_ema"}}`` of a loaded checkpoint.

    The state dict is the checkpoint itself or sits under ``state_dict``
    (mmengine) or ``model`` (Detectron2); a ``module.`` prefix is dropped.
    """
    state = checkpoint
    for key in ("state_dict", "model"):
        if isinstance(checkpoint.get(key), Mapping):
            state = checkpoint[key]
            break
    layers: Dict[str, dict] = {}
    for key, value in state.items():
        if key.endswith(".group_id"):
            name = key[: -len(".group_id")]
            mean = state.get(name + ".channel_mean_ema")
            name = name[len("module."):] if name.startswith("module.") else name
            layers[name] = {"group_id": np.asarray(value.cpu() if hasattr(value, "cpu") else value, dtype=np.int64),
                            "channel_mean_ema": None if mean is None else np.asarray(
                                mean.cpu() if hasattr(mean, "cpu") else mean, dtype=np.float64)}
    return layers


def _checkpoint_step(checkpoint: Mapping, path: Path, index: int) -> int:
    """Training step: mmengine ``meta.iter``, Detectron2 ``iteration``, else digits in the file name."""
    meta = checkpoint.get("meta") if isinstance(checkpoint.get("meta"), Mapping) else {}
    for value in (meta.get("iter"), checkpoint.get("iteration"), meta.get("epoch"), checkpoint.get("epoch")):
        if value is not None:
            return int(value)
    digits = re.findall(r"\d+", path.stem)
    return int(digits[-1]) if digits else index


def timelines_from_checkpoints(paths: Sequence, layers: Optional[Sequence[str]] = None) -> Dict[str, GroupTimeline]:
    """Groupings of every DGN layer across checkpoints, ordered by training step."""
    from .safe_load import UnsafeFileError, load_torch_file

    loaded = []
    for index, path in enumerate(paths):
        path = Path(path)
        if not path.is_file():
            raise PlotError(f"{path}: no such checkpoint")
        try:
            checkpoint = load_torch_file(path)  # weights only: a shared checkpoint runs no code
        except UnsafeFileError as err:
            raise PlotError(f"{path}: refused: {err}") from None
        except Exception as err:  # torch raises several types for a bad file
            reason = " ".join(str(err).split())[:300]
            raise PlotError(f"{path}: cannot be loaded as a torch checkpoint ({reason})") from None
        if not isinstance(checkpoint, Mapping):
            raise PlotError(f"{path}: not a checkpoint dict")
        state = grouping_state(checkpoint)
        if not state:
            raise PlotError(f"{path}: no DGN layers (no '*.group_id' buffers in its state dict)")
        loaded.append((_checkpoint_step(checkpoint, path, index), path, state))
    loaded.sort(key=lambda item: item[0])
    names = layers or list(loaded[0][2])
    timelines = {}
    for name in names:
        missing = [str(p) for _, p, s in loaded if name not in s]
        if missing:
            raise PlotError(f"layer {name!r} missing from {missing}")
        ids = np.stack([s[name]["group_id"] for _, _, s in loaded])
        num_groups = int(ids.max()) + 1
        variance = []
        for _, _, s in loaded:
            mean = s[name]["channel_mean_ema"]
            variance.append(np.nan if mean is None else
                            float(intra_group_variance(mean, s[name]["group_id"], num_groups).mean()))
        timelines[name] = GroupTimeline(name, [step for step, _, _ in loaded], ids, num_groups,
                                        [np.nan] * len(loaded), variance, "at checkpoint")
    return timelines


def select_layers(available: Sequence[str], requested: Optional[Iterable[str]] = None, default_count: int = 3) -> List[str]:
    """Exact names or regular expressions (``re.search``); default: first, middle and last layer."""
    available = list(available)
    if not requested:
        if len(available) <= default_count:
            return available
        picks = np.linspace(0, len(available) - 1, default_count).round().astype(int)
        return [available[i] for i in dict.fromkeys(picks.tolist())]
    chosen: List[str] = []
    for pattern in requested:
        if pattern in available:
            matches = [pattern]
        else:
            try:
                matches = [name for name in available if re.search(pattern, name)]
            except re.error as err:
                raise PlotError(f"--layers {pattern!r} is neither a layer name nor a valid regex ({err})") from err
        if not matches:
            raise PlotError(f"no DGN layer matches {pattern!r}; layers: {', '.join(available)}")
        chosen += [m for m in matches if m not in chosen]
    return chosen


# ------------------------------------------------------------------ drawing
def plot_timelines(timelines: Sequence[GroupTimeline], path, title: str = "") -> None:
    """One row per layer: group of each channel, group sizes, mean intra-group variance."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not timelines:
        raise PlotError("no layer to plot")
    figure = Figure(figsize=(15, 3.6 * len(timelines)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(timelines), 3, squeeze=False)
    for row, timeline in zip(axes, timelines):
        steps = timeline.steps
        ticks = range(len(steps))
        num = timeline.num_groups  # one colour per group, shared by the map and the size curves
        colours = colormaps["tab20"].colors[:num] if num <= 20 else colormaps["turbo"].resampled(num)(range(num))
        image = row[0].imshow(timeline.group_ids.T, aspect="auto", cmap=ListedColormap(colours),
                              interpolation="nearest", vmin=-0.5, vmax=num - 0.5)
        row[0].set(title=f"{timeline.layer}: group of each channel", xlabel="step", ylabel="channel")
        row[0].set_xticks(list(ticks), [str(s) for s in steps], rotation=90 if len(steps) > 8 else 0)
        if timeline.num_groups <= 20:
            figure.colorbar(image, ax=row[0], ticks=range(timeline.num_groups), label="group", shrink=0.8)
        sizes = timeline.sizes
        row[1].yaxis.set_major_locator(MaxNLocator(integer=True))
        for k in range(timeline.num_groups):
            row[1].plot(steps, sizes[:, k], marker=".", linewidth=1, color=colours[k])
        row[1].set(title=f"group sizes ({timeline.num_groups} groups)", xlabel="step", ylabel="channels")
        before, after = np.asarray(timeline.variance_before, float), np.asarray(timeline.variance_after, float)
        if np.isfinite(before).any():
            row[2].plot(steps, before, "o-", label="before regroup")
        if np.isfinite(after).any():
            row[2].plot(steps, after, "s-", label=timeline.variance_label)
        row[2].set(title="mean intra-group variance of channel means", xlabel="step")
        if np.isfinite(before).any() or np.isfinite(after).any():
            row[2].legend(fontsize="small")
        else:
            row[2].text(0.5, 0.5, "no statistics", ha="center", va="center", transform=row[2].transAxes)
    if title:
        figure.suptitle(title)
    figure.savefig(path, format="png", dpi=100)


def plot_history(initial, history, layer, path) -> None:
    """``tools/demo_core.py``'s figure: one layer, its GN start then each regroup record."""
    timelines = timelines_from_records(history, [layer], initial={layer: initial})
    plot_timelines([timelines[layer]], path)
