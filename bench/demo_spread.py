#!/usr/bin/env python
"""Seed-to-seed spread of the demo's metrics: a benchmark, not a test.

Trains the demo's configs (tools/demo.py: tiny Mask R-CNN, tiny FCN) once per
seed (MMEngine ``randomness.seed``; the generated data stay the same), scores
each run as the demo does (COCOeval on the dumped predictions; the FCN's
validation metrics) and writes the per-seed values, with the command, commit,
load and each config's fingerprint, to ``bench/demo_spread.json``, which
tools/demo.py reads to print the GN-vs-GN spread next to its differences.
Seed 0 is the demo's own run. Runs finished earlier in ``--work-dir`` are
reused, so an interrupted measurement resumes. One training at a time.

    OMP_NUM_THREADS=1 python bench/demo_spread.py --seeds 0 1 2 3 4 [--models GN DGN]
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import os.path as osp
import platform
import resource
import runpy
import subprocess
import sys
import time
import types

from dgn_plugins.evaluation import demo_noise

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# tools/demo.py is a script: its functions, run as a module of that name
demo = types.SimpleNamespace(**runpy.run_path(osp.join(ROOT, "tools", "demo.py"), run_name="demo"))

PARTS = {"detection": dict(demo.DETECTION), "segmentation": dict(demo.SEGMENTATION)}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--parts", nargs="+", choices=sorted(PARTS), default=["detection", "segmentation"])
    parser.add_argument("--models", nargs="+", choices=["GN", "DGN"], default=["GN"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per training (default 1)")
    parser.add_argument("--work-dir", default="work_dirs/demo_spread")
    parser.add_argument("--data-root", default="data/synthetic_coco")
    parser.add_argument("--out", default=demo_noise.NOISE_FILE, help="the record tools/demo.py reads")
    return parser.parse_args(argv)


def shell(command: str) -> str:
    try:
        return subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "?"


def cpu_seconds() -> float:
    """This process's CPU time plus its finished children's (the data-loader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def detection_metrics(gt_path: str, predictions: str) -> dict:
    """The demo's detection numbers: COCOeval rows, keyed 'section/metric'."""
    from dgn_plugins.evaluation.compare.coco import compare_coco

    return demo.comparison_metrics(compare_coco(gt_path, [("run", predictions)], per_category=True), "run")


def train_one(part: str, model: str, seed: int, args, data_root) -> dict:
    """Train and score one (part, model, seed); cached as metrics.json in its folder."""
    work_dir = osp.abspath(osp.join(args.work_dir, f"{part}_{model.lower()}_seed{seed}"))
    cached = osp.join(work_dir, "metrics.json")
    if osp.isfile(cached):
        with open(cached, encoding="utf-8") as f:
            return json.load(f)
    config = PARTS[part][model]
    overrides = {"randomness.seed": seed}
    if part == "detection":
        overrides.update(demo.detection_overrides(data_root, work_dir, None))
    load_before, start, cpu = shell("uptime"), time.time(), cpu_seconds()
    runner = demo.train_config(config, work_dir, overrides)
    val = demo.final_val_metrics(runner)
    del runner
    gc.collect()
    if part == "detection":
        from dgn_plugins.data.synthetic_coco import annotation_path

        metrics = detection_metrics(annotation_path(data_root, "val"), osp.join(work_dir, "predictions.pkl"))
    else:
        metrics = demo.segmentation_metrics(val)
    result = {"part": part, "model": model, "seed": seed, "metrics": metrics, "commit": args.commit,
              "wall_s": time.time() - start, "cpu_s": cpu_seconds() - cpu,
              "uptime_before": load_before, "uptime_after": shell("uptime")}
    with open(cached, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    return result


def summary_table(record: dict) -> str:
    """Markdown: per part and metric, GN's mean, SD, GN-vs-GN band, largest gap,
    and, when DGN was measured, its mean and the paired DGN-GN difference."""
    lines = []
    for part, models in record["parts"].items():
        gn, dgn = models.get("GN"), models.get("DGN")
        if not gn:
            continue
        head = f"| {part} metric | GN mean | GN SD | GN-vs-GN 95% band | largest GN-GN gap |"
        rule = "|---|---:|---:|---:|---:|"
        if dgn:
            head += " DGN mean | DGN SD | DGN − GN paired (95% CI) |"
            rule += "---:|---:|---:|"
        lines += [f"{part}: {len(gn['seeds'])} GN seeds {gn['seeds']}"
                  + (f", {len(dgn['seeds'])} DGN seeds {dgn['seeds']}" if dgn else ""), "", head, rule]
        for key, values in gn["metrics"].items():
            s = demo_noise.spread(values)
            if s is None:
                lines.append(f"| {key} | n/a | | | |" + (" | | |" if dgn else ""))
                continue
            row = f"| {key} | {s['mean']:.2f} | {s['sd']:.2f} | ±{s['band']:.2f} | {s['largest']:.2f} |"
            if dgn:
                d = demo_noise.spread(dgn["metrics"].get(key, []))
                p = demo_noise.paired_difference(values, dgn["metrics"].get(key, []))
                row += (f" {d['mean']:.2f} | {d['sd']:.2f} |" if d else " n/a | |")
                row += f" {p['mean']:+.2f} ± {p['ci']:.2f} |" if p else " n/a |"
            lines.append(row)
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    os.makedirs(args.work_dir, exist_ok=True)
    # The code this process loaded: HEAD now, not when a later run finishes.
    args.commit = shell("git rev-parse --short HEAD") + (" (uncommitted changes)" if shell("git status --porcelain -uno") else "")
    from dgn_plugins.data.synthetic_coco import ensure_synthetic_coco

    data_root = ensure_synthetic_coco(args.data_root) if "detection" in args.parts else None
    record = {
        "command": "OMP_NUM_THREADS=%s python bench/demo_spread.py %s" % (
            os.environ.get("OMP_NUM_THREADS", "unset"), " ".join(argv if argv is not None else sys.argv[1:])),
        "commit": args.commit,
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} torch thread(s)",
        "uptime_start": shell("uptime"),
        "parts": {},
    }
    start = time.time()
    runs = []
    # Seed-major: a partial measurement already has every part and model at its first seeds.
    for seed in args.seeds:
        for part in args.parts:
            for model in args.models:
                result = train_one(part, model, seed, args, data_root)
                runs.append(result)
                print(f"[demo_spread] {part} {model} seed {seed}: wall {result['wall_s']:.0f} s, "
                      f"CPU {result['cpu_s']:.0f} s; {result['uptime_after']}", flush=True)
    for part in args.parts:
        for model in args.models:
            mine = sorted((r for r in runs if r["part"] == part and r["model"] == model), key=lambda r: r["seed"])
            keys = list(mine[0]["metrics"])
            record["parts"].setdefault(part, {})[model] = {
                "config": PARTS[part][model],
                "fingerprint": demo_noise.fingerprint(osp.join(ROOT, PARTS[part][model]), dgn_defaults=model == "DGN"),
                "seeds": [r["seed"] for r in mine],
                "metrics": {k: [r["metrics"].get(k) for r in mine] for k in keys},
                "wall_s": [round(r["wall_s"], 1) for r in mine],
                "cpu_s": [round(r["cpu_s"], 1) for r in mine],
            }
    record["uptime_end"] = shell("uptime")
    record["wall_s_this_invocation"] = round(time.time() - start, 1)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, allow_nan=True)
        f.write("\n")
    print(f"\n{record['command']}\ncommit {record['commit']}, {record['machine']}\n"
          f"load at start: {record['uptime_start']}\nload at end: {record['uptime_end']}\n")
    print(summary_table(record))
    print(f"written to {args.out}")
    return record


if __name__ == "__main__":
    main()
