"""Metric tables for several labelled result sets, rendered once for both tools.

``compare_coco`` and ``compare_miou`` build a :class:`Comparison` (sections of
metric rows, one value per result set) and hand it to :func:`render` /
:func:`plot_comparison`, so Markdown, CSV, JSON and the bar chart look the same
whichever evaluator produced the numbers. Deltas are always "set minus the
first set", the first set being the baseline (typically GN).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ...atomic import write_atomically, write_text_atomically
from ...cli import ToolParser, distinct, integer, labelled, output_file
from ...cli import run_tool as run_cli_tool
from . import ComparisonError

FORMATS = ("markdown", "csv", "json")


@dataclass
class Section:
    """One block of rows, e.g. the six COCO box APs or the per-class IoUs."""

    title: str
    metrics: List[str]
    values: Dict[str, List[float]]  # result-set label -> one value per metric
    #: optional: label -> the 95% CI half-width of each delta (paired over seeds), shown as "Δ ± h"
    delta_ci: Dict[str, List[float]] = field(default_factory=dict)


@dataclass
class Comparison:
    """Everything a report shows: sections of numbers plus free-text notes."""

    labels: List[str]
    unit: str = "%"
    sections: List[Section] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)

    @property
    def baseline(self) -> str:
        return self.labels[0]

    def add_section(self, title: str, metrics: Sequence[str],
                    values: Dict[str, Sequence[float]]) -> Section:
        missing = [label for label in self.labels if label not in values]
        if missing:
            raise ValueError(f"section {title!r} lacks values for {missing}")
        section = Section(title, list(metrics),
                          {label: [float(v) for v in values[label]] for label in self.labels})
        self.sections.append(section)
        return section

    def delta(self, section: Section, label: str) -> List[float]:
        """``label`` minus the baseline, metric by metric (NaN stays NaN)."""
        base = section.values[self.baseline]
        return [v - b for v, b in zip(section.values[label], base)]


# ----------------------------------------------------------------- rendering

def render(comparison: Comparison, fmt: str = "markdown", digits: int = 2) -> str:
    """The comparison as text in one of :data:`FORMATS`."""
    if fmt == "markdown":
        return render_markdown(comparison, digits)
    if fmt == "csv":
        return render_csv(comparison)
    if fmt == "json":
        return render_json(comparison)
    raise ValueError(f"unknown format {fmt!r}; choose one of {FORMATS}")


def _others(comparison: Comparison) -> List[str]:
    return comparison.labels[1:]


def render_markdown(comparison: Comparison, digits: int = 2) -> str:
    """GitHub-flavoured tables, rounded to ``digits`` for reading."""

    def number(value: float, signed: bool = False) -> str:
        if math.isnan(value):
            return "n/a"
        return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"

    header = ["metric"] + comparison.labels + [f"Δ {label}" for label in _others(comparison)]
    deltas_shown = f"; Δ = set − {comparison.baseline} (baseline)" if _others(comparison) else ""
    lines = [f"Values in {comparison.unit}{deltas_shown}.", ""]
    for section in comparison.sections:
        lines += [f"### {section.title}", "",
                  "| " + " | ".join(header) + " |",
                  "|---" + "|---:" * (len(header) - 1) + "|"]
        deltas = {label: comparison.delta(section, label) for label in _others(comparison)}
        for i, metric in enumerate(section.metrics):
            cells = [metric]
            cells += [number(section.values[label][i]) for label in comparison.labels]
            cells += [number(deltas[label][i], signed=True)
                      + (f" ± {number(section.delta_ci[label][i])}" if label in section.delta_ci else "")
                      for label in _others(comparison)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"Note: {note}" for note in comparison.notes]
    return "\n".join(lines).rstrip("\n") + "\n"


def render_csv(comparison: Comparison) -> str:
    """One flat table, full float precision, for spreadsheets and scripts."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    with_ci = any(section.delta_ci for section in comparison.sections)
    writer.writerow(["section", "metric"] + comparison.labels
                    + [f"delta {label}" for label in _others(comparison)]
                    + ([f"delta {label} ci95" for label in _others(comparison)] if with_ci else []))
    for section in comparison.sections:
        deltas = {label: comparison.delta(section, label) for label in _others(comparison)}
        for i, metric in enumerate(section.metrics):
            writer.writerow([section.title, metric]
                            + [repr(section.values[label][i]) for label in comparison.labels]
                            + [repr(deltas[label][i]) for label in _others(comparison)]
                            + ([repr(section.delta_ci.get(label, [math.nan] * (i + 1))[i])
                                for label in _others(comparison)] if with_ci else []))
    return buffer.getvalue()


