"""Everything a CUDA machine can tell about DGN's GPU path, in one command, as tables ready for RESULTS.

    python bench/gpu_check.py [--out gpu_check.md]                 # on a CUDA machine: all three parts
    python bench/gpu_check.py --device cpu --interpret            # the kernel checks, a small subset, on the CPU

Parts (``--parts``; all by default on CUDA, the first two on the CPU):

``kernels``
    the Triton kernels against float64 references in every dtype and memory
    format (``bench/gpu_check_kernels.py``);
``fallback``
    the fallback to the plain path when a kernel is made to fail: one
    warning, the same training steps;
``bench``
    ``bench/bench_gpu.py``'s table, DGN vs ``F.group_norm``, NCHW and channels_last;
``maskrcnn``
    a Mask R-CNN R50-FPN train step with GN and with DGN: time and peak
    memory side by side (``bench/gpu_check_maskrcnn.py``).

The report (markdown) goes to stdout and, with ``--out``, to a file. Exit
status: 0 when every check passed, 1 on any mismatch or a part that failed
to run, 2 on a usage error or a machine that cannot run it (no CUDA device,
no Triton, the extension not built), said in one line. Timings are reported
against their targets but never fail the run.

``--device cpu --interpret`` runs the kernel checks on CPU tensors under
Triton's interpreter (Triton >= 3.0; the process re-runs itself with
``TRITON_INTERPRET=1``): the same comparison logic on a few small cases, which
is how the test suite checks this tool. ``--perturb EPS`` is a self-test: it
adds EPS to every output and input gradient of the Triton kernels, and the
run must then fail (status 1).
"""
from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import time

import torch

from dgn_plugins.cli import ToolParser, distinct, integer, output_file, real, run_tool

PARTS = ("kernels", "fallback", "bench", "maskrcnn")
#: Parts that time the GPU (the others check results, on any device).
TIMED = ("bench", "maskrcnn")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _environment_problem(args) -> str:
    """Why this machine cannot run what was asked (one line), or ''."""
    from dgn_plugins import ops
    from dgn_plugins.kernels import triton_import_error, triton_interpreter_supported

    if args.device == "cuda":
        if not torch.cuda.is_available():
            return ("no CUDA device (torch.cuda.is_available() is False): run it on a CUDA machine, or check the "
                    "comparison logic with --device cpu --interpret")
        if os.environ.get("TRITON_INTERPRET") == "1":
            return "TRITON_INTERPRET=1 is set: unset it, so that the kernels run compiled on the GPU"
    if not ops.native_available():
        return f"the extension is not built: {ops.native_import_error()}"
    if not ops.triton_available():
        return f"the Triton kernels do not import: {triton_import_error()}"
    if args.interpret and not triton_interpreter_supported():
        import triton

        return (f"Triton {triton.__version__} has no interpreter for CPU tensors (TRITON_INTERPRET=1 runs kernels "
                "on the CPU from Triton 3.0): run it on a CUDA machine")
    return ""


def _check_options(args) -> str:
    if args.device == "cpu" and not args.interpret:
        return "--device cpu needs --interpret: the Triton kernels run on CPU tensors only under Triton's interpreter"
    if args.interpret and args.device != "cpu":
        return "--interpret runs the kernels on CPU tensors: give --device cpu"
    if args.parts is None:
        args.parts = [part for part in PARTS if args.device == "cuda" or part not in TIMED]
    timed = [part for part in args.parts if part in TIMED]
    if args.device == "cpu" and timed:
        return f"argument --parts: {timed[0]} times the GPU: it needs --device cuda"
    return _environment_problem(args)


def parser() -> ToolParser:
    from gpu_check_kernels import CPU_DTYPES, CPU_FORMATS, DTYPES, FORMATS

    p = ToolParser(prog="gpu_check", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                   allow_abbrev=False)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cuda (default), or cpu with --interpret")
    p.add_argument("--interpret", action="store_true", help="run the Triton kernels under Triton's interpreter (CPU)")
    p.add_argument("--parts", nargs="+", choices=PARTS, default=None, action=distinct(what="part "),
                   help="what to run (default: all on CUDA, kernels and fallback on the CPU)")
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=None, action=distinct(what="dtype "),
                   help=f"kernel checks' dtypes (default: all on CUDA, {' '.join(CPU_DTYPES)} on the CPU)")
    p.add_argument("--formats", nargs="+", choices=tuple(FORMATS), default=None, action=distinct(what="format "),
                   help=f"kernel checks' memory formats (default: all on CUDA, {' '.join(CPU_FORMATS)} on the CPU)")
    p.add_argument("--rep-ms", type=integer(1, 10_000), default=100, help="bench: milliseconds per measurement")
    p.add_argument("--steps", type=integer(1, 1000), default=20, help="maskrcnn: timed steps per model")
    p.add_argument("--warmup", type=integer(0, 100), default=3, help="maskrcnn: untimed steps per model first")
    p.add_argument("--out", type=output_file, default=None, help="also write the report (markdown) here")
    p.add_argument("--perturb", type=real(0.0, low_open=True), default=None, metavar="EPS",
                   help="self-test: add EPS to the Triton kernels' outputs; the kernel checks must then fail")
    p.add_check(_check_options)
    return p


