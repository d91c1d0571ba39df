"""Plot how DGN's channel groups evolved during training.

From a sequence of checkpoints (mmengine, Detectron2 or torch.save; any state
dict holding ``*.group_id`` buffers) or from regroup records (``.jsonl``, one
``{"step", "group_id": {layer: ids}, "reports": [...]}`` per regroup, as
tools/demo_core.py keeps them), draw for each chosen layer: the group of every
channel over training (records start from GN's grouping at step 0), how many
groups have each size, and the poster's criterion, the within-group sum of
squares of the channel means (before/after each regroup from records, with the
solver's objective when it clusters on other statistics; per checkpoint,
computed from ``channel_mean_ema``).

    python tools/plot_groups.py --checkpoints work_dirs/dgn/iter_*.pth --out groups.png
    python tools/plot_groups.py --records work_dirs/dgn/dgn_groups.jsonl --layers 'backbone\\.layer4' --out groups.png
"""
from __future__ import annotations

import argparse
import os
import sys

from dgn_plugins.cli import ToolParser, checkpoint_file, distinct, existing_file, output_file, run_tool
from dgn_plugins.evaluation.plots import (
    PlotError,
    gn_start,
    plot_timelines,
    select_layers,
    timelines_from_checkpoints,
    timelines_from_records,
)
from dgn_plugins.training.records import RecordsError, read_records


def build_parser() -> ToolParser:
    parser = ToolParser(prog="plot_groups.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoints", nargs="+", type=checkpoint_file, metavar="CHECKPOINT",
                        action=distinct(key=os.path.realpath, what="checkpoint "),
                        help="checkpoints of one run (ordered by their training step)")
    source.add_argument("--records", type=existing_file, help="regroup records (.jsonl, or JSON with a 'regroups' list)")
    parser.add_argument("--layers", nargs="+", help="layer names or regular expressions (default: first, middle, last)")
    parser.add_argument("--out", default="groups.png", type=output_file, help="PNG to write (never one of the inputs)")
    parser.add_argument("--title", default="")
    return parser


def plot(args) -> None:
    if args.checkpoints:
        everything = timelines_from_checkpoints(args.checkpoints)
    else:
        records = read_records(args.records, warn=lambda message: print(f"warning: {message}", file=sys.stderr))
        if not records:
            raise PlotError(f"{args.records}: no regroup records")
        everything = timelines_from_records(records, initial=gn_start(records))  # step 0: GN's grouping
    chosen = select_layers(list(everything), args.layers)
    plot_timelines([everything[name] for name in chosen], args.out, args.title)
    print(f"wrote {args.out} ({len(chosen)} layers: {', '.join(chosen)})")


def main(argv=None) -> int:
    return run_tool(build_parser(), argv, plot, errors=(PlotError, RecordsError, OSError))


if __name__ == "__main__":
    sys.exit(main())
