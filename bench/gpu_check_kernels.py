"""The DGN kernels under test against float64 references, and their forced fallback (``bench/gpu_check.py``).

Each case draws seeded inputs for one grouping, dtype and memory format, runs
the kernels under test (the Triton kernels: what the dispatcher picks for CUDA
tensors, or forced onto CPU tensors under Triton's interpreter) and the plain
PyTorch path, and compares both with the float64 reference of
``tests/reference.py``: output, channel statistics and gradients. An error is
``max |got - reference| / max(1, max |reference|)``: relative to the tensor's
scale, absolute where that is below 1. A case fails on an error over its
dtype's tolerance, on a wrong output dtype or memory format, when the Triton
kernels did not run, or when they fell back to the plain path (a fallback
would hide a broken kernel behind correct numbers). The plain path's errors
are printed beside, for scale, and never fail a case.

The fallback check makes one kernel raise, as a compile failure would, and
trains a small network three steps next to a twin on the plain path: one
warning naming the device, the dtype and the error, and the same losses and
weights within float tolerance.

``perturb`` (gpu_check's ``--perturb``, a self-test) adds a constant to
every output and input gradient the Triton kernels return, so that the
check can be seen to fail.
"""
from __future__ import annotations

import contextlib
import copy
import os
import sys
import warnings
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)  # tests/reference.py: the one float64 reference, shared with the test suite

from reference import channel_stats_reference, random_group_ids, reference_with_grads, run_backend  # noqa: E402

DTYPES = ("float32", "bfloat16", "float16", "float64")
#: name: (shape from (N, C, H, W, D), memory format or None).
FORMATS = {
    "nchw": (lambda n, c, h, w, d: (n, c, h, w), torch.contiguous_format),
    "channels_last": (lambda n, c, h, w, d: (n, c, h, w), torch.channels_last),
    "ncl": (lambda n, c, h, w, d: (n, c, h * w), torch.contiguous_format),
    "channels_last_3d": (lambda n, c, h, w, d: (n, c, d, h, w), torch.channels_last_3d),
    "nc": (lambda n, c, h, w, d: (n, c), torch.contiguous_format),
}
#: name: (channels, groups, smallest group, largest group, (N, H, W, D)).
LAYOUTS = {
    "ragged": (24, 4, 3, 9, (2, 5, 7, 3)),
    "singletons": (12, 12, 1, 1, (2, 5, 7, 3)),
    "one_group": (20, 1, 20, 20, (2, 5, 7, 3)),
    "many_small": (40, 13, 2, 5, (2, 5, 7, 3)),
    "r50_c2": (256, 32, 4, 12, (2, 50, 84, 2)),  # Mask R-CNN-sized: spatial splits and channel blocks on a GPU
}
#: Layouts checked in every dtype and format, and those checked in float32 NCHW / channels_last only.
MAIN_LAYOUTS = {"cuda": ("ragged", "r50_c2"), "cpu": ("ragged",)}
EDGE_LAYOUTS = {"cuda": ("singletons", "one_group", "many_small"), "cpu": ()}
#: The small subset that runs under the interpreter (minutes per case otherwise).
CPU_DTYPES, CPU_FORMATS = ("float32", "bfloat16"), ("nchw", "channels_last")
#: dtype: tolerances of (output, gradients, channel statistics). Halves: float32 math rounded once to the
#: dtype, which may land one unit in the last place off (2^-7 of the value in bfloat16, 2^-10 in float16).
TOLERANCES = {
    "float64": (1e-10, 1e-9, 1e-10),
    "float32": (1e-5, 1e-4, 1e-5),
    "float16": (2e-3, 5e-3, 1e-4),
    "bfloat16": (1e-2, 2e-2, 1e-4),
}
#: Loss and weight tolerance of the fallback check (float32, both sides on the plain path after the failure).
FALLBACK_TOLERANCE = 1e-5
SIMULATED = "simulated compile failure (bench/gpu_check.py)"


def plan(device: str, dtypes: Sequence[str], formats: Sequence[str]) -> List[Tuple[str, str, str]]:
    """(layout, dtype, format) of every case to run on this device type."""
    cases = [(layout, dtype, fmt) for layout in MAIN_LAYOUTS[device] for dtype in dtypes for fmt in formats]
    if "float32" in dtypes:
        cases += [(layout, "float32", fmt) for layout in EDGE_LAYOUTS[device] for fmt in formats
                  if fmt in ("nchw", "channels_last")]
    return cases


def error(got: torch.Tensor, reference: torch.Tensor) -> float:
    """max |got - reference| relative to the reference's scale (absolute below 1)."""
    if not reference.numel():
        return 0.0
    reference = reference.detach().double()
    scale = max(1.0, float(reference.abs().max()))
    return float((got.detach().double() - reference).abs().max()) / scale