def _header(args, argv) -> str:
    import triton

    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU (Triton's interpreter)"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join(["python bench/gpu_check.py", *argv])
    return f"## gpu_check: {where}, torch {torch.__version__}, Triton {triton.__version__}, commit {commit}, {now}\n\n`{command}`"


def _backend(args) -> str:
    return "native" if args.device == "cuda" else "triton"  # CPU tensors take the Triton kernels only when forced


def _kernels(args, lines) -> int:
    import gpu_check_kernels as kernels

    dtypes = args.dtypes or (kernels.DTYPES if args.device == "cuda" else kernels.CPU_DTYPES)
    formats = args.formats or (tuple(kernels.FORMATS) if args.device == "cuda" else kernels.CPU_FORMATS)
    cases = kernels.run_cases(args.device, _backend(args), dtypes, formats, perturb=args.perturb or 0.0,
                              progress=lambda row: print(f"  {row['layout']} {row['dtype']} {row['format']}: "
                                                         f"{'pass' if not row['problems'] else 'FAIL'}",
                                                         file=sys.stderr, flush=True))
    failed = sum(bool(row["problems"]) for row in cases)
    lines += ["### Triton kernels against float64 references", "",
              "Error: max |got - reference| / max(1, max |reference|); output, input/weight/bias gradients, "
              "channel mean and variance. The plain path's errors are shown for scale.", "",
              kernels.cases_table(cases), "", f"{len(cases) - failed} of {len(cases)} cases passed.", ""]
    if args.perturb:
        lines += [f"(self-test: --perturb {args.perturb:g} added to the kernels' outputs)", ""]
    return failed


def _fallback(args, lines) -> int:
    import gpu_check_kernels as kernels

    rows = kernels.run_fallbacks(args.device, _backend(args))
    lines += ["### Forced fallback (a kernel made to raise)", "", kernels.fallback_table(rows), ""]
    return sum(bool(row["problems"]) for row in rows)


def _bench(args, lines) -> int:
    import bench_gpu

    table = []
    for channels_last in (False, True):
        for row in bench_gpu.rows(["float32", "bfloat16"], channels_last, args.rep_ms):
            table.append(row)
            print("  " + bench_gpu.text_line(row), file=sys.stderr, flush=True)
    lines += ["### DGN vs F.group_norm (bench/bench_gpu.py)", "",
              f"Forward+backward unless noted, K={bench_gpu.GROUPS}; ratios to native F.group_norm.", "",
              bench_gpu.markdown_table(table), "", bench_gpu.summary(table), ""]
    return 0


def _maskrcnn(args, lines) -> int:
    import gpu_check_maskrcnn as maskrcnn

    rows = maskrcnn.measure("cuda", steps=args.steps, warmup=args.warmup)
    lines += ["### Mask R-CNN R50-FPN train step, GN vs DGN", "", maskrcnn.markdown_table(rows, 2, (800, 1216)), ""]
    return 0


def work(args, argv) -> int:
    if args.interpret and os.environ.get("TRITON_INTERPRET") != "1":
        # The interpreter must be on before triton is imported, which importing dgn_plugins does.
        env = dict(os.environ, TRITON_INTERPRET="1")
        return subprocess.call([sys.executable, os.path.abspath(__file__), *argv], env=env)
    start = time.monotonic()
    lines = [_header(args, argv), ""]
    failed = 0
    for part, run in (("kernels", _kernels), ("fallback", _fallback), ("bench", _bench), ("maskrcnn", _maskrcnn)):
        if part not in args.parts:
            continue
        print(f"gpu_check: {part}...", file=sys.stderr, flush=True)
        try:
            failed += run(args, lines)
        except Exception as error:  # a part that cannot finish is a failure, and the others still run
            lines += [f"### {part}: FAILED to run", "", f"`{type(error).__name__}: {' '.join(str(error).split())[:500]}`",
                      ""]
            failed += 1
    lines.append(f"Finished in {time.monotonic() - start:.0f} s: "
                 + ("every check passed." if not failed else f"{failed} check(s) FAILED."))
    report = "\n".join(lines) + "\n"
    print(report, end="")
    if args.out:
        from dgn_plugins.atomic import write_text_atomically

        write_text_atomically(args.out, report)
    return 1 if failed else 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)

    def go(args):
        raise SystemExit(work(args, argv))

    return run_tool(parser(), argv, go)


if __name__ == "__main__":
    sys.exit(main())
