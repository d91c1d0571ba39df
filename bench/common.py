"""Shared helpers for the benchmarks: interleaved timing, peak-memory probes, channel statistics.

Timings alternate between the candidates on every repetition, so machine noise
hits both sides alike; the ratio is of medians measured in the same run.
"""
from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Dict, Tuple

import numpy as np


def interleaved_medians(candidates: Dict[str, Callable[[], object]], repeats: int = 15, warmup: int = 3) -> Dict[str, float]:
    """Median seconds per call for each candidate, measured round-robin."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    samples = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_rss_delta_mib(fn: Callable[[], object]) -> float:
    """Peak resident memory added while ``fn`` runs (Linux: resets VmHWM).

    Run with ``MALLOC_MMAP_THRESHOLD_`` fixed (see ``fixed_malloc_env``) so that
    freed large buffers go back to the OS instead of hiding in malloc's heap.
    """
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset the peak RSS high-water mark
    base = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - base) / 1024.0


def fixed_malloc_env() -> dict:
    env = dict(os.environ)
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    return env


def trained_channel_statistics(n_channels: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, variance) shaped like a trained conv layer's: means from a
    three-component mixture, variances lognormal (larger in one component)."""
    component = rng.choice(3, size=n_channels, p=[0.5, 0.3, 0.2])
    means = np.array([0.0, -1.2, 1.5])[component] + rng.normal(0.0, np.array([0.3, 0.5, 0.8])[component])
    variances = rng.lognormal(mean=-1.0, sigma=0.7, size=n_channels) * (1.0 + 0.5 * (component == 2))
    return means, variances
