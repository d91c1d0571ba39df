"""DynamicGroupNorm's fused Triton kernels vs native F.group_norm on one CUDA GPU.

Forward+backward at Mask R-CNN R50-FPN and diffusion-UNet shapes, float32 and
bfloat16, K = 32. Columns (ratios to native GN with the same input):

- ``equal``: Triton path, GN's contiguous equal grouping (target <= 1.00);
- ``ragged``: Triton path, a ragged shuffled grouping (target within 10% of ``equal``);
- ``plain``: the plain PyTorch path, ragged grouping (for reference);
- ``fwd``: forward only, Triton path, ragged grouping.

    python bench/bench_gpu.py [--channels-last] [--dtypes float32 bfloat16] [--rep-ms 200]

Exits with a message (status 2) when CUDA or Triton is unavailable.
"""
from __future__ import annotations

import argparse
import sys

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


def _exit(message: str) -> None:
    print(f"bench_gpu: {message}; nothing measured.", file=sys.stderr)
    sys.exit(2)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--rep-ms", type=int, default=200, help="milliseconds of repetitions per measurement")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        _exit("CUDA is not available (this benchmark needs an NVIDIA GPU)")
    try:
        from triton.testing import do_bench
    except ImportError:
        _exit("Triton is not installed (pip install triton)")

    from bench_layer import ragged_group_ids

    from dgn_plugins import ops, use_backend
    from dgn_plugins.functional import dynamic_group_norm
    from dgn_plugins.grouping import default_group_ids

    if not ops.native_available():
        _exit(f"the extension dgn_plugins._C (the operators' autograd kernel) is not built: {ops.native_import_error()}")

    device = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
          f"{'channels_last' if args.channels_last else 'NCHW'}, K={GROUPS}; forward+backward unless noted, "
          f"ratios to native F.group_norm")
    header = (f"{'shape':<20} {'N':>5} {'C':>5} {'HxW':>8} {'dtype':>9} | {'GN ms':>8} {'equal':>6} {'ragged':>6} "
              f"{'plain':>6} | {'fwd GN ms':>9} {'fwd':>6}")
    print(header)
    print("-" * len(header))
    worst_equal, worst_ragged_vs_equal = 0.0, 0.0
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for name, n, c, h, w in SHAPES:
            memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
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

            def dgn(key, backend):
                def run():
                    with use_backend(backend):
                        return dynamic_group_norm(x, layouts[key], GROUPS, weight, bias, group_count=counts[key])
                return run

            def gn():
                return F.group_norm(x, GROUPS, weight, bias)

            timed = {
                "gn": train(gn),
                "equal": train(dgn("equal", "native")),  # on CUDA tensors: the Triton kernels
                "ragged": train(dgn("ragged", "native")),
                "plain": train(dgn("ragged", "reference")),
            }
            ms = {key: do_bench(fn, rep=args.rep_ms) for key, fn in timed.items()}
            with torch.no_grad():
                fwd_gn = do_bench(gn, rep=args.rep_ms)
                fwd = do_bench(dgn("ragged", "native"), rep=args.rep_ms)
            ratio = {key: ms[key] / ms["gn"] for key in ms}
            worst_equal = max(worst_equal, ratio["equal"])
            worst_ragged_vs_equal = max(worst_ragged_vs_equal, ms["ragged"] / ms["equal"])
            print(f"{name:<20} {n:>5} {c:>5} {h:>3}x{w:<4} {dtype_name:>9} | {ms['gn']:>8.3f} {ratio['equal']:>6.2f} "
                  f"{ratio['ragged']:>6.2f} {ratio['plain']:>6.2f} | {fwd_gn:>9.3f} {fwd / fwd_gn:>6.2f}", flush=True)
    print(f"worst equal-grouping ratio to GN: {worst_equal:.2f} (target <= 1.00); "
          f"worst ragged / equal: {worst_ragged_vs_equal:.2f} (target <= 1.10)")


if __name__ == "__main__":
    main()
