"""A ResNet-50-style train step with DGN vs GN (target <= 1.03x).

The same bottleneck network (torchvision's ResNet-50 layout, GN with 32 groups
after every conv) is built twice: once with nn.GroupNorm, once converted to
DynamicGroupNorm with ragged regrouped layouts. Each repetition runs one SGD
step (forward, loss, backward, update) of both, interleaved. The DGN layers
run the chosen backend (``--backend``, default ``native``: the dispatcher's
kernels, the C++ extension on the CPU).

    python bench/bench_resnet.py [--batch 2] [--size 224] [--repeats 8] [--threads 1 --clock cpu] [--backend native]
"""
from __future__ import annotations

import argparse
import copy

import torch
import torch.nn.functional as F
from bench_layer import medians, ragged_group_ids
from torch import nn

from dgn_plugins import convert_gn_to_dgn, dgn_layers, ops, set_backend


def norm(channels):
    return nn.GroupNorm(32, channels)


class Bottleneck(nn.Module):
    def __init__(self, cin, width, stride):
        super().__init__()
        cout = width * 4
        self.conv1, self.gn1 = nn.Conv2d(cin, width, 1, bias=False), norm(width)
        self.conv2, self.gn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), norm(width)
        self.conv3, self.gn3 = nn.Conv2d(width, cout, 1, bias=False), norm(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x):
        out = F.relu(self.gn1(self.conv1(x)))
        out = F.relu(self.gn2(self.conv2(out)))
        out = self.gn3(self.conv3(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def resnet50_gn(num_classes=1000):
    layers, cin = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), norm(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)], 64
    for width, blocks, stride in [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]:
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = width * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: the calling thread's CPU time (with --threads 1)")
    parser.add_argument("--backend", choices=ops.BACKENDS, default="native")
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu times one thread: use it with --threads 1")
    set_backend(args.backend)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    gn_model = resnet50_gn()
    dgn_model = convert_gn_to_dgn(copy.deepcopy(gn_model))
    layers = dgn_layers(dgn_model)
    for i, (_, layer) in enumerate(layers):  # a regrouped state, not GN's layout
        layer.set_group_ids(ragged_group_ids(layer.num_channels, layer.num_groups, seed=i))
    x = torch.randn(args.batch, 3, args.size, args.size)
    target = torch.randint(1000, (args.batch,))
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
                  for name, m in (("gn", gn_model), ("dgn", dgn_model))}

    def step(model, optimizer):
        def run():
            loss = F.cross_entropy(model(x), target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return run

    times = medians({"gn": step(gn_model, optimizers["gn"]), "dgn": step(dgn_model, optimizers["dgn"])},
                    args.repeats, args.clock)
    print(f"ResNet-50 (GN, 32 groups) train step, N={args.batch}, {args.size}x{args.size}, {args.threads} threads, "
          f"{len(layers)} norm layers, ragged DGN layouts (backend {args.backend}); "
          f"medians of {args.repeats} ({args.clock} clock)")
    print("| GN step (s) | DGN step (s) | ratio |")
    print("|-------------|--------------|-------|")
    print(f"| {times['gn']:11.3f} | {times['dgn']:12.3f} | {times['dgn'] / times['gn']:5.3f} |")
    print("target: ratio <= 1.03")


if __name__ == "__main__":
    main()
