"""DynamicGroupNorm vs nn.GroupNorm on the CPU: forward, forward+backward, peak memory, per-layer overhead.

Shapes follow Mask R-CNN R50-FPN activations (N = 2, C = 64...2048, C*H*W
about 1-4M), in three variants: NCHW float32, channels_last float32 and NCHW
bfloat16. Both the default (GN-equal) grouping and a ragged, shuffled grouping
are timed, each with the ``native`` backend (the C++ kernels: what the
dispatcher runs on the CPU) and the ``reference`` backend (the plain PyTorch
formulation), interleaved with GN in one run so that the ratios sit side by
side. Both modules are in training mode (DGN updates its running statistics).
``walk`` says how the native kernels went through the tensor: ``rows`` (each
pass streams the whole tensor), ``groups`` (GN's grouping in float32: one
group at a time, as GN does; bench/bench_walk.py compares the two) or ``cl``.
The last row, ``overhead``, is a 2x64x1x1 input: the fixed cost of one layer's
forward+backward. Targets: forward+backward <= 1.10x GN on every row, NCHW
float32 <= 1.05x, peak memory 1.0x, overhead <= 1.2x GN's.

    python bench/bench_layer.py [--repeats 15] [--threads 2] [--clock wall|cpu] [--no-memory] [--malloc steady|default]
    python bench/bench_layer.py --tokens --threads 1 --clock cpu   # the token layer on ViT-B shapes
    python bench/bench_layer.py --overhead-only --threads 1 --clock cpu   # the overhead row alone

``--tokens`` times ``TokenDynamicGroupNorm`` on ViT-B tokens, (8, 197, 768)
and (2, 1025, 768) float32, each against what it generalises: per token with
one group against ``F.layer_norm``; per token with K=32 groups (GN's grouping)
against the grouped composite (``view`` + ``layer_norm`` + the per-channel
affine); per token with a ragged, shuffled grouping against the same
composite (for scale: the composite cannot express it); per sequence (K=32)
against ``F.group_norm`` of the transposed tokens. Targets: forward+backward
<= 1.10x (K=1, sequence), <= 1.0x (K=32), peak memory <= 1.05x.

``--clock cpu`` times the calling thread's CPU time: with ``--threads 1`` it
is immune to other processes competing for the cores. ``--malloc steady``
(the default) runs the timings with glibc's mmap threshold fixed at 32 MiB and
heap trimming off, so that every candidate reuses freed buffers: with glibc's
adaptive defaults a candidate can pay thousands of page faults per call (a
fresh mmap of its output) in one run and none in the next, which moved single
ratios by 2x either way. The peak-memory probe keeps its own settings.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from common import fixed_malloc_env, interleaved_medians, peak_rss_delta_mib
from torch import nn

from dgn_plugins import DynamicGroupNorm, TokenDynamicGroupNorm, ops, use_backend
from dgn_plugins.grouping import group_bounds

SHAPES = [(64, 128, 160), (256, 96, 128), (256, 64, 80), (512, 48, 64), (1024, 32, 48), (2048, 24, 32)]
VARIANTS = {"nchw f32": (torch.contiguous_format, torch.float32),
            "cl f32": (torch.channels_last, torch.float32),
            "nchw bf16": (torch.contiguous_format, torch.bfloat16)}
GROUPS = 32
PATHS = ("native", "reference")
#: glibc settings of ``--malloc steady``: buffers up to 32 MiB come from the heap, which is never trimmed.
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}


def ragged_group_ids(channels: int, groups: int, seed: int = 0) -> torch.Tensor:
    """A valid ragged grouping (sizes spread over [L, H]), channels shuffled."""
    gen = torch.Generator().manual_seed(seed)
    bounds = group_bounds(channels / groups, 0.5)
    sizes = torch.full((groups,), channels // groups)
    for _ in range(groups):  # move channels between random pairs within bounds
        a, b = torch.randint(groups, (2,), generator=gen).tolist()
        step = min(int(sizes[a]) - bounds.size_min, bounds.size_max - int(sizes[b]), 3)
        if a != b and step > 0:
            sizes[a] -= step
            sizes[b] += step
    ids = torch.repeat_interleave(torch.arange(groups), sizes)
    return ids[torch.randperm(channels, generator=gen)]


def make_case(channels, height, width, layout, variant):
    memory_format, dtype = VARIANTS[variant]
    x = torch.randn(2, channels, height, width).to(dtype).contiguous(memory_format=memory_format).requires_grad_()
    dy = torch.randn(2, channels, height, width).to(dtype).contiguous(memory_format=memory_format)
    groups = min(GROUPS, channels // 2)
    gn = nn.GroupNorm(groups, channels).to(dtype)
    dgn = DynamicGroupNorm(channels, groups).to(dtype)
    if layout == "ragged":
        dgn.set_group_ids(ragged_group_ids(channels, groups))
    return x, dy, gn, dgn


def train_step(module, x, dy, backend=None):
    """One forward+backward of ``module`` on ``x`` (gradients ``dy``), under ``backend`` if given."""
    params = tuple(module.parameters())

    def run():
        with use_backend(backend) if backend else _nothing():
            torch.autograd.grad(module(x), (x, *params), dy)
    return run


def step_fns(x, dy, gn, dgn):
    """{"gn" | "native" | "reference": (forward, forward+backward)}."""
    def forward(module, backend=None):
        def run():
            with torch.no_grad(), use_backend(backend) if backend else _nothing():
                module(x)
        return run

    fns = {"gn": (forward(gn), train_step(gn, x, dy))}
    for path in PATHS:
        fns[path] = (forward(dgn, path), train_step(dgn, x, dy, path))
    return fns


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def medians(candidates, repeats, clock):
    if clock == "wall":
        return interleaved_medians(candidates, repeats)
    for fn in candidates.values():  # warm-up, then round-robin on the thread's CPU clock
        fn(), fn()
    samples = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.thread_time()
            fn()
            samples[name].append(time.thread_time() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def overhead_medians(repeats, clock, calls=200):
    """Per-call forward+backward time of GN and the native DGN on a 2x64x1x1 input: the fixed cost of a layer.

    The backend is chosen once per batch of calls, not per call: a user's layer call pays no
    ``use_backend`` block (about a microsecond, a few percent of this row).
    """
    x, dy, gn, dgn = make_case(64, 1, 1, "default", "nchw f32")
    batched = {}
    for name, module, backend in (("gn", gn, None), ("native", dgn, "native")):
        train = train_step(module, x, dy)

        def many(train=train, backend=backend):
            with use_backend(backend) if backend else _nothing():
                for _ in range(calls):
                    train()
        batched[name] = many
    return {name: value / calls for name, value in medians(batched, repeats, clock).items()}


def memory_child(channels, height, width, layout, variant):
    x, dy, gn, dgn = make_case(channels, height, width, layout, variant)
    fns = step_fns(x, dy, gn, dgn)
    for _, train in fns.values():  # warm up lazy initialisation outside the measurement
        train()
    print(json.dumps({name: peak_rss_delta_mib(train) for name, (_, train) in fns.items()}))


def measure_memory(channels, height, width, layout, variant):
    command = [sys.executable, __file__, "--memory-child", json.dumps([channels, height, width, layout, variant])]
    env = {key: value for key, value in fixed_malloc_env().items() if key != "MALLOC_TRIM_THRESHOLD_"}
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


TOKEN_SHAPES = [(8, 197, 768), (2, 1025, 768)]
TOKEN_CASES = ("token K=1", "token K=32", "token ragged", "sequence K=32")


def make_token_case(shape, case):
    """``(x, dy, baseline module, token layer)`` for one row of the ``--tokens`` table."""
    channels = shape[-1]
    x = torch.randn(shape).requires_grad_()
    dy = torch.randn(shape)
    groups = 1 if case == "token K=1" else GROUPS
    over = "sequence" if case.startswith("sequence") else "token"
    layer = TokenDynamicGroupNorm(channels, groups, over=over, eps=1e-6)
    if case == "token ragged":
        layer.set_group_ids(ragged_group_ids(channels, groups))
    if case == "token K=1":
        baseline = nn.LayerNorm(channels, eps=1e-6)
    elif over == "token":
        baseline = GroupedLayerNorm(groups, channels)
    else:
        baseline = TransposedGroupNorm(groups, channels)
    return x, dy, baseline, layer


class GroupedLayerNorm(nn.Module):
    """Per-token GN grouping as composite ops: ``layer_norm`` over a ``view`` of groups, then the affine."""

    def __init__(self, groups, channels):
        super().__init__()
        self.groups = groups
        self.weight, self.bias = nn.Parameter(torch.ones(channels)), nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        shape = x.shape
        grouped = x.view(*shape[:-1], self.groups, shape[-1] // self.groups)
        normed = F.layer_norm(grouped, grouped.shape[-1:], eps=1e-6).view(shape)
        return torch.addcmul(self.bias, normed, self.weight)


class TransposedGroupNorm(nn.GroupNorm):
    """``F.group_norm`` of (B, L, C) tokens as (B, C, L): timm's ``GroupNorm1`` on a sequence."""

    def forward(self, x):
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def token_step_fns(x, dy, baseline, layer):
    """{"base" | "native" | "reference": forward+backward}."""
    return {"base": train_step(baseline, x, dy), **{path: train_step(layer, x, dy, path) for path in PATHS}}


