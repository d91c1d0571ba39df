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
import sys

from dgn_plugins.evaluation.plots import (
    PlotError,
    gn_start,
    plot_timelines,
    read_records,
    select_layers,
    timelines_from_checkpoints,
    timelines_from_records,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoints", nargs="+", help="checkpoints of one run (ordered by their training step)")
    source.add_argument("--records", help="regroup records (.jsonl, or JSON with a 'regroups' list)")
    parser.add_argument("--layers", nargs="+", help="layer names or regular expressions (default: first, middle, last)")
    parser.add_argument("--out", default="groups.png", help="PNG to write")
    parser.add_argument("--title", default="")
    args = parser.parse_args(argv)
    try:
        if args.checkpoints:
            everything = timelines_from_checkpoints(args.checkpoints)
        else:
            records = read_records(args.records)
            everything = timelines_from_records(records, initial=gn_start(records))  # step 0: GN's grouping
        chosen = select_layers(list(everything), args.layers)
        plot_timelines([everything[name] for name in chosen], args.out, args.title)
    except (PlotError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({len(chosen)} layers: {', '.join(chosen)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
