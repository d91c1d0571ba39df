"""Core demo: GN vs DGN on a generated image-classification task, plain PyTorch.

Needs only torch (+ matplotlib for the figure). Both models start from the same
weights (DGN equals GN at start), train identically, and DGN regroups every
``--regroup-interval`` iterations. Prints accuracy (clean and noisy) side by
side, each regroup's summary, and writes a figure of how one layer's groups
evolved to ``<work-dir>/groups.png``.

    python tools/demo_core.py [--iters 300] [--work-dir work_dirs/demo_core]
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dgn_plugins import convert_gn_to_dgn, dgn_layers, regroup_model, summarize  # noqa: E402
from dgn_plugins.plots import plot_history  # noqa: E402
from dgn_plugins.schedule import RegroupSchedule  # noqa: E402

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


def train(model, images, labels, iters, batch, lr, schedule=None, log=print):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(1)  # same batches for both models
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--regroup-interval", type=int, default=50)
    parser.add_argument("--regroup-stop", type=float, default=0.7,
                        help="last regroup at this fraction of training, so the weights adapt to the final groups")
    parser.add_argument("--percentile", type=float, default=0.5)
    parser.add_argument("--work-dir", default="work_dirs/demo_core")
    args = parser.parse_args(argv)
    os.makedirs(args.work_dir, exist_ok=True)
    torch.manual_seed(0)

    train_images, train_labels = make_gratings(4000, seed=0)
    test_images, test_labels = make_gratings(1000, seed=1)
    noisy_images = test_images + 0.8 * torch.randn(test_images.shape, generator=torch.Generator().manual_seed(2))

    gn_model = SmallResNet()
    dgn_model = convert_gn_to_dgn(copy.deepcopy(gn_model), percentile=args.percentile)
    with torch.no_grad():
        gap = (gn_model.eval()(test_images[:64]) - dgn_model.eval()(test_images[:64])).abs().max().item()
        gn_model.train(), dgn_model.train()
    print(f"at initialisation DGN is GN: max |DGN - GN| output difference = {gap:.1e}")

    results = {}
    print(f"training GN  for {args.iters} iterations ...")
    start = time.time()
    train(gn_model, train_images, train_labels, args.iters, args.batch, args.lr)
    results["GN"] = {"time_s": time.time() - start}
    print(f"training DGN for {args.iters} iterations, regroup every {args.regroup_interval} until "
          f"iteration {int(args.regroup_stop * args.iters)} ...")
    start = time.time()
    history = train(dgn_model, train_images, train_labels, args.iters, args.batch, args.lr,
                    RegroupSchedule(interval=args.regroup_interval, stop=int(args.regroup_stop * args.iters)))
    results["DGN"] = {"time_s": time.time() - start}

    for name, model in (("GN", gn_model), ("DGN", dgn_model)):
        results[name]["clean_acc"] = accuracy(model, test_images, test_labels)
        results[name]["noisy_acc"] = accuracy(model, noisy_images, test_labels)
    print()
    print("| model | clean acc | noisy acc | train time (s) |")
    print("|-------|-----------|-----------|----------------|")
    for name, r in results.items():
        print(f"| {name:<5} | {r['clean_acc']:9.3f} | {r['noisy_acc']:9.3f} | {r['time_s']:14.1f} |")

    layer = dgn_layers(dgn_model)[1][0]
    figure = os.path.join(args.work_dir, "groups.png")
    if history:
        plot_history(_initial_ids(dgn_model, layer), history, layer, figure)
        print(f"\ngroup evolution of layer '{layer}' written to {figure}")
    with open(os.path.join(args.work_dir, "results.json"), "w") as f:
        json.dump({"results": results, "regroups": history}, f)
    return results


def _initial_ids(model, layer):
    from dgn_plugins.layout import default_group_ids

    target = dict(dgn_layers(model))[layer]
    return default_group_ids(target.num_channels, target.num_groups).tolist()


if __name__ == "__main__":
    main()