def token_memory_child(shape, case):
    fns = token_step_fns(*make_token_case(tuple(shape), case))
    for train in fns.values():
        train()
    print(json.dumps({name: peak_rss_delta_mib(train) for name, train in fns.items()}))


def tokens_main(args):
    print(f"torch {torch.__version__}, {args.threads} threads, float32 tokens, CPU; medians of {args.repeats} "
          f"({args.clock} clock); forward+backward, training mode; ratios to the baseline each row names")
    header = (f"{'case':>14} {'shape':>14} {'baseline':>14} | {'f+b base ms':>11} {'native':>7} {'reference':>9}"
              + ("" if args.no_memory else f" | {'peak base MiB':>13} {'native':>7} {'reference':>9}"))
    print(header)
    print("-" * len(header))
    names = {"token K=1": "F.layer_norm", "token K=32": "grouped LN", "token ragged": "grouped LN",
             "sequence K=32": "F.group_norm^T"}
    for shape in TOKEN_SHAPES:
        for case in TOKEN_CASES:
            fns = token_step_fns(*make_token_case(shape, case))
            times = medians(fns, args.repeats, args.clock)
            line = (f"{case:>14} {'x'.join(map(str, shape)):>14} {names[case]:>14} | {times['base'] * 1e3:>11.2f} "
                    f"{times['native'] / times['base']:>7.2f} {times['reference'] / times['base']:>9.2f}")
            if not args.no_memory:
                command = [sys.executable, __file__, "--token-memory-child", json.dumps([shape, case])]
                env = {k: v for k, v in fixed_malloc_env().items() if k != "MALLOC_TRIM_THRESHOLD_"}
                out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                memory = json.loads(out.stdout.strip().splitlines()[-1])
                line += (f" | {memory['base']:>13.1f} {memory['native'] / max(memory['base'], 1e-9):>7.2f} "
                         f"{memory['reference'] / max(memory['base'], 1e-9):>9.2f}")
            print(line, flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--malloc", choices=("steady", "default"), default="steady",
                        help="steady: no page faults from freed-and-remapped buffers (see above)")
    parser.add_argument("--tokens", action="store_true", help="the token layer on ViT-B shapes (see above)")
    parser.add_argument("--overhead-only", action="store_true",
                        help="only the per-layer overhead row (seconds, not minutes: for repeated runs side by side)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--token-memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    child = args.memory_child or args.token_memory_child
    if args.malloc == "steady" and not child and STEADY_MALLOC.items() - os.environ.items():
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, **STEADY_MALLOC})  # glibc reads them at start
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(*json.loads(args.memory_child))
        return
    if args.token_memory_child:
        token_memory_child(*json.loads(args.token_memory_child))
        return
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu times one thread: use it with --threads 1")
    if not ops.native_available():
        parser.error(f"the native extension dgn_plugins._C is not available ({ops.native_import_error()})")
    if args.tokens:
        tokens_main(args)
        return
    from dgn_plugins import _C

    print(f"torch {torch.__version__}, {args.threads} threads, N=2, K={GROUPS}, CPU; medians of {args.repeats} "
          f"({args.clock} clock); ratios are to nn.GroupNorm, both modules in training mode; "
          f"native = dgn_plugins' C++ kernels, reference = the plain PyTorch formulation; malloc {args.malloc}")
    columns = " ".join(f"{p:>9}" for p in PATHS)
    header = (f"{'variant':>9} {'C':>5} {'HxW':>8} {'layout':>8} {'walk':>6} | {'fwd GN ms':>9} {columns} | "
              f"{'f+b GN ms':>9} {columns}")
    if not args.no_memory:
        header += f" | {'peak GN MiB':>11} {columns}"
    print(header)
    print("-" * len(header))
    worst = {}
    for variant in [] if args.overhead_only else args.variants:
        for channels, height, width in SHAPES:
            for layout in ("default", "ragged"):
                x, dy, gn, dgn = make_case(channels, height, width, layout, variant)
                fns = step_fns(x, dy, gn, dgn)
                fwd = medians({name: pair[0] for name, pair in fns.items()}, args.repeats, args.clock)
                train = medians({name: pair[1] for name, pair in fns.items()}, args.repeats, args.clock)
                worst[variant] = max(worst.get(variant, 0.0), train["native"] / train["gn"])
                walk = _C.walk_for(x, dgn.group_id, GROUPS).replace("channels_last", "cl")
                line = (f"{variant:>9} {channels:>5} {height:>3}x{width:<4} {layout:>8} {walk:>6} | {fwd['gn'] * 1e3:>9.2f} "
                        + " ".join(f"{fwd[p] / fwd['gn']:>9.2f}" for p in PATHS)
                        + f" | {train['gn'] * 1e3:>9.2f} "
                        + " ".join(f"{train[p] / train['gn']:>9.2f}" for p in PATHS))
                if not args.no_memory:
                    memory = measure_memory(channels, height, width, layout, variant)
                    line += f" | {memory['gn']:>11.1f} " + " ".join(
                        f"{memory[p] / max(memory['gn'], 1e-9):>9.2f}" for p in PATHS)
                print(line, flush=True)
    overhead = overhead_medians(args.repeats, args.clock)
    print(f"{'overhead':>9} {64:>5} {'1x1':>8} {'default':>8} {'':>6} | {'':>9} {'':>9} {'':>9} | "
          f"{overhead['gn'] * 1e3:>9.3f} {overhead['native'] / overhead['gn']:>9.2f} {'-':>9}")
    print("worst native forward+backward ratio: " + ", ".join(f"{v} {r:.2f}" for v, r in worst.items())
          + f"; overhead {overhead['native'] / overhead['gn']:.2f} "
          "(targets: nchw f32 <= 1.05, every row <= 1.10, overhead <= 1.2)")


if __name__ == "__main__":
    main()
