"""Method fidelity: is DGN more robust to corruptions than GN? (Fashion-MNIST-C)

The poster's headline claim is a lower corruption error than GN on CIFAR100-C
and ImageNet-C. This reproduces the experiment at a scale two CPU cores can
run, on real images that install offline:

    apt-get update && apt-get install -y dataset-fashion-mnist
    # -> /usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz

A small ResNet with GroupNorm, and the same network converted to DGN (same
initial weights, same batches), are trained once per seed; DGN regroups on a
``RegroupSchedule``. Each model is then tested on the clean test images and
on the 15 ImageNet-C corruptions x severities 1-5 (images padded to 32x32, the
corruption library's minimum; greyscale is replicated to RGB for the
corruption and averaged back). The corrupted test sets are made once, seeded,
and shared by every model, so seeds measure training variance only.

Reported: clean error, error per corruption (mean over severities) and the
mean corruption error (mean over all 75 cells), each as mean +- 95% CI
(t-distribution over seeds), plus the paired DGN - GN difference per seed.

    python bench/robustness_cls.py [--seeds 0 1 2] [--iters 800] [--test-images 500]

Duration of the defaults, measured end to end (bench/RESULTS.md): 15 min wall with
``--threads 1`` on a 2-core machine whose other core was busy (corrupting 38 s, then per
seed and model 65-130 s of training and 35-61 s of testing). On an overloaded machine
pass ``--threads 1`` (two spinning torch threads starved each other there, 4x slower).

Writes ``<work-dir>/robustness_cls.json`` (every cell, every seed) and prints a
Markdown table. Every phase prints its duration, so a shorter run (e.g.
``--iters 300 --test-images 200 --seeds 0``) can be extrapolated.
"""
from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dgn_plugins import convert_gn_to_dgn, regroup_model  # noqa: E402
from dgn_plugins.evaluation.robustness.corruptions import check_corruptions, check_severities, corrupt_batch  # noqa: E402
from dgn_plugins.evaluation.robustness.stats import mean_ci  # noqa: E402
from dgn_plugins.regrouping.schedule import RegroupSchedule  # noqa: E402

DATA_ROOT = Path("/usr/share/datasets/fashion-mnist")
DATA_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
              "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
PIXEL_MEAN, PIXEL_STD = 0.286, 0.353  # Fashion-MNIST training set
NUM_CLASSES = 10


class MissingDataError(RuntimeError):
    pass


# ------------------------------------------------------------------ data
def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format): big-endian dims after a 4-byte magic."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4)
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(tuple(int(d) for d in dims))


