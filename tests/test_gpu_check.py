"""bench/gpu_check.py (issue 21) where no GPU is: its options, and its kernel checks under Triton's interpreter.

The kernel checks run on CPU tensors in a subprocess (``--device cpu
--interpret``: the interpreter must be on before triton is imported): a
small subset of the cases it runs on CUDA, the forced fallback included.
Run as they are they must pass; with ``--perturb`` (the self-test that adds
a constant to the kernels' outputs) they must fail with status 1. The GPU
parts (timings) are refused here in one line, status 2.
"""
import os
import subprocess
import sys

import pytest
import torch
from bad_inputs import ROOT, assert_refused

BENCH = os.path.join(ROOT, "bench")
SCRIPT = os.path.join(BENCH, "gpu_check.py")


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, BENCH)  # the bench scripts import each other by name, as when run from there
    try:
        import gpu_check

        yield gpu_check
    finally:
        sys.path.remove(BENCH)


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
CPU = ["--device", "cpu", "--interpret"]
REFUSED = [
    pytest.param([], ["no CUDA device", "--device cpu --interpret"], marks=NO_CUDA, id="no CUDA device"),
    pytest.param(["--device", "cpu"], ["--device cpu needs --interpret"], id="cpu without the interpreter"),
    pytest.param(["--interpret"], ["--interpret", "--device cpu"], id="interpreter on CUDA"),
    pytest.param(["--device", "tpu"], ["--device", "'tpu'"], id="unknown device"),
    pytest.param(CPU + ["--parts", "bench"], ["--parts", "bench", "--device cuda"], id="GPU timings on the CPU"),
    pytest.param(CPU + ["--parts", "maskrcnn"], ["--parts", "maskrcnn"], id="Mask R-CNN on the CPU"),
    pytest.param(CPU + ["--parts", "kernels", "kernels"], ["--parts", "kernels given twice"], id="part twice"),
    pytest.param(CPU + ["--dtypes", "float8"], ["--dtypes", "'float8'"], id="unknown dtype"),
    pytest.param(CPU + ["--formats", "nhwc"], ["--formats", "'nhwc'"], id="unknown format"),
    pytest.param(CPU + ["--rep-ms", "0"], ["--rep-ms", "'0'"], id="no repetitions"),
    pytest.param(CPU + ["--steps", "many"], ["--steps", "'many'"], id="steps not a number"),
    pytest.param(CPU + ["--warmup", "-1"], ["--warmup", "'-1'"], id="negative warm-up"),
    pytest.param(CPU + ["--perturb", "nan"], ["--perturb", "'nan'"], id="perturbation not finite"),
    pytest.param(CPU + ["--out", "{d}"], ["--out", "a folder"], id="report into a folder"),
]


@pytest.mark.parametrize("argv, names", REFUSED)
def test_bad_options_and_machines_are_refused_in_one_line(gpu_check, argv, names, tmp_path, capsys):
    assert_refused(gpu_check.main, argv, tmp_path, names, capsys)


def _interpreter_missing():
    from dgn_plugins import ops
    from dgn_plugins.kernels import triton_interpreter_supported

    if not (ops.native_available() and ops.triton_available()):
        return "the extension or the Triton kernels are unavailable"
    if not triton_interpreter_supported():
        return "this Triton has no interpreter for CPU tensors (Triton >= 3.0 has)"
    return None


def _run(argv):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return subprocess.run([sys.executable, SCRIPT, *argv], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def interpreted():
    reason = _interpreter_missing()
    if reason:
        pytest.skip(reason)


def _cells(out, first):
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith(f"| {first} |")]


def test_interpreted_checks_and_forced_fallback_pass_and_the_report_is_written(interpreted, tmp_path):
    """One case (the CPU default is four; tests/test_kernels_triton.py checks the kernels themselves)."""
    report = tmp_path / "gpu_check.md"
    done = _run(CPU + ["--dtypes", "bfloat16", "--formats", "channels_last", "--out", str(report)])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    assert report.read_text() == out
    (case,) = _cells(out, "ragged")
    assert case[:5] == ["ragged", "4", "bfloat16", "channels_last", "2x24x5x7"] and case[-1] == "pass", case
    assert all(float(error) <= 1e-2 for error in case[5:8]), case  # measured, within bfloat16's tolerances
    fallbacks = _cells(out, "forward") + _cells(out, "backward")
    assert len(fallbacks) == 2 and all(row[1] == "1" and row[3] == "pass" for row in fallbacks), fallbacks
    assert "1 of 1 cases passed" in out and out.rstrip().endswith("every check passed.")


def test_a_wrong_kernel_fails_the_run(interpreted):
    """The self-test: a constant added to the kernels' outputs and input gradients is caught, status 1."""
    done = _run(CPU + ["--parts", "kernels", "--dtypes", "float32", "--formats", "nchw", "--perturb", "0.01"])
    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-4000:]
    (case,) = _cells(done.stdout, "ragged")
    assert case[-1].startswith("FAIL: output error") and "gradient error" in case[-1], case
    assert "0 of 1 cases passed" in done.stdout and "1 check(s) FAILED" in done.stdout


def test_bench_table_is_markdown_with_every_column(gpu_check):
    import bench_gpu

    row = {"shape": "mask-rcnn C3", "N": 2, "C": 512, "HxW": "100x168", "dtype": "bfloat16", "format": "NCHW",
           "gn_ms": 1.25, "equal": 0.98, "ragged": 1.04, "plain": 3.5, "ragged_vs_equal": 1.06,
           "fwd_gn_ms": 0.4, "fwd": 1.01}
    lines = bench_gpu.markdown_table([row, dict(row, format="channels_last", equal=1.2)]).splitlines()
    assert len({line.count("|") for line in lines}) == 1 and len(lines) == 4
    assert lines[2] == "| mask-rcnn C3 | 2 | 512 | 100x168 | bfloat16 | NCHW | 1.250 | 0.98 | 1.04 | 3.50 | 0.400 | 1.01 |"
    assert "worst equal-grouping ratio to GN: 1.20" in bench_gpu.summary([row, dict(row, equal=1.2)])