@contextlib.contextmanager
def instrumented(perturb: float = 0.0) -> Iterator[Dict[str, int]]:
    """Count the Triton forward and backward launches (and add ``perturb`` to what they return)."""
    from dgn_plugins.kernels import triton_dgn

    calls = {"forward": 0, "backward": 0}
    forward, backward = triton_dgn._forward, triton_dgn._backward

    def counted_forward(*args, **kwargs):
        calls["forward"] += 1
        y, *stats = forward(*args, **kwargs)
        return (y + perturb if perturb else y, *stats)

    def counted_backward(*args, **kwargs):
        calls["backward"] += 1
        grad_x, grad_weight, grad_bias = backward(*args, **kwargs)
        if perturb and grad_x is not None:
            grad_x = grad_x + perturb
        return grad_x, grad_weight, grad_bias

    triton_dgn._forward, triton_dgn._backward = counted_forward, counted_backward
    try:
        yield calls
    finally:
        triton_dgn._forward, triton_dgn._backward = forward, backward


def _inputs(layout: str, dtype_name: str, fmt: str, device: str, seed: int):
    channels, groups, low, high, (n, h, w, d) = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(seed)
    ids = random_group_ids(channels, groups, low, high, gen).to(device)
    shape_of, memory_format = FORMATS[fmt]
    shape = shape_of(n, channels, h, w, d)
    dtype = getattr(torch, dtype_name)

    def draw(*size, offset=0.0):
        return (torch.randn(size, generator=gen) * 2 + offset).to(device, dtype)

    x = draw(*shape, offset=-1.0).contiguous(memory_format=memory_format)
    weight, bias = draw(channels), draw(channels)
    grad = draw(*shape).contiguous(memory_format=memory_format)
    return x, ids, groups, weight, bias, grad


def _layout_problems(x, out, grads) -> List[str]:
    problems = []
    if out.dtype != x.dtype or any(g.dtype != x.dtype for g in grads):
        problems.append(f"dtype {out.dtype} / {[str(g.dtype) for g in grads]} for {x.dtype} input")
    for fmt in (torch.channels_last, torch.channels_last_3d):
        expected = x.dim() == (4 if fmt is torch.channels_last else 5) and x.is_contiguous(memory_format=fmt) \
            and not x.is_contiguous()
        if expected and not (out.is_contiguous(memory_format=fmt) and grads[0].is_contiguous(memory_format=fmt)):
            problems.append(f"output or input gradient not {fmt}")
    return problems


def check_case(layout: str, dtype_name: str, fmt: str, device: str, backend: str, seed: int,
               perturb: float = 0.0) -> Dict[str, object]:
    """One case: the kernels under test and the plain path against the float64 reference."""
    from dgn_plugins.kernels.fallback import failed_kernels

    x, ids, groups, weight, bias, grad = _inputs(layout, dtype_name, fmt, device, seed)
    fell_back_before = set(failed_kernels())
    with instrumented(perturb) as calls:
        out, mean, var, grads = run_backend(backend, x, ids, groups, weight, bias, grad)
    fell_back = {key: why for key, why in failed_kernels().items() if key not in fell_back_before}
    plain_out, plain_mean, plain_var, plain_grads = run_backend("reference", x, ids, groups, weight, bias, grad)
    ref_out, ref_grads = reference_with_grads(x, ids, groups, weight, bias, grad)
    ref_mean, ref_var = channel_stats_reference(x)

    errors = (error(out, ref_out), max(error(g, r) for g, r in zip(grads, ref_grads)),
              max(error(mean, ref_mean), error(var, ref_var)))
    plain = (error(plain_out, ref_out), max(error(g, r) for g, r in zip(plain_grads, ref_grads)))
    tolerance = TOLERANCES[dtype_name]
    problems = [f"{what} error {value:.1e} > {limit:.0e}" for what, value, limit
                in zip(("output", "gradient", "statistics"), errors, tolerance) if not value <= limit]
    problems += _layout_problems(x, out, grads)
    if not (calls["forward"] and calls["backward"]):
        problems.append(f"the Triton kernels did not run (forward {calls['forward']}, backward {calls['backward']})")
    problems += [f"{name} fell back on {kind} {dtype}: {why}" for (name, kind, dtype), why in fell_back.items()]
    return {"layout": layout, "dtype": dtype_name, "format": fmt, "shape": "x".join(map(str, x.shape)),
            "groups": groups, "errors": errors, "plain": plain, "tolerance": tolerance, "problems": problems}


