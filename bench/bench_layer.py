"""DynamicGroupNorm vs F.group_norm on the CPU: forward, forward+backward, peak memory.

Shapes follow Mask R-CNN R50-FPN activations (N = 2, C = 64...2048, C*H*W
about 1-4M). Both the default (GN-equal) grouping and a ragged, shuffled
grouping are timed, each with the plain PyTorch path (``DGN_BACKEND=torch``,
the reference), the ``torch.compile`` path (``DGN_BACKEND=compile``) and the
C++ extension (``DGN_BACKEND=native``, what ``auto`` selects when it is
built; see ``dgn_plugins.kernels``), interleaved in one run so that the
ratios to GN sit side by side. Targets: forward+backward <= 1.15x GN, peak
memory <= GN.

    python bench/bench_layer.py [--repeats 15] [--threads 2] [--clock wall|cpu] [--no-memory] [--malloc steady|default]

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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import fixed_malloc_env, interleaved_medians, peak_rss_delta_mib  # noqa: E402
from dgn_plugins import DynamicGroupNorm  # noqa: E402
from dgn_plugins.layout import group_bounds  # noqa: E402

SHAPES = [(64, 128, 160), (256, 96, 128), (256, 64, 80), (512, 48, 64), (1024, 32, 48), (2048, 24, 32)]
GROUPS = 32
PATHS = ("plain", "compile", "native")
#: glibc settings of ``--malloc steady``: buffers up to 32 MiB come from the heap, which is never trimmed.
STEADY_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 40)}
BACKEND_OF = {"plain": "torch", "compile": "compile", "native": "native"}


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


def make_case(channels, height, width, layout, requires_grad=True):
    x = torch.randn(2, channels, height, width, requires_grad=requires_grad)
    dy = torch.randn(2, channels, height, width)
    layer = DynamicGroupNorm(channels, GROUPS)
    if layout == "ragged":
        layer.set_group_ids(ragged_group_ids(channels, GROUPS))
    weight = torch.ones(channels, requires_grad=True)
    bias = torch.zeros(channels, requires_grad=True)
    return x, dy, layer, weight, bias


def _on(backend, fn):
    """``fn`` run with ``DGN_BACKEND=backend`` (read by the layer on every call)."""
    def run():
        os.environ["DGN_BACKEND"] = backend
        return fn()
    return run


def step_fns(x, dy, layer, weight, bias):
    """{"gn" | "plain" | "compile" | "native": (forward, forward+backward)}."""
    def gn_forward():
        with torch.no_grad():
            F.group_norm(x, GROUPS, weight, bias)

    def dgn_forward():
        with torch.no_grad():
            layer(x)

    def gn_train():
        torch.autograd.grad(F.group_norm(x, GROUPS, weight, bias), (x, weight, bias), dy)

    def dgn_train():
        torch.autograd.grad(layer(x), (x, layer.weight, layer.bias), dy)

    fns = {"gn": (gn_forward, gn_train)}
    for path in PATHS:
        fns[path] = (_on(BACKEND_OF[path], dgn_forward), _on(BACKEND_OF[path], dgn_train))
    return fns


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


def memory_child(channels, height, width, layout):
    x, dy, layer, weight, bias = make_case(channels, height, width, layout)
    fns = step_fns(x, dy, layer, weight, bias)
    for _, train in fns.values():  # warm up lazy initialisation (and compilation) outside the measurement
        train()
    print(json.dumps({name: peak_rss_delta_mib(train) for name, (_, train) in fns.items()}))


def measure_memory(channels, height, width, layout):
    command = [sys.executable, __file__, "--memory-child", json.dumps([channels, height, width, layout])]
    env = {key: value for key, value in fixed_malloc_env().items() if key != "MALLOC_TRIM_THRESHOLD_"}
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def first_call_seconds(channels, path):
    """Time of a path's first forward+backward in this process (for ``compile``: its compilation)."""
    x, dy, layer, weight, bias = make_case(channels, 48, 64, "default")
    start = time.perf_counter()
    step_fns(x, dy, layer, weight, bias)[path][1]()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--malloc", choices=("steady", "default"), default="steady",
                        help="steady: no page faults from freed-and-remapped buffers (see above)")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.malloc == "steady" and not args.memory_child and STEADY_MALLOC.items() - os.environ.items():
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, **STEADY_MALLOC})  # glibc reads them at start
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(*json.loads(args.memory_child))
        return
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu times one thread: use it with --threads 1")

    from dgn_plugins.kernels import native_available

    if not native_available():
        parser.error("the native extension dgn_plugins._C is not built (pip install --no-build-isolation -e .)")
    native_s = first_call_seconds(SHAPES[0][0], "native")
    compile_s = first_call_seconds(SHAPES[0][0], "compile")
    print(f"torch {torch.__version__}, {args.threads} threads, N=2, K={GROUPS}, float32, CPU; "
          f"medians of {args.repeats} ({args.clock} clock); first call: compile {compile_s:.1f} s "
          f"(compilation), native {native_s * 1e3:.0f} ms")
    print("ratios are to GN; plain = DGN_BACKEND=torch, compile = DGN_BACKEND=compile, native = DGN_BACKEND=native; "
          f"malloc {args.malloc}")
    columns = " ".join(f"{p:>7}" for p in PATHS)
    header = (f"{'C':>5} {'HxW':>8} {'layout':>8} | {'fwd GN ms':>9} {columns} | "
              f"{'f+b GN ms':>9} {columns}")
    if not args.no_memory:
        header += f" | {'peak GN MiB':>11} {columns}"
    print(header)
    print("-" * len(header))
    worst = {path: 0.0 for path in PATHS}
    for channels, height, width in SHAPES:
        for layout in ("default", "ragged"):
            x, dy, layer, weight, bias = make_case(channels, height, width, layout)
            fns = step_fns(x, dy, layer, weight, bias)
            fwd = medians({name: pair[0] for name, pair in fns.items()}, args.repeats, args.clock)
            train = medians({name: pair[1] for name, pair in fns.items()}, args.repeats, args.clock)
            for path in PATHS:
                worst[path] = max(worst[path], train[path] / train["gn"])
            line = (f"{channels:>5} {height:>3}x{width:<4} {layout:>8} | {fwd['gn'] * 1e3:>9.2f} "
                    + " ".join(f"{fwd[p] / fwd['gn']:>7.2f}" for p in PATHS)
                    + f" | {train['gn'] * 1e3:>9.2f} " + " ".join(f"{train[p] / train['gn']:>7.2f}" for p in PATHS))
            if not args.no_memory:
                memory = measure_memory(channels, height, width, layout)
                line += f" | {memory['gn']:>11.1f} " + " ".join(
                    f"{memory[p] / max(memory['gn'], 1e-9):>7.2f}" for p in PATHS)
            print(line, flush=True)
    print("worst forward+backward ratio: " + ", ".join(f"{p} {worst[p]:.2f}" for p in PATHS) + " (target <= 1.15)")


if __name__ == "__main__":
    main()
