"""Core demo: GN vs DGN on a generated image-classification task, plain PyTorch.

Needs only torch and scipy (+ matplotlib for the figure). Each pair starts from
the same weights (DGN equals GN at start), trains on the same batches, and DGN
regroups on the study's schedule (bench/RESULTS.md: every 10% of training, none
in its last 10%; ``--regroup-interval``/``--regroup-stop`` change it). One pair is one seed: its
difference mixes the method with training noise, so several seeds are trained
(5 by default, seconds to a minute each) and the table gives each accuracy
(clean and noisy) as mean ± 95% CI, with the paired DGN − GN difference and
whether its interval excludes 0. Seeds must differ (a seed given twice would
count one pair twice and narrow the interval on no evidence); with fewer than
two distinct pairs the table says there is no interval, and why. The first
seed's regroups are logged and its groups plotted to ``<work-dir>/groups.png``.

    python tools/demo_core.py [--iters 300] [--seeds 0 1 2 3 4] [--work-dir work_dirs/demo_core]
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from dgn_plugins import convert_gn_to_dgn, dgn_layers, regroup_model, summarize
from dgn_plugins.atomic import write_text_atomically
from dgn_plugins.cli import ToolParser, distinct, integer, output_dir, real
from dgn_plugins.errors import run_cli
from dgn_plugins.evaluation.demo_noise import interval_verdict
from dgn_plugins.evaluation.plots import plot_history
from dgn_plugins.training.schedule import RegroupSchedule, interval_argument, steps_argument

NUM_CLASSES = 10


def make_gratings(count: int, seed: int, size: int = 32):
    """Images of oriented sine gratings: the class sets orientation, frequency
    and tint; phase, contrast and noise vary per image."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(NUM_CLASSES, (count,), generator=gen)
    angle = labels.float() * math.pi / NUM_CLASSES + 0.2 * torch.randn(count, generator=gen)
    freq = 0.25 + 0.05 * (labels % 3).float()
    phase = 2 * math.pi * torch.rand(count, generator=gen)
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    proj = xs[None] * torch.cos(angle)[:, None, None] + ys[None] * torch.sin(angle)[:, None, None]
    wave = torch.sin(freq[:, None, None] * proj + phase[:, None, None])
    tint = torch.stack([torch.cos(labels * 0.7), torch.sin(labels * 1.3), torch.cos(labels * 2.1)], 1).float()
    contrast = 0.5 + torch.rand(count, 1, 1, 1, generator=gen)
    images = contrast * wave[:, None] * (0.6 + 0.4 * tint[:, :, None, None]) + 0.3 * tint[:, :, None, None]
    images = images + 0.6 * torch.randn(images.shape, generator=gen)
    return images, labels


def conv_norm(cin, cout, stride=1, groups=8):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(groups, cout), nn.ReLU(inplace=True))


class SmallResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = conv_norm(3, 32)
        self.stage1 = nn.Sequential(conv_norm(32, 64, 2), conv_norm(64, 64))
        self.stage2 = nn.Sequential(conv_norm(64, 128, 2), conv_norm(128, 128))
        self.head = nn.Linear(128, NUM_CLASSES)

    def forward(self, x):
        x = self.stage2(self.stage1(self.stem(x)))
        return self.head(x.mean((2, 3)))