def _json_number(value: float) -> Optional[float]:
    return None if math.isnan(value) else value


def comparison_to_dict(comparison: Comparison) -> dict:
    """Plain-data form of the comparison; NaN becomes ``None`` (JSON null)."""
    sections = []
    for section in comparison.sections:
        deltas = {label: comparison.delta(section, label) for label in _others(comparison)}
        rows = [{"metric": metric,
                 "values": {label: _json_number(section.values[label][i])
                            for label in comparison.labels},
                 "deltas": {label: _json_number(deltas[label][i])
                            for label in _others(comparison)}}
                for i, metric in enumerate(section.metrics)]
        if section.delta_ci:
            for i, row in enumerate(rows):
                row["delta_ci95"] = {label: _json_number(values[i]) for label, values in section.delta_ci.items()}
        sections.append({"title": section.title, "rows": rows})
    return {"unit": comparison.unit, "baseline": comparison.baseline,
            "labels": list(comparison.labels), "sections": sections,
            "notes": list(comparison.notes)}


def render_json(comparison: Comparison) -> str:
    return json.dumps(comparison_to_dict(comparison), indent=2, allow_nan=False) + "\n"


# ----------------------------------------------------------------- plotting

def plot_comparison(comparison: Comparison, path: Path) -> None:
    """Grouped bar chart, one panel per section, written with the Agg canvas.

    Uses ``Figure`` + ``FigureCanvasAgg`` directly rather than pyplot so the
    global matplotlib backend of the calling process is left alone.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sections = comparison.sections
    widest = max((len(s.metrics) for s in sections), default=1)
    width = min(max(6.0, 0.3 * widest * len(comparison.labels) + 2.0), 60.0)
    figure = Figure(figsize=(width, 3.2 * max(len(sections), 1)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(max(len(sections), 1), 1, squeeze=False)[:, 0]
    bar_width = 0.8 / len(comparison.labels)
    for ax, section in zip(axes, sections):
        x = np.arange(len(section.metrics))
        for k, label in enumerate(comparison.labels):
            ax.bar(x + (k - (len(comparison.labels) - 1) / 2) * bar_width,
                   section.values[label], bar_width, label=label)
        ax.set_title(section.title)
        ticks = [textwrap.fill(metric, 16) for metric in section.metrics]
        ax.set_xticks(x, ticks, rotation=90 if len(section.metrics) > 8 else 0)
        ax.set_ylabel(comparison.unit)
        ax.legend(fontsize="small")
    try:
        write_atomically(path, lambda staging: figure.savefig(staging, format="png"))
    except OSError as err:
        raise ComparisonError(f"{path}: cannot write the plot ({err})") from err


# ----------------------------------------------------------------- command line

def add_result_sets(parser: argparse.ArgumentParser, *flags: str, path_type: Callable, help: str) -> None:
    """The ``LABEL=PATH ...`` option of a comparison: both parts given (a bare ``PATH`` is labelled by
    its file stem), the path checked by ``path_type``, every label once."""
    parser.add_argument(*flags, required=True, nargs="+", metavar="LABEL=PATH", type=labelled(path_type),
                        action=distinct(key=lambda pair: pair.label, what="label ",
                                        why="result-set labels must be unique: name them as LABEL=PATH"),
                        help=help)


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="markdown",
                        help="report format (default: markdown)")
    parser.add_argument("--output", type=output_file,
                        help="write the report here instead of stdout (never one of the inputs)")
    parser.add_argument("--plot", type=output_file, help="also draw a grouped bar chart into this PNG")
    parser.add_argument("--digits", type=integer(0, 15), default=2,
                        help="decimals shown in Markdown (CSV/JSON keep full precision)")


def emit(comparison: Comparison, args: argparse.Namespace) -> None:
    """Write the report (and plot) where the shared output arguments say."""
    text = render(comparison, args.format, args.digits)
    if args.output is None:
        sys.stdout.write(text)
    else:
        try:
            write_text_atomically(args.output, text)
        except OSError as err:
            raise ComparisonError(f"{args.output}: cannot write the report ({err})") from err
    if args.plot is not None:
        plot_comparison(comparison, args.plot)


def run_tool(argv: Optional[Sequence[str]], parser: ToolParser,
             compare: Callable[[argparse.Namespace], Comparison]) -> int:
    """Parse (every option checked, :mod:`dgn_plugins.cli`), compare, emit; a :class:`ComparisonError`
    becomes one line and exit status 2, as a usage error does."""
    return run_cli_tool(parser, argv, lambda args: emit(compare(args), args), errors=(ComparisonError,))
