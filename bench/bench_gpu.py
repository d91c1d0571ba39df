"""DynamicGroupNorm's fused Triton kernels vs native F.group_norm on one CUDA GPU.

Forward+backward at Mask R-CNN R50-FPN and diffusion-UNet shapes, float32 and
bfloat16, K = 32. Columns (ratios to native GN with the same input):

- ``equal``: Triton path, GN's contiguous equal grouping (target <= 1.00);
- ``ragged``: Triton path, a ragged shuffled grouping (target within 10% of ``equal``);
- ``plain``: the plain PyTorch path, ragged grouping (for reference);
- ``fwd``: forward only, Triton path, ragged grouping.

    python bench/bench_gpu.py [--channels-last] [--dtypes float32 bfloat16] [--rep-ms 200]

Exits with a message (status 2) when CUDA or Triton is unavailable.
:func:`measure` and :func:`markdown_table` are also what ``bench/gpu_check.py`` prints.
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn.functional as F

GROUPS = 32
#: (model, N, C, H, W): activations that GN layers see.
SHAPES = [
    ("mask-rcnn C2", 2, 256, 200, 336),
    ("mask-rcnn C3", 2, 512, 100, 168),
    ("mask-rcnn C4", 2, 1024, 50, 84),
    ("mask-rcnn C5", 2, 2048, 25, 42),
    ("mask-rcnn FPN P2", 2, 256, 200, 336),
    ("mask-rcnn box head", 1024, 256, 7, 7),
    ("mask-rcnn mask head", 256, 256, 14, 14),
    ("unet 64x64", 8, 320, 64, 64),
    ("unet 32x32", 8, 640, 32, 32),
    ("unet 16x16", 8, 1280, 16, 16),
    ("unet 8x8", 8, 1280, 8, 8),
]
#: Performance targets (reported, never an error): equal grouping vs GN, ragged vs equal.
TARGET_EQUAL, TARGET_RAGGED = 1.00, 1.10


def unavailable() -> Optional[str]:
    """Why the kernels cannot be timed here (no CUDA, no Triton, no extension), or None."""
    if not torch.cuda.is_available():
        return "CUDA is not available (this benchmark needs an NVIDIA GPU)"
    try:
        import triton.testing  # noqa: F401
    except ImportError:
        return "Triton is not installed (pip install triton)"
    from dgn_plugins import ops

    if not ops.native_available():
        return f"the extension dgn_plugins._C (the operators' autograd kernel) is not built: {ops.native_import_error()}"
    if not ops.triton_available():
        from dgn_plugins.kernels import triton_import_error

        return f"the Triton kernels do not import: {triton_import_error()}"
    return None


def measure(shape, dtype_name: str, channels_last: bool, rep_ms: int) -> Dict[str, object]:
    """One row: GN's milliseconds (forward+backward, forward) and the DGN paths' ratios to them."""
    from bench_layer import ragged_group_ids
    from triton.testing import do_bench

    from dgn_plugins import use_backend
    from dgn_plugins.functional import dynamic_group_norm
    from dgn_plugins.grouping import default_group_ids

    name, n, c, h, w = shape
    device, dtype = torch.device("cuda"), getattr(torch, dtype_name)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(n, c, h, w, device=device, dtype=dtype).contiguous(memory_format=memory_format)
    x.requires_grad_()
    dy = torch.randn_like(x)
    weight = torch.randn(c, device=device, dtype=dtype, requires_grad=True)
    bias = torch.randn(c, device=device, dtype=dtype, requires_grad=True)
    layouts = {"equal": default_group_ids(c, GROUPS), "ragged": ragged_group_ids(c, GROUPS)}
    layouts = {key: ids.to(device) for key, ids in layouts.items()}
    counts = {key: torch.bincount(ids, minlength=GROUPS) for key, ids in layouts.items()}

    def train(fn):
        return lambda: torch.autograd.grad(fn(), (x, weight, bias), dy)

    def dgn(key):
        return lambda: dynamic_group_norm(x, layouts[key], GROUPS, weight, bias, group_count=counts[key])

    def gn():
        return F.group_norm(x, GROUPS, weight, bias)

    # The backend is chosen around the timing, not inside it: choosing one re-registers kernels.
    with use_backend("native"):  # on CUDA tensors: the Triton kernels
        ms = {key: do_bench(train(fn), rep=rep_ms) for key, fn in
              (("gn", gn), ("equal", dgn("equal")), ("ragged", dgn("ragged")))}
        with torch.no_grad():
            fwd_gn = do_bench(gn, rep=rep_ms)
            fwd = do_bench(dgn("ragged"), rep=rep_ms)
    with use_backend("reference"):
        ms["plain"] = do_bench(train(dgn("ragged")), rep=rep_ms)
    return {"shape": name, "N": n, "C": c, "HxW": f"{h}x{w}", "dtype": dtype_name,
            "format": "channels_last" if channels_last else "NCHW", "gn_ms": ms["gn"],
            "equal": ms["equal"] / ms["gn"], "ragged": ms["ragged"] / ms["gn"], "plain": ms["plain"] / ms["gn"],
            "ragged_vs_equal": ms["ragged"] / ms["equal"], "fwd_gn_ms": fwd_gn, "fwd": fwd / fwd_gn}


def rows(dtypes: Sequence[str], channels_last: bool, rep_ms: int) -> Iterator[Dict[str, object]]:
    """:func:`measure` over every shape of :data:`SHAPES` and dtype."""
    for dtype_name in dtypes:
        for shape in SHAPES:
            yield measure(shape, dtype_name, channels_last, rep_ms)


HEADER = (f"{'shape':<20} {'N':>5} {'C':>5} {'HxW':>8} {'dtype':>9} | {'GN ms':>8} {'equal':>6} {'ragged':>6} "
          f"{'plain':>6} | {'fwd GN ms':>9} {'fwd':>6}")


def text_line(row: Dict[str, object]) -> str:
    return (f"{row['shape']:<20} {row['N']:>5} {row['C']:>5} {row['HxW']:>8} {row['dtype']:>9} | "
            f"{row['gn_ms']:>8.3f} {row['equal']:>6.2f} {row['ragged']:>6.2f} {row['plain']:>6.2f} | "
            f"{row['fwd_gn_ms']:>9.3f} {row['fwd']:>6.2f}")


def markdown_table(table: List[Dict[str, object]]) -> str:
    """The rows as a markdown table (with their memory format), for bench/RESULTS.md."""
    lines = ["| shape | N | C | HxW | dtype | format | GN ms | equal | ragged | plain | fwd GN ms | fwd |",
             "|---|--:|--:|---|---|---|--:|--:|--:|--:|--:|--:|"]
    for row in table:
        lines.append(f"| {row['shape']} | {row['N']} | {row['C']} | {row['HxW']} | {row['dtype']} | {row['format']} | "
                     f"{row['gn_ms']:.3f} | {row['equal']:.2f} | {row['ragged']:.2f} | {row['plain']:.2f} | "
                     f"{row['fwd_gn_ms']:.3f} | {row['fwd']:.2f} |")
    return "\n".join(lines)


def summary(table: List[Dict[str, object]]) -> str:
    """The worst ratios against the targets."""
    worst_equal = max(row["equal"] for row in table)
    worst_ragged = max(row["ragged_vs_equal"] for row in table)
    return (f"worst equal-grouping ratio to GN: {worst_equal:.2f} (target <= {TARGET_EQUAL:.2f}); "
            f"worst ragged / equal: {worst_ragged:.2f} (target <= {TARGET_RAGGED:.2f})")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--rep-ms", type=int, default=200, help="milliseconds of repetitions per measurement")
    args = parser.parse_args()
    reason = unavailable()
    if reason:
        print(f"bench_gpu: {reason}; nothing measured.", file=sys.stderr)
        sys.exit(2)

    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"{'channels_last' if args.channels_last else 'NCHW'}, K={GROUPS}; forward+backward unless noted, "
          f"ratios to native F.group_norm")
    print(HEADER)
    print("-" * len(HEADER))
    table = []
    for row in rows(args.dtypes, args.channels_last, args.rep_ms):
        table.append(row)
        print(text_line(row), flush=True)
    print(summary(table))


if __name__ == "__main__":
    main()