def check_fallback(failing: str, device: str, backend: str) -> Dict[str, object]:
    """``failing`` (``"_forward"`` or ``"_backward"``) raises on first use: one warning, then the plain path."""
    from dgn_plugins import DynamicGroupNorm, use_backend
    from dgn_plugins.kernels import fallback, triton_dgn

    kind = failing.strip("_")
    problems: List[str] = []
    ours: List[str] = []
    already = fallback.failed_kernels()
    if already:
        return {"kernel": kind, "warnings": None, "difference": None,
                "problems": [f"kernels had fallen back before the forced failure: {already}"]}

    def broken(*args, **kwargs):
        raise RuntimeError(SIMULATED)

    original = getattr(triton_dgn, failing)
    setattr(triton_dgn, failing, broken)
    try:
        gen = torch.Generator().manual_seed(0)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 24, 3, padding=1), DynamicGroupNorm(24, 4),
                                    torch.nn.ReLU(), torch.nn.Conv2d(24, 2, 1))
        model[1].set_group_ids(random_group_ids(24, 4, 3, 9, gen))
        model = model.to(device)
        twin = copy.deepcopy(model)
        optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (model, twin)]
        x = torch.randn(4, 3, 6, 6, generator=gen).to(device)
        worst = 0.0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for _ in range(3):  # three training steps: the warning comes once
                losses = []
                for net, optimizer, chosen in ((model, optimizers[0], backend), (twin, optimizers[1], "reference")):
                    with use_backend(chosen):
                        optimizer.zero_grad()
                        loss = net(x).square().mean()
                        loss.backward()
                        optimizer.step()
                    losses.append(float(loss))
                worst = max(worst, abs(losses[0] - losses[1]))
        worst = max([worst] + [float((a - b).abs().max()) for a, b in zip(model.parameters(), twin.parameters())])
        ours = [str(w.message) for w in caught if "Triton kernel" in str(w.message)]
        where = str(x.device)
        if len(ours) != 1:
            problems.append(f"{len(ours)} fallback warnings, expected 1")
        elif not all(part in ours[0] for part in (f"{kind} failed on {where}", "torch.float32", SIMULATED)):
            problems.append(f"the warning does not name the device, the dtype and the error: {ours[0]}")
        if set(fallback.failed_kernels()) != {(kind, x.device.type, torch.float32)}:
            problems.append(f"recorded fallbacks {sorted(fallback.failed_kernels(), key=str)}")
        if not worst <= FALLBACK_TOLERANCE:
            problems.append(f"losses or weights differ from the plain path by {worst:.1e} > {FALLBACK_TOLERANCE:.0e}")
    except Exception as failure:  # the fallback itself broke: a finding, not a crash of the report
        problems.append(f"{type(failure).__name__}: {' '.join(str(failure).split())[:300]}")
        worst = float("nan")
    finally:
        setattr(triton_dgn, failing, original)
        fallback.reset_failures()
    return {"kernel": kind, "warnings": len(ours), "difference": worst, "problems": problems}


def run_cases(device: str, backend: str, dtypes: Sequence[str], formats: Sequence[str], perturb: float = 0.0,
              progress=None) -> List[Dict[str, object]]:
    """Every planned case, in order; a case that raises is a failed case."""
    cases = []
    for index, (layout, dtype, fmt) in enumerate(plan(torch.device(device).type, dtypes, formats)):
        try:
            row = check_case(layout, dtype, fmt, device, backend, seed=1000 + index, perturb=perturb)
        except Exception as failure:  # a kernel that crashes is a failed case; the other cases still run
            row = {"layout": layout, "dtype": dtype, "format": fmt, "shape": "", "groups": LAYOUTS[layout][1],
                   "errors": None, "plain": None, "tolerance": TOLERANCES[dtype],
                   "problems": [f"{type(failure).__name__}: {' '.join(str(failure).split())[:300]}"]}
        cases.append(row)
        if progress:
            progress(row)
    return cases


def run_fallbacks(device: str, backend: str) -> List[Dict[str, object]]:
    """The forced failure of the forward, then of the backward."""
    return [check_fallback(failing, device, backend) for failing in ("_forward", "_backward")]


def _number(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1e}"


def cases_table(cases: List[Dict[str, object]]) -> str:
    """The cases as a markdown table."""
    lines = ["| layout | groups | dtype | format | shape | output err | grad err | stats err | plain output / grad err "
             "| tolerance (output, grad, stats) | result |", "|---|--:|---|---|---|--:|--:|--:|--:|---|---|"]
    for row in cases:
        errors = row["errors"] or (None, None, None)
        plain = row["plain"] or (None, None)
        tolerance = ", ".join(f"{t:.0e}" for t in row["tolerance"])
        result = "pass" if not row["problems"] else "FAIL: " + "; ".join(row["problems"])
        lines.append(f"| {row['layout']} | {row['groups']} | {row['dtype']} | {row['format']} | {row['shape']} | "
                     f"{_number(errors[0])} | {_number(errors[1])} | {_number(errors[2])} | "
                     f"{_number(plain[0])} / {_number(plain[1])} | {tolerance} | {result} |")
    return "\n".join(lines)


def fallback_table(fallbacks: List[Dict[str, object]]) -> str:
    """The forced-failure checks as a markdown table."""
    lines = ["| kernel made to fail | warnings (expected 1) | max difference from the plain path, 3 steps "
             "| result |", "|---|--:|--:|---|"]
    for row in fallbacks:
        warned = "-" if row["warnings"] is None else row["warnings"]
        result = "pass" if not row["problems"] else "FAIL: " + "; ".join(row["problems"])
        lines.append(f"| {row['kernel']} | {warned} | {_number(row['difference'])} | {result} |")
    return "\n".join(lines)
