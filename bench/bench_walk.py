"""The native kernels' two NCHW walks side by side, against nn.GroupNorm: which one ``auto`` should pick.

``rows`` computes every row's statistics, then every row's output: each pass
streams the whole tensor. ``groups`` goes one group at a time, its second pass
reading the group's rows from cache, as GN's own kernel does; it applies when
every group is a run of consecutive channels (GN's grouping; a shuffled
grouping falls back to ``rows``, whose single stream was faster than fetching
scattered rows one by one). ``auto`` takes ``groups`` in float32/float64 and
``rows`` in half precision (group_walk in dgn_plugins/csrc/dgn_cpu.cpp), as
this table found.
Forward+backward ratios to GN, medians on one thread's CPU clock, the three
candidates interleaved in one run, glibc's malloc held steady as in bench_layer.py.

    OMP_NUM_THREADS=1 python bench/bench_walk.py [--repeats 11]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from bench_layer import SHAPES, STEADY_MALLOC, make_case, medians, step_fns

from dgn_plugins import ops


def walked(fn, walk):
    from dgn_plugins import _C

    def run():
        _C.set_nchw_walk(walk)
        try:
            fn()
        finally:
            _C.set_nchw_walk("auto")
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    args = parser.parse_args()
    if STEADY_MALLOC.items() - os.environ.items():  # as bench_layer.py: buffers reused, no page faults per call
        os.execve(sys.executable, [sys.executable] + sys.argv, {**os.environ, **STEADY_MALLOC})
    if not ops.native_available():
        parser.error(f"the native extension dgn_plugins._C is not available ({ops.native_import_error()})")
    from dgn_plugins import _C

    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, N=2, GN's grouping; forward+backward ratios to nn.GroupNorm, "
          f"medians of {args.repeats} (cpu clock)")
    print(f"{'variant':>9} {'C':>5} {'HxW':>8} {'row KiB':>7} {'auto':>6} | {'GN ms':>6} {'rows':>6} {'groups':>6}")
    for variant in ("nchw f32", "nchw bf16"):
        for channels, height, width in SHAPES:
            x, dy, gn, dgn = make_case(channels, height, width, "default", variant)
            fns = step_fns(x, dy, gn, dgn)
            train = medians({"gn": fns["gn"][1], "rows": walked(fns["native"][1], "rows"),
                             "groups": walked(fns["native"][1], "groups")}, args.repeats, "cpu")
            row_kib = height * width * x.element_size() / 1024
            print(f"{variant:>9} {channels:>5} {height:>3}x{width:<4} {row_kib:>7.1f} "
                  f"{_C.walk_for(x, dgn.group_id, dgn.num_groups):>6} | {train['gn'] * 1e3:>6.2f} "
                  f"{train['rows'] / train['gn']:>6.2f} {train['groups'] / train['gn']:>6.2f}", flush=True)


if __name__ == "__main__":
    main()
