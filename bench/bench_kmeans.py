"""Size-constrained k-means: ours vs the `k-means-constrained` package, side by side.

Features imitate trained conv channel statistics (channel mean from a mixture,
channel variance lognormal), z-scored per column, in 2-D (mean, variance) and
1-D (mean).  Groups of g = 16 channels with alpha = 0.5: k = n // 16,
size_min = 8, size_max = 24.  Both solvers run with their defaults (theirs: n_init=10,
max_iter=300; ours: "auto" effort, i.e. 3 starts and 15 relocation trials at
n = 2048, more on smaller problems; same seed); both
labellings are scored with the same inertia.  Ours runs its compiled inner loops
(``dgn_plugins._kmeans``) when built, else the numpy code; ``--code numpy`` forces the
latter.  ``--data-seeds`` repeats every size on that many feature draws.
Issue targets at n = 2048 (k = 128): bounds exact, inertia <= 1.001x the
reference, at least 50x faster.

    python bench/bench_kmeans.py [--quick] [--sizes 64 256 ...] [--seed 0] [--data-seeds 1]
                                 [--code compiled|numpy] [--clock wall|cpu]

`k-means-constrained` is a benchmark-only requirement (pip install k-means-constrained).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

try:
    from k_means_constrained import KMeansConstrained
except ImportError:
    sys.stderr.write("bench_kmeans.py needs the reference solver: pip install k-means-constrained\n")
    sys.exit(2)

from common import trained_channel_statistics  # noqa: E402

from dgn_plugins.regrouping.solver import (  # noqa: E402
    inertia_of,
    kmeans,  # noqa: E402
    size_constrained_kmeans,
)

GROUP_SIZE = 16
ALPHA = 0.5


def channel_features(n_channels: int, dims: int, rng: np.random.Generator) -> np.ndarray:
    """z-scored (mean, variance) per channel, shaped like a trained conv layer's."""
    X = np.stack(trained_channel_statistics(n_channels, rng), axis=1)[:, :dims]
    return (X - X.mean(axis=0)) / X.std(axis=0)


def timed(fn, repeats: int, clock=time.perf_counter):
    times, out = [], None
    for _ in range(repeats):
        start = clock()
        out = fn()
        times.append(clock() - start)
    return statistics.median(times), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n in {64, 256, 512}, one repetition")
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 1], choices=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-seeds", type=int, default=1, help="feature draws per size")
    parser.add_argument("--code", choices=("compiled", "numpy"), default="compiled",
                        help="our inner loops: the compiled extension (if built) or numpy")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU time (both solvers are single-threaded), "
                             "immune to other processes competing for the cores")
    args = parser.parse_args()
    if args.code == "numpy":
        os.environ["DGN_KMEANS_NATIVE"] = "0"
    code = "compiled" if kmeans._compiled() is not None else "numpy (dgn_plugins._kmeans not built)"
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    print(f"ours: {code} inner loops; reference: k-means-constrained, both single-threaded; {args.clock} clock")
    sizes = args.sizes or ([64, 256, 512] if args.quick else [64, 256, 512, 1024, 2048])

    header = (f"{'n':>5} {'k':>4} {'L':>3} {'H':>3} {'d':>2} {'ours s':>9} {'theirs s':>9} "
              f"{'speed-up':>9} {'inertia ours':>13} {'inertia theirs':>15} {'ratio':>7} {'bounds':>7}")
    print(header)
    print("-" * len(header))
    rows = []
    for dims, n, draw in ((d, n, s) for d in args.dims for n in sizes for s in range(args.data_seeds)):
        k = n // GROUP_SIZE
        size_min, size_max = int(ALPHA * GROUP_SIZE), int((1 + ALPHA) * GROUP_SIZE)
        X = channel_features(n, dims, np.random.default_rng(args.seed + n + 7919 * draw))
        # ours is cheap: take the median of a few runs; one reference run at large n
        ours_reps = 1 if args.quick else 3
        theirs_reps = 1 if (args.quick or n >= 1024) else 3
        t_ours, ours = timed(lambda: size_constrained_kmeans(X, k, size_min, size_max,
                                                             seed=args.seed), ours_reps, clock)
        reference = KMeansConstrained(n_clusters=k, size_min=size_min, size_max=size_max,
                                      random_state=args.seed)
        t_theirs, fitted = timed(lambda: reference.fit(X), theirs_reps, clock)
        their_labels = np.asarray(fitted.labels_, dtype=np.int64)
        i_ours = inertia_of(X, ours.labels, k)
        i_theirs = inertia_of(X, their_labels, k)
        exact = all(np.bincount(lab, minlength=k).min() >= size_min
                    and np.bincount(lab, minlength=k).max() <= size_max
                    for lab in (ours.labels, their_labels))
        rows.append((n, dims, t_theirs / t_ours, i_ours / i_theirs, exact))
        print(f"{n:>5} {k:>4} {size_min:>3} {size_max:>3} {dims:>2} {t_ours:>9.3f} {t_theirs:>9.3f} "
              f"{t_theirs / t_ours:>8.1f}x {i_ours:>13.5f} {i_theirs:>15.5f} {i_ours / i_theirs:>7.4f} "
              f"{'exact' if exact else 'BROKEN':>7}", flush=True)

    print()
    largest = max(sizes)
    for dims in args.dims:
        at_largest = [row for row in rows if row[0] == largest and row[1] == dims]
        exact = all(row[4] for row in at_largest)
        ratio = max(row[3] for row in at_largest)
        speedup = min(row[2] for row in at_largest)
        print(f"n={largest} d={dims} ({len(at_largest)} draws): bounds {'exact' if exact else 'VIOLATED'}; "
              f"worst inertia ratio {ratio:.4f} (target <= 1.001: {'met' if ratio <= 1.001 else 'missed'}); "
              f"smallest speed-up {speedup:.1f}x (target >= 50x: {'met' if speedup >= 50 else 'missed'})")
    return 0 if all(exact for *_, exact in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
