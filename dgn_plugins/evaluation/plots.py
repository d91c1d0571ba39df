"""How DGN's groups evolved: channel-to-group maps, group sizes, intra-group variance.

Two sources give the same :class:`GroupTimeline` per layer:

- regroup records (``{"step", "group_id": {layer: [C ids]}, "reports": [RegroupReport.as_dict()]}``,
  one per regroup, as the hooks and ``tools/demo_core.py`` keep them; read by
  :func:`dgn_plugins.training.records.read_records`) give the variance before
  *and* after each regroup;
- a sequence of checkpoints (mmengine, Detectron2 or plain ``torch.save``)
  gives each checkpoint's grouping, and its intra-group variance of
  ``channel_mean_ema`` (the poster's sigma_k^2, averaged over groups).

Drawing uses ``Figure`` + ``FigureCanvasAgg`` so the caller's matplotlib
backend is left alone. Needs numpy and matplotlib; torch only for checkpoints.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from ..atomic import write_atomically
from ..regrouping.rule import intra_group_variance, within_group_sum_of_squares
from ..training.records import RecordsError, check_records

__all__ = [
    "GroupTimeline", "PlotError", "timelines_from_records", "gn_start", "group_colours", "size_counts",
    "timelines_from_checkpoints", "grouping_state", "select_layers", "plot_timelines", "plot_history",
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
    variance_before: List[float] = field(default_factory=list)  # mean_k var_k per step; NaN where unknown
    variance_after: List[float] = field(default_factory=list)
    variance_label: str = "after regroup"
    # The poster's statistic, sum_k |G_k| var_k of the channel means, and the solver's objective.
    wss_before: List[float] = field(default_factory=list)
    wss_after: List[float] = field(default_factory=list)
    objective_before: List[float] = field(default_factory=list)
    objective_after: List[float] = field(default_factory=list)
    cluster_features: Sequence[str] = ("mean",)

    @property
    def sizes(self) -> np.ndarray:
        """[T, K] channels per group."""
        return np.stack([np.bincount(row, minlength=self.num_groups) for row in self.group_ids])


# ------------------------------------------------------------------ sources
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
        series = {key: [float(rep.get(key, np.nan)) for rep in reports] for key in _REPORT_SERIES}
        steps = [int(r["step"]) for r in rows]
        num_groups = max(int(max(row.max() for row in ids)) + 1,
                         max((int(rep.get("num_groups", 0)) for rep in reports), default=0))
        features = next((tuple(rep["cluster_features"]) for rep in reports if rep.get("cluster_features")), ("mean",))
        if initial is not None and name in initial:
            ids.insert(0, np.asarray(initial[name], dtype=np.int64))
            steps.insert(0, 0)
            for values in series.values():
                values.insert(0, np.nan)
        timelines[name] = GroupTimeline(
            name, steps, np.stack(ids), num_groups,
            series["mean_group_variance_before"], series["mean_group_variance_after"],
            wss_before=series["within_group_ss_before"], wss_after=series["within_group_ss_after"],
            objective_before=series["objective_before"], objective_after=series["objective_after"],
            cluster_features=features)
    return timelines


_REPORT_SERIES = ("mean_group_variance_before", "mean_group_variance_after", "within_group_ss_before",
                  "within_group_ss_after", "objective_before", "objective_after")


def gn_start(records: Sequence[Mapping]) -> Dict[str, List[int]]:
    """GN's contiguous grouping of every layer in the records: DGN's grouping before the first regroup.

    Records hold groupings after each regroup; a run starts from GN's (a run
    loaded from a DGN checkpoint would not, which records cannot tell).
    """
    from ..grouping import default_group_ids

    if not records:
        return {}
    start = {}
    for name, ids in records[0].get("group_id", {}).items():
        report = next((rep for rep in records[0].get("reports", []) if rep.get("name") == name), {})
        num_groups = int(report.get("num_groups") or (max(ids) + 1))
        start[name] = default_group_ids(len(ids), num_groups).tolist()
    return start


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


def _toolkit_checkpoint_globals() -> list:
    """What MMEngine's training checkpoints reference besides tensors, when MMEngine is installed."""
    try:
        from ..openmmlab.checkpoint import mmengine_checkpoint_globals
    except ImportError:  # no MMEngine: its types are not in the allow-list
        return []
    return mmengine_checkpoint_globals()