def load_fashion_mnist(root: Path = DATA_ROOT, split: str = "train"):
    """uint8 images [N, 28, 28] and int64 labels [N] of one split."""
    paths = [Path(root) / name for name in DATA_FILES[split]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise MissingDataError(
            f"Fashion-MNIST not found ({', '.join(missing)}). Install it with\n"
            "    apt-get update && apt-get install -y dataset-fashion-mnist\n"
            "or point --data-root at a folder holding the four *-ubyte.gz files.")
    return _read_idx(paths[0]), _read_idx(paths[1]).astype(np.int64)


def pad_to_32(images: np.ndarray) -> np.ndarray:
    pad = (32 - images.shape[1]) // 2
    return np.pad(images, ((0, 0), (pad, 32 - images.shape[1] - pad), (pad, 32 - images.shape[2] - pad)))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return ((torch.from_numpy(images).float() / 255.0 - PIXEL_MEAN) / PIXEL_STD).unsqueeze(1)


# ------------------------------------------------------------------ model
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, group_size: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(cout // group_size, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(cout // group_size, cout)
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.GroupNorm(cout // group_size, cout))

    def forward(self, x):
        out = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet-8-like: stem + three one-block stages (width, 2x, 4x), GN everywhere."""

    def __init__(self, width: int = 16, group_size: int = 4):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, 1, 1, bias=False),
                                  nn.GroupNorm(width // group_size, width), nn.ReLU(inplace=True))
        self.stages = nn.Sequential(BasicBlock(width, width, 1, group_size),
                                    BasicBlock(width, 2 * width, 2, group_size),
                                    BasicBlock(2 * width, 4 * width, 2, group_size))
        self.head = nn.Linear(4 * width, NUM_CLASSES)

    def forward(self, x):
        return self.head(self.stages(self.stem(x)).mean((2, 3)))


# ------------------------------------------------------------------ train / test
def train(model, images, labels, iters, batch, lr, seed, schedule=None) -> List[dict]:
    """SGD + cosine LR, random flips; batches depend only on ``seed``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    gen = torch.Generator().manual_seed(10_000 + seed)
    model.train()
    regroups = []
    for step in range(1, iters + 1):
        index = torch.randint(len(images), (batch,), generator=gen)
        x = images[index]
        flip = torch.rand(batch, generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        loss = F.cross_entropy(model(x), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / iters))
        if schedule is not None and schedule.is_due(step):
            reports = regroup_model(model)
            schedule.mark_done(step)
            regroups.append({"step": step, "channels_moved": sum(r.channels_moved for r in reports if r.skipped is None)})
    model.eval()
    return regroups


@torch.no_grad()
def error_rate(model, images: torch.Tensor, labels: torch.Tensor, batch: int = 500) -> float:
    wrong = sum(int((model(images[i:i + batch]).argmax(1) != labels[i:i + batch]).sum())
                for i in range(0, len(images), batch))
    return 100.0 * wrong / len(images)


# ------------------------------------------------------------------ report
def summarize(errors: Dict[str, Dict[str, List[float]]], corruptions: Sequence[str], severities: Sequence[int]) -> Dict:
    """Per model: clean error, per-corruption error (mean over severities),
    mean corruption error (mean over cells); lists over seeds."""
    out = {}
    for label, cells in errors.items():
        per_corruption = {c: np.mean([cells[f"{c}/{s}"] for s in severities], axis=0).tolist() for c in corruptions}
        out[label] = {"clean": cells["clean"], **per_corruption,
                      "mean corruption error": np.mean([per_corruption[c] for c in corruptions], axis=0).tolist()}
    return out


def markdown_table(summary: Dict, labels=("GN", "DGN")) -> str:
    base, other = labels

    def cell(values):
        mean, half = mean_ci(values)
        return f"{mean:.2f} ± {half:.2f}" if math.isfinite(half) else f"{mean:.2f}"

    rows = ["| error (%) | " + " | ".join(labels) + f" | {other} − {base} (paired) |", "|---|---:|---:|---:|"]
    for metric in summary[base]:
        diff = np.subtract(summary[other][metric], summary[base][metric])
        rows.append(f"| {metric} | {cell(summary[base][metric])} | {cell(summary[other][metric])} | {cell(diff)} |")
    return "\n".join(rows)


# ------------------------------------------------------------------ main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=DATA_ROOT)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--iters", type=int, default=800)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--percentile", type=float, default=0.5)
    parser.add_argument("--regroup-interval", type=int, default=100)
    parser.add_argument("--regroup-stop", type=float, default=0.7,
                        help="last regroup at this fraction of training, so weights adapt to the final groups")
    parser.add_argument("--train-images", type=int, default=60000)
    parser.add_argument("--test-images", type=int, default=500, help="clean and corrupted test images (first N)")
    parser.add_argument("--corruptions", nargs="+", default=None)
    parser.add_argument("--severities", type=int, nargs="+", default=None)
    parser.add_argument("--corruption-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work-dir", type=Path, default=Path("work_dirs/robustness_cls"))
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # progress lines show up in logs as they happen
    torch.set_num_threads(args.threads)
    corruptions, severities = check_corruptions(args.corruptions), check_severities(args.severities)
    try:
        train_x, train_y = load_fashion_mnist(args.data_root, "train")
        test_x, test_y = load_fashion_mnist(args.data_root, "test")
    except MissingDataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    train_x, train_y = to_tensor(pad_to_32(train_x[:args.train_images])), torch.from_numpy(train_y[:args.train_images])
    test_raw, test_y = pad_to_32(test_x[:args.test_images]), torch.from_numpy(test_y[:args.test_images])
    timings: Dict[str, float] = {}
    wall0, cpu0 = time.perf_counter(), time.process_time()

    start = time.perf_counter()
    test_sets = {"clean": to_tensor(test_raw)}
    for c in corruptions:
        for s in severities:
            test_sets[f"{c}/{s}"] = to_tensor(corrupt_batch(test_raw, c, s, seed=args.corruption_seed))
    timings["corrupt_test_sets_s"] = time.perf_counter() - start
    print(f"corrupted {len(test_sets) - 1} test sets of {len(test_raw)} images in {timings['corrupt_test_sets_s']:.0f} s")

    errors = {"GN": {k: [] for k in test_sets}, "DGN": {k: [] for k in test_sets}}
    regroup_log, train_s, eval_s = {}, {"GN": [], "DGN": []}, {"GN": [], "DGN": []}
    for seed in args.seeds:
        torch.manual_seed(seed)
        gn = SmallResNet(args.width, args.group_size)
        dgn = convert_gn_to_dgn(copy.deepcopy(gn), percentile=args.percentile, seed=seed)
        schedule = RegroupSchedule(interval=args.regroup_interval, stop=int(args.regroup_stop * args.iters))
        for label, model, sched in (("GN", gn, None), ("DGN", dgn, schedule)):
            start = time.perf_counter()
            log = train(model, train_x, train_y, args.iters, args.batch, args.lr, seed, sched)
            train_s[label].append(time.perf_counter() - start)
            if label == "DGN":
                regroup_log[seed] = log
            start = time.perf_counter()
            for key, images in test_sets.items():
                errors[label][key].append(error_rate(model, images, test_y))
            eval_s[label].append(time.perf_counter() - start)
            print(f"seed {seed} {label:3}: trained in {train_s[label][-1]:.0f} s, tested in {eval_s[label][-1]:.0f} s, "
                  f"clean error {errors[label]['clean'][-1]:.2f}%, "
                  f"mean corruption error {np.mean([errors[label][k][-1] for k in test_sets if k != 'clean']):.2f}%")
    timings.update({f"train_{k}_s": v for k, v in train_s.items()}, **{f"eval_{k}_s": v for k, v in eval_s.items()})

    # CPU time too: on a shared machine wall time says more about the neighbours than about this job.
    timings["total_wall_s"], timings["total_cpu_s"] = time.perf_counter() - wall0, time.process_time() - cpu0
    print(f"total: {timings['total_wall_s']:.0f} s wall, {timings['total_cpu_s']:.0f} s CPU")
    summary = summarize(errors, corruptions, severities)
    table = markdown_table(summary)
    print(f"\nFashion-MNIST-C, {len(args.seeds)} seeds, {args.iters} iterations x batch {args.batch}, "
          f"{len(test_raw)} test images per cell; mean ± 95% CI (t):\n")
    print(table)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    out = args.work_dir / "robustness_cls.json"
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    out.write_text(json.dumps({"settings": settings, "corruptions": corruptions, "severities": severities,
                               "errors_per_seed": errors, "summary": summary, "regroups": regroup_log,
                               "timings": timings, "markdown": table}, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
