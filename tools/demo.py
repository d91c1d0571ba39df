#!/usr/bin/env python
"""The demo: GN vs DGN, trained and evaluated side by side, on CPU, no download.

1. Detection: a tiny Mask R-CNN with GN everywhere and its DGN twin
   (configs/demo/mask-rcnn_tiny_{gn,dgn}_demo.py) trained on a generated
   COCO-format shapes set, scored by COCO box and mask AP.
2. Segmentation: the tiny FCN twins (configs/demo/fcn_tiny_{gn,dgn}_demo.py),
   scored by mIoU, when those configs are present (``--skip-seg`` to skip).
3. The plain-PyTorch classification demo, tools/demo_core.py (``--skip-core``).

Both models of a pair start from the same seed and see the same data; DGN
regroups on a schedule (DGNRegroupHook). One pair is one seed, so after each
table the demo prints GN's seed-to-seed spread of every metric, recorded by
bench/demo_spread.py in bench/demo_spread.json (bench/RESULTS.md), and whether
the difference stands out of it. About 15 minutes on 2 CPU cores.

    python tools/demo.py [--work-dir work_dirs/demo] [--skip-seg] [--skip-core]
"""
from __future__ import annotations

import argparse
import gc
import math
import os
import os.path as osp
import sys
import time

from dgn_plugins.cli import ToolParser, integer, output_dir
from dgn_plugins.errors import run_cli
from dgn_plugins.evaluation import demo_noise
from dgn_plugins.openmmlab import launcher as train_tool  # what tools/train.py runs

TOOLS = osp.dirname(osp.abspath(__file__))
ROOT = osp.dirname(TOOLS)

DETECTION = [("GN", "configs/demo/mask-rcnn_tiny_gn_demo.py"), ("DGN", "configs/demo/mask-rcnn_tiny_dgn_demo.py")]
SEGMENTATION = [("GN", "configs/demo/fcn_tiny_gn_demo.py"), ("DGN", "configs/demo/fcn_tiny_dgn_demo.py")]
COCO_KEYS = tuple(f"coco/{t}_mAP{s}" for t in ("bbox", "segm") for s in ("", "_50", "_75", "_s", "_m", "_l"))


def parse_args(argv=None):
    parser = ToolParser(prog="demo.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", type=output_dir, default="work_dirs/demo", help="where runs, logs and predictions go")
    parser.add_argument("--data-root", type=output_dir, default="data/synthetic_coco",
                        help="the generated detection data set (made on first use; a folder of other data is "
                             "refused, never replaced)")
    parser.add_argument("--epochs", type=integer(1), help="detection epochs (default: the configs')")
    parser.add_argument("--skip-seg", action="store_true", help="skip the segmentation pair")
    parser.add_argument("--skip-core", action="store_true", help="skip the plain-PyTorch demo")
    return parser.parse_args(argv)


def train_config(config: str, work_dir: str, overrides: dict):
    """Train one config in this process with tools/train.py's machinery; the finished Runner."""
    cfg = train_tool.load_config(train_tool.parse_args([osp.join(ROOT, config), "--work-dir", str(work_dir)]))
    cfg.merge_from_dict(overrides)
    # The toolkits name their visualizer 'visualizer', a process-wide instance:
    # without a name of its own, the second run would log into the first's folder.
    if isinstance(cfg.get("visualizer"), dict):
        cfg.visualizer.pop("name", None)  # -> the run's experiment name
    runner = train_tool.build_runner(cfg)
    runner.train()
    return runner


def final_val_metrics(runner) -> dict:
    """The last validation's metrics, as RuntimeInfoHook put them in the message hub."""
    return {
        key[len("val/"):]: buffer.current()
        for key, buffer in runner.message_hub.log_scalars.items()
        if key.startswith("val/")
    }


def print_side_by_side(title: str, metrics: dict, keys) -> None:
    labels = list(metrics)
    keys = [k for k in keys if all(k in metrics[label] for label in labels)]
    print(f"\n{title}")
    print(f"{'metric':<20}" + "".join(f"{label:>10}" for label in labels) + f"{'delta':>10}")
    for key in keys:
        values = [float(metrics[label][key]) for label in labels]
        delta = values[-1] - values[0]
        print(f"{key:<20}" + "".join(f"{v:>10.3f}" for v in values) + f"{delta:>+10.3f}")


# ---------------------------------------------------------------- detection
def detection_overrides(data_root: str, work_dir: str, epochs) -> dict:
    ann_val = osp.join(data_root, "annotations", "instances_val.json")
    overrides = {
        f"{split}_dataloader.dataset.data_root": data_root + "/" for split in ("train", "val", "test")
    }
    coco = dict(type="CocoMetric", ann_file=ann_val, metric=["bbox", "segm"], format_only=False)
    # CocoMetric first: DumpDetResults re-encodes the masks it is handed.
    dump = dict(type="DumpDetResults", out_file_path=osp.join(work_dir, "predictions.pkl"))
    overrides["val_evaluator"] = [coco, dump]
    overrides["test_evaluator"] = coco
    if epochs:
        overrides.update({
            "train_cfg.max_epochs": epochs,
            "train_cfg.val_interval": epochs,
            "default_hooks.checkpoint.interval": epochs,
        })
    return overrides