def timelines_from_checkpoints(paths: Sequence, layers: Optional[Sequence[str]] = None) -> Dict[str, GroupTimeline]:
    """Groupings of every DGN layer across checkpoints, ordered by training step."""
    from ..data.safe_load import UnsafeFileError, load_torch_file

    loaded = []
    for index, path in enumerate(paths):
        path = Path(path)
        if not path.is_file():
            raise PlotError(f"{path}: no such checkpoint")
        try:
            checkpoint = load_torch_file(path, _toolkit_checkpoint_globals())  # weights only: runs no code
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
    _check_checkpoint_groupings(loaded)
    names = layers or list(loaded[0][2])
    timelines = {}
    for name in names:
        missing = [str(p) for _, p, s in loaded if name not in s]
        if missing:
            raise PlotError(f"layer {name!r} missing from {missing}")
        ids = np.stack([s[name]["group_id"] for _, _, s in loaded])
        num_groups = int(ids.max()) + 1
        variance, wss = [], []
        for _, _, s in loaded:
            mean = s[name]["channel_mean_ema"]
            variance.append(np.nan if mean is None else
                            float(intra_group_variance(mean, s[name]["group_id"], num_groups).mean()))
            wss.append(np.nan if mean is None else
                       within_group_sum_of_squares(mean, s[name]["group_id"], num_groups))
        nan = [np.nan] * len(loaded)
        timelines[name] = GroupTimeline(name, [step for step, _, _ in loaded], ids, num_groups,
                                        nan, variance, "at checkpoint", wss_before=nan, wss_after=wss,
                                        objective_before=nan, objective_after=nan)
    return timelines


def _check_checkpoint_groupings(loaded) -> None:
    """The checkpoints' groupings must be one run's: distinct steps, and per layer what
    :func:`~dgn_plugins.training.records.check_records` asks of records (fixed channel count
    and number of groups, ids in ``[0, K)``, no empty group)."""
    for (step, first, _), (next_step, second, _) in zip(loaded, loaded[1:]):
        if step == next_step:
            raise PlotError(f"{first} and {second} are both at step {step}; give one checkpoint per step")
    records = [{"step": step, "group_id": {name: layer["group_id"].tolist() for name, layer in state.items()}}
               for step, _, state in loaded]
    try:
        check_records(records, "checkpoints")
    except RecordsError as error:
        path = next((str(p) for step, p, _ in loaded if step == error.step), "checkpoints")
        raise PlotError(str(error).replace("checkpoints:", f"{path}:", 1)) from None


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
def group_colours(num_groups: int) -> List:
    """One colour per group, neighbouring ids far apart in hue.

    ``tab10`` up to 10 groups; up to 20 ``tab20``'s dark shades then its light
    ones (tab20 pairs them: 0/1 would look alike); beyond, golden-ratio hue
    steps with alternating lightness.
    """
    from matplotlib import colormaps
    from matplotlib.colors import hsv_to_rgb

    if num_groups <= 10:
        return list(colormaps["tab10"].colors[:num_groups])
    if num_groups <= 20:
        tab20 = colormaps["tab20"].colors
        return list(tab20[0::2] + tab20[1::2])[:num_groups]
    return [tuple(hsv_to_rgb(((k * 0.618034) % 1.0, 0.85 if k % 2 else 0.6, 0.75 if k % 3 else 0.95)))
            for k in range(num_groups)]


def size_counts(timeline: GroupTimeline):
    """``(smallest size, counts)``: ``counts[i, t]`` groups have ``smallest + i`` channels at step ``t``."""
    sizes = timeline.sizes
    low, high = int(sizes.min()), int(sizes.max())
    return low, np.stack([np.bincount(row - low, minlength=high - low + 1) for row in sizes]).T