@torch.no_grad()
def accuracy(model, images, labels, batch=500):
    model.eval()
    correct = sum(int((model(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum())
                  for i in range(0, len(images), batch))
    model.train()
    return correct / len(images)


def train(model, images, labels, iters, batch, lr, schedule=None, log=print, batch_seed=1):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(batch_seed)  # same batches for both models of a pair
    history = []
    for step in range(1, iters + 1):
        index = torch.randint(len(images), (batch,), generator=gen)
        loss = F.cross_entropy(model(images[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / iters))
        if schedule is not None and schedule.is_due(step):
            reports = regroup_model(model)
            schedule.mark_done(step)
            total = summarize(reports)
            history.append({"step": step, "group_id": {name: layer.group_id.tolist() for name, layer in dgn_layers(model)},
                            "reports": [r.as_dict() for r in reports]})
            log(f"  iter {step:4d}: regrouped {total['layers']} layers, {total['groups_changed']} groups changed, "
                f"{total['channels_moved']} channels moved (loss {loss.item():.3f})")
    return history


def parse_args(argv=None):
    """The options, each checked before any training (one line and exit status 2 for a bad one)."""
    parser = ToolParser(prog="demo_core.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=integer(1), default=300)
    parser.add_argument("--batch", type=integer(1), default=64)
    parser.add_argument("--lr", type=real(0.0, low_open=True), default=0.05)
    parser.add_argument("--regroup-interval", type=interval_argument, default=0.1,
                        help="iterations between regroups, or a share of training (default 0.1, the study's)")
    parser.add_argument("--regroup-stop", type=steps_argument, default=0.9,
                        help="last regroup at this iteration, or share of training (default 0.9, the study's), so "
                             "the weights adapt to the final groups")
    parser.add_argument("--percentile", type=real(0.0, 1.0), default=None,
                        help="in [0, 1]; default: the layer's (0.75, the study's)")
    parser.add_argument("--seeds", type=integer(0), nargs="+", default=list(range(5)),
                        action=distinct(what="seed ", why="each seed trains one GN/DGN pair, and a pair counted "
                                                          "twice would narrow the interval on no evidence"),
                        help="one GN/DGN pair per seed (initial weights, batch order); default 0-4")
    parser.add_argument("--train-size", type=integer(1), default=4000, help="generated training images")
    parser.add_argument("--test-size", type=integer(1), default=1000, help="generated test images (clean and noisy)")
    parser.add_argument("--work-dir", type=output_dir, default="work_dirs/demo_core")
    parser.add_check(_check_schedule)
    return parser.parse_args(argv)


def _check_schedule(args):
    """The regroup schedule must fit the run and regroup at least once: without a regroup the demo
    would compare GN with itself (``args.schedule``: the schedule resolved for ``--iters``)."""
    given = f"--regroup-interval {args.regroup_interval} / --regroup-stop {args.regroup_stop} with --iters {args.iters}"
    try:
        args.schedule = RegroupSchedule(interval=args.regroup_interval, stop=args.regroup_stop).resolve(args.iters)
    except ValueError as error:
        return f"{given}: {error}"
    if not any(args.schedule.is_due(step) for step in range(1, args.iters + 1)):
        return f"{given}: DGN would never regroup, and the demo would compare GN with itself"
    return None


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)

    train_images, train_labels = make_gratings(args.train_size, seed=0)
    test_images, test_labels = make_gratings(args.test_size, seed=1)
    noisy_images = test_images + 0.8 * torch.randn(test_images.shape, generator=torch.Generator().manual_seed(2))
    data = (train_images, train_labels, test_images, test_labels, noisy_images)

    runs, history, dgn_model = [], [], None
    schedule = args.schedule
    print(f"{len(args.seeds)} GN/DGN pairs (seeds {args.seeds}), {args.iters} iterations each; DGN regroups every "
          f"{schedule.interval} until iteration {schedule.stop}")
    for index, seed in enumerate(args.seeds):
        run, seed_history, seed_dgn = train_pair(args, seed, data, log=print if index == 0 else (lambda _: None))
        runs.append(run)
        if index == 0:
            history, dgn_model = seed_history, seed_dgn
        print(f"seed {seed}: " + ", ".join(
            f"{name} clean {run[name]['clean_acc']:.2f}% noisy {run[name]['noisy_acc']:.2f}% ({run[name]['time_s']:.0f} s)"
            for name in ("GN", "DGN")), flush=True)

    print()
    print(summary_table(runs))

    layer = dgn_layers(dgn_model)[1][0]
    figure = os.path.join(args.work_dir, "groups.png")
    if history:
        plot_history(_initial_ids(dgn_model, layer), history, layer, figure)
        print(f"\ngroup evolution of layer '{layer}' (seed {args.seeds[0]}) written to {figure}")
    write_text_atomically(os.path.join(args.work_dir, "results.json"),
                          json.dumps({"seeds": args.seeds, "runs": runs, "regroups": history}))
    return runs


def train_pair(args, seed, data, log=print):
    """GN and its DGN twin from the same initial weights (``torch.manual_seed(seed)``)
    on the same batches (seed + 1); accuracies in %. Seed 0 is the one-seed demo's run."""
    train_images, train_labels, test_images, test_labels, noisy_images = data
    torch.manual_seed(seed)
    gn_model = SmallResNet()
    options = {} if args.percentile is None else {"percentile": args.percentile}
    dgn_model = convert_gn_to_dgn(copy.deepcopy(gn_model), **options)
    with torch.no_grad():
        gap = (gn_model.eval()(test_images[:64]) - dgn_model.eval()(test_images[:64])).abs().max().item()
        gn_model.train(), dgn_model.train()
    log(f"at initialisation DGN is GN: max |DGN - GN| output difference = {gap:.1e}")
    run = {}
    start = time.time()
    train(gn_model, train_images, train_labels, args.iters, args.batch, args.lr, batch_seed=seed + 1)
    run["GN"] = {"time_s": time.time() - start}
    start = time.time()
    history = train(dgn_model, train_images, train_labels, args.iters, args.batch, args.lr,
                    RegroupSchedule(interval=args.regroup_interval, stop=args.regroup_stop).resolve(args.iters),
                    log=log, batch_seed=seed + 1)
    run["DGN"] = {"time_s": time.time() - start}
    for name, model in (("GN", gn_model), ("DGN", dgn_model)):
        run[name]["clean_acc"] = 100 * accuracy(model, test_images, test_labels)
        run[name]["noisy_acc"] = 100 * accuracy(model, noisy_images, test_labels)
    run["seed"] = seed
    return run, history, dgn_model


METRICS = (("clean_acc", "clean acc (%)"), ("noisy_acc", "noisy acc (%)"))


def summary_table(runs) -> str:
    """Mean ± 95% CI (Student t) of GN, DGN and their paired difference, with a reading; the
    difference gets no interval, and says why, without two distinct pairs (``paired_ci``)."""
    from dgn_plugins.evaluation.robustness.stats import mean_ci, paired_ci

    lines = [f"| metric, {len(runs)} seed(s) | GN | DGN | DGN − GN (paired) | reading |",
             "|---|---:|---:|---:|---|"]
    for key, title in METRICS:
        gn = [run["GN"][key] for run in runs]
        dgn = [run["DGN"][key] for run in runs]
        paired = paired_ci(gn, dgn)
        cells = [mean_ci(gn), mean_ci(dgn), (paired.mean, paired.half_width)]
        text = [f"{m:.2f}" if math.isnan(h) else f"{m:.2f} ± {h:.2f}" for m, h in cells]
        text[2] = text[2] if text[2].startswith("-") else "+" + text[2]
        verdict = interval_verdict(paired.mean, paired.half_width, paired.why)
        lines.append(f"| {title} | {text[0]} | {text[1]} | {text[2]} | {verdict} |")
    return "\n".join(lines)


def _initial_ids(model, layer):
    from dgn_plugins.grouping import default_group_ids

    target = dict(dgn_layers(model))[layer]
    return default_group_ids(target.num_channels, target.num_groups).tolist()


if __name__ == "__main__":
    sys.exit(run_cli(main))  # a bad option: one line, status 2