def run_detection(args) -> None:
    from dgn_plugins.data.synthetic_coco import annotation_path, ensure_synthetic_coco

    data_root = ensure_synthetic_coco(str(args.data_root))
    metrics, predictions = {}, {}
    for label, config in DETECTION:
        work_dir = osp.abspath(osp.join(args.work_dir, f"det_{label.lower()}"))
        start = time.time()
        runner = train_config(config, work_dir, detection_overrides(data_root, work_dir, args.epochs))
        metrics[label] = final_val_metrics(runner)
        predictions[label] = osp.join(work_dir, "predictions.pkl")
        print(f"[demo] {label} Mask R-CNN trained and evaluated in {time.time() - start:.0f} s")
        del runner
        gc.collect()
    comparison = print_coco_comparison(annotation_path(data_root, "val"), predictions)
    if comparison is None:
        print_side_by_side("Detection: tiny Mask R-CNN, CocoMetric AP (0-1, -1: no objects of that size)",
                           metrics, COCO_KEYS)
        print("(no seed-to-seed spread for CocoMetric's rounded values: it is recorded for the COCOeval table)")
        return
    gn, dgn = (comparison_metrics(comparison, label) for label in ("GN", "DGN"))
    keys = [k for k in gn if "per-category" not in k and not (math.isnan(gn[k]) and math.isnan(dgn[k]))]
    print_noise("detection", DETECTION, gn, dgn, keys, "AP",
                changed=f"--epochs {args.epochs}" if args.epochs else None)


def print_coco_comparison(gt_path: str, predictions: dict):
    """The GN-vs-DGN table of tools/compare_coco.py (COCOeval on the dumped
    predictions), returned; None when that module is not available."""
    try:
        from dgn_plugins.evaluation.compare.coco import compare_coco
        from dgn_plugins.evaluation.compare.report import render
    except ImportError as error:
        print(f"(dgn_plugins.evaluation.compare unavailable: {error})")
        return None
    comparison = compare_coco(gt_path, list(predictions.items()), per_category=True)
    print("\nDetection: tiny Mask R-CNN on the generated shapes, GN vs DGN (tools/compare_coco.py)")
    print(render(comparison))
    return comparison


def comparison_metrics(comparison, label: str) -> dict:
    """One result set's values in a compare_coco table, keyed 'section/metric'
    (the keys bench/demo_spread.py records)."""
    return {f"{section.title}/{metric}": value
            for section in comparison.sections for metric, value in zip(section.metrics, section.values[label])}


# --------------------------------------------------------------------- noise
def print_noise(part: str, pair, gn: dict, dgn: dict, keys, unit: str, record=None, changed=None) -> None:
    """GN vs DGN next to GN's recorded seed-to-seed spread (bench/demo_spread.py),
    with a one-line reading per metric; says so when nothing applies (no record,
    configs other than those measured, or ``changed``: an option this run changed)."""
    record = demo_noise.load() if record is None else record
    configs = dict(pair)
    gn_seeds = None if changed else demo_noise.recorded(record, part, "GN", osp.join(ROOT, configs["GN"]))
    dgn_seeds = demo_noise.recorded(record, part, "DGN", osp.join(ROOT, configs["DGN"])) if gn_seeds else None
    print(f"\nIs the {part} difference noise? One seed per model above; the spread of GN over seeds ({unit}):")
    if gn_seeds is None:
        why = ("no record" if record is None else f"measured without {changed}" if changed
               else "recorded for other demo settings")
        print(f"(no seed-to-seed spread: {why}; run bench/demo_spread.py, see bench/RESULTS.md)")
        return
    print(f"(measured by `{record.get('command')}` at commit {record.get('commit')}, {record.get('date')}; "
          "bench/RESULTS.md. Band: 95% of GN-vs-GN differences between two seeds fall within it.)")
    print(demo_noise.noise_table(gn, dgn, gn_seeds, dgn_seeds, keys))
    if dgn_seeds is None and (record.get("parts", {}).get(part) or {}).get("DGN"):
        print("(the several-seed DGN figures were recorded for other DGN settings and are not shown)")


# ------------------------------------------------------------- segmentation
def run_segmentation(args) -> None:
    missing = [config for _, config in SEGMENTATION if not osp.isfile(osp.join(ROOT, config))]
    if missing:
        print(f"\n[demo] segmentation skipped: {', '.join(missing)} not found")
        return
    metrics = {}
    for label, config in SEGMENTATION:
        work_dir = osp.abspath(osp.join(args.work_dir, f"seg_{label.lower()}"))
        start = time.time()
        runner = train_config(config, work_dir, {})
        metrics[label] = final_val_metrics(runner)
        print(f"[demo] {label} FCN trained and evaluated in {time.time() - start:.0f} s")
        del runner
        gc.collect()
    metrics = {label: segmentation_metrics(m) for label, m in metrics.items()}
    keys = [k for k in ("mIoU", "mAcc", "aAcc") if all(k in m for m in metrics.values())]
    keys += sorted(k for k in next(iter(metrics.values())) if k not in keys)
    print_side_by_side("Segmentation: tiny FCN on the generated set, validation metrics (%)", metrics, keys)
    print_noise("segmentation", SEGMENTATION, metrics["GN"], metrics["DGN"], keys, "%")


def segmentation_metrics(val: dict) -> dict:
    """The FCN's validation metrics (%), without the timing entries."""
    return {k: float(v) for k, v in val.items() if k not in ("time", "data_time")}


def run_core(args) -> None:
    import runpy

    demo_core = runpy.run_path(osp.join(TOOLS, "demo_core.py"), run_name="demo_core")  # a script, not a module

    print("\n[demo] plain-PyTorch GN vs DGN (tools/demo_core.py)")
    demo_core["main"](["--work-dir", osp.join(str(args.work_dir), "core")])


def main(argv=None) -> None:
    args = parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    start = time.time()
    run_detection(args)
    if not args.skip_seg:
        run_segmentation(args)
    if not args.skip_core:
        run_core(args)
    print(f"\n[demo] done in {(time.time() - start) / 60:.1f} min; runs, logs and predictions in {args.work_dir}")


if __name__ == "__main__":
    sys.exit(run_cli(main, errors=(FileExistsError,)))  # a bad option or data root: one line, status 2