def _draw_sizes(ax, figure, timeline: GroupTimeline) -> None:
    """How many groups have each size, per step (integer axes, counts written in the cells)."""
    from matplotlib.ticker import MaxNLocator

    low, counts = size_counts(timeline)
    high = low + counts.shape[0] - 1
    image = ax.imshow(counts, aspect="auto", origin="lower", cmap="Blues", interpolation="nearest",
                      extent=(-0.5, len(timeline.steps) - 0.5, low - 0.5, high + 0.5), vmin=0)
    if counts.size <= 400:
        for (row, col), count in np.ndenumerate(counts):
            if count:
                ax.text(col, low + row, str(count), ha="center", va="center", fontsize="x-small",
                        color="white" if count > counts.max() / 2 else "black")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xticks(range(len(timeline.steps)), [str(s) for s in timeline.steps],
                  rotation=90 if len(timeline.steps) > 8 else 0)
    ax.set(title=f"group sizes: number of groups of each size ({timeline.num_groups} groups)",
           xlabel="step", ylabel="channels in the group")
    figure.colorbar(image, ax=ax, label="groups", shrink=0.8, ticks=MaxNLocator(integer=True))


def _draw_criterion(ax, timeline: GroupTimeline) -> None:
    """The poster's statistic before/after each regroup and, when it differs, the solver's objective."""
    steps = timeline.steps
    before, after = np.asarray(timeline.wss_before, float), np.asarray(timeline.wss_after, float)
    if not (np.isfinite(before).any() or np.isfinite(after).any()):  # records written before these fields
        before, after = np.asarray(timeline.variance_before, float), np.asarray(timeline.variance_after, float)
        statistic = "mean group variance of channel means"
    else:
        statistic = "within-group sum of squares of μ"
    lines = []
    if np.isfinite(before).any():
        lines += ax.plot(steps, before, "o-", color="tab:gray", label="before regroup")
    if np.isfinite(after).any():
        lines += ax.plot(steps, after, "s-", color="tab:blue", label=timeline.variance_label)
    ax.set(title=f"poster's criterion: {statistic}", xlabel="step")
    if not lines:
        ax.text(0.5, 0.5, "no statistics", ha="center", va="center", transform=ax.transAxes)
        return
    caption = "Σ_k Σ_{c∈G_k} (μ_c − μ̄_k)²"
    objective_after = np.asarray(timeline.objective_after, float)
    same_as_solver = tuple(timeline.cluster_features) == ("mean",)
    if same_as_solver:
        caption += ": what the solver minimises (1-D k-means on μ), so after ≤ before"
    elif np.isfinite(objective_after).any():
        twin = ax.twinx()
        lines += twin.plot(steps, timeline.objective_before, "o--", color="tab:orange", alpha=0.7,
                           label="solver objective, before")
        lines += twin.plot(steps, objective_after, "s--", color="tab:red", label="solver objective, after")
        twin.set_ylabel("solver objective")
        caption += (f"; the solver minimises its objective on standardised "
                    f"{'+'.join(timeline.cluster_features)} (dashed), so μ's statistic may rise")
    ax.legend(lines, [line.get_label() for line in lines], fontsize="small")
    ax.text(0.0, -0.22, caption, transform=ax.transAxes, fontsize="x-small", va="top", wrap=True)


def plot_timelines(timelines: Sequence[GroupTimeline], path, title: str = "") -> None:
    """One row per layer: group of each channel, group sizes, the regroup criterion."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    if not timelines:
        raise PlotError("no layer to plot")
    figure = Figure(figsize=(16, 4.0 * len(timelines)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(timelines), 3, squeeze=False)
    for row, timeline in zip(axes, timelines):
        steps = timeline.steps
        num = timeline.num_groups
        colours = group_colours(num)
        image = row[0].imshow(timeline.group_ids.T, aspect="auto", cmap=ListedColormap(colours),
                              interpolation="nearest", vmin=-0.5, vmax=num - 0.5)
        row[0].set(title=f"{timeline.layer}: group of each channel", xlabel="step", ylabel="channel")
        labels = [("0 (GN)" if s == 0 and i == 0 else str(s)) for i, s in enumerate(steps)]
        row[0].set_xticks(list(range(len(steps))), labels, rotation=90 if len(steps) > 8 else 0)
        if num <= 20:
            figure.colorbar(image, ax=row[0], ticks=range(num), label="group", shrink=0.8)
        _draw_sizes(row[1], figure, timeline)
        _draw_criterion(row[2], timeline)
    if title:
        figure.suptitle(title)
    write_atomically(path, lambda staging: figure.savefig(staging, format="png", dpi=100))


def plot_history(initial, history, layer, path) -> None:
    """``tools/demo_core.py``'s figure: one layer, its GN start then each regroup record."""
    timelines = timelines_from_records(history, [layer], initial={layer: initial})
    plot_timelines([timelines[layer]], path)
