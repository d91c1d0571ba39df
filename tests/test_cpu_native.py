"""The native CPU extension (dgn_plugins._C) against the plain path, native GN and float64 references.

tests/test_functional.py runs its whole suite on this backend too; here are
the extension's own concerns: every instruction-set variant of the row loops,
row lengths around the vector widths, thread counts, gradient flags, inputs it
hands back to the plain path, the fused running-statistics update, and what
happens when it is not built.
"""
import importlib.util
import warnings

import pytest
import torch
import torch.nn.functional as F

from dgn_plugins.functional import dynamic_group_norm
from dgn_plugins.kernels import cpu_native, native_available, select_backend
from dgn_plugins.layer import DynamicGroupNorm
from dgn_plugins.layout import default_group_ids
from reference import (group_norm_reference, random_group_ids, reference_with_grads, run_backend,
                       saved_tensor_shapes)

if not native_available():
    # Python words a missing submodule of a package being imported as a "circular
    # import"; say what is the case instead: no compiled file, or one that fails to load.
    if importlib.util.find_spec("dgn_plugins._C") is None:
        reason = ("the native extension dgn_plugins._C is not built (no compiled dgn_plugins/_C*.so); "
                  "build it with `pip install --no-build-isolation --use-pep517 -e .` (`make ext`)")
    else:
        reason = (f"the native extension dgn_plugins._C is built but does not load ({cpu_native.import_error()}); "
                  "rebuild it against this torch with `pip install --no-build-isolation --use-pep517 -e .` (`make ext`)")
    pytest.skip(reason, allow_module_level=True)

from dgn_plugins import _C  # noqa: E402

Function = cpu_native.NativeDynamicGroupNormFunction


@pytest.fixture(params=_C.supported_isas())
def isa(request):
    """Each instruction-set variant of the row loops this CPU can run."""
    _C.set_isa(request.param)
    yield request.param
    _C.set_isa("")


# Row lengths (elements per sample and channel) below, at and around the vector
# widths (4, 8 and 16 lanes, 4 vectors in flight) and past a flush to double.
SHAPES = [(3, 24), (2, 24, 1), (2, 24, 15), (2, 24, 7, 7), (2, 24, 65), (1, 24, 4, 4, 8), (2, 24, 50, 51)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", [True, False])
def test_matches_reference_and_plain_path(isa, dtype, affine, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    # The plain path sums in float32 with less care (its weight gradient on the largest
    # shape is ~1e-4 off the float64 one, the native one ~1e-5): a looser bound against it.
    tol = {torch.float32: dict(out=2e-6, grad=(2e-5, 1e-5), plain_grad=(5e-4, 1e-4), stat=(1e-6, 1e-5)),
           torch.float64: dict(out=1e-12, grad=(1e-10, 1e-10), plain_grad=(1e-10, 1e-10), stat=(1e-12, 1e-12))}[dtype]
    for shape in SHAPES:
        for groups, low, high in [(4, 3, 9), (3, 8, 8)]:
            ids = random_group_ids(24, groups, low, high, gen)
            x = (torch.randn(shape, generator=gen, dtype=dtype) * 2 - 1)
            weight = torch.randn(24, generator=gen, dtype=dtype) if affine else None
            bias = torch.randn(24, generator=gen, dtype=dtype) if affine else None
            grad = torch.randn(shape, generator=gen, dtype=dtype)
            out, mean, var, grads = run_backend("native", monkeypatch, x, ids, groups, weight, bias, grad)
            assert out.dtype == dtype and mean.dtype == var.dtype == dtype
            assert all(g.dtype == dtype for g in grads)
            expected, expected_grads = reference_with_grads(x, ids, groups, weight, bias, grad)
            torch.testing.assert_close(out.double(), expected, atol=tol["out"], rtol=0)
            for mine, ref in zip(grads, expected_grads):
                torch.testing.assert_close(mine.double(), ref, atol=tol["grad"][0], rtol=tol["grad"][1])

            plain = run_backend("torch", monkeypatch, x, ids, groups, weight, bias, grad)
            torch.testing.assert_close(out, plain[0], atol=tol["out"], rtol=0)
            torch.testing.assert_close(mean, plain[1], atol=tol["stat"][0], rtol=tol["stat"][1])
            torch.testing.assert_close(var, plain[2], atol=tol["stat"][0], rtol=tol["stat"][1])
            for mine, theirs in zip(grads, plain[3]):
                torch.testing.assert_close(mine, theirs, atol=tol["plain_grad"][0], rtol=tol["plain_grad"][1])


def test_instruction_sets_agree():
    gen = torch.Generator().manual_seed(1)
    ids = random_group_ids(32, 4, 4, 12, gen)
    x = torch.randn(2, 32, 13, 11, generator=gen) * 3 + 5
    dy = torch.randn(2, 32, 13, 11, generator=gen)
    weight, bias = torch.randn(32, generator=gen), torch.randn(32, generator=gen)
    count = torch.bincount(ids, minlength=4)
    results = {}
    try:
        for isa in _C.supported_isas():
            _C.set_isa(isa)
            y, mean, var, group_mean, group_rstd = _C.forward(x, weight, bias, ids, count, 4, 1e-5)
            grads = _C.backward(dy, x, weight, group_mean, group_rstd, ids, count, 4, True, True, True)
            results[isa] = (y, mean, var, group_mean, group_rstd, *grads)
    finally:
        _C.set_isa("")
    assert _C.isa() == _C.supported_isas()[0]
    baseline = results["baseline"]
    for isa, values in results.items():
        for mine, theirs in zip(values, baseline):
            torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-6, msg=lambda m: f"{isa}: {m}")
    with pytest.raises(RuntimeError, match="not supported"):
        _C.set_isa("sse9")


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(2)
    for shape, groups in [((2, 12, 4, 3), 3), ((3, 12, 5), 4), ((1, 12, 2, 2, 3), 2), ((2, 12, 1), 3)]:
        ids = random_group_ids(12, groups, 2, 12 - 2 * (groups - 1), gen)
        count = torch.bincount(ids, minlength=groups)
        x = torch.randn(shape, dtype=torch.float64, generator=gen, requires_grad=True)
        weight = torch.randn(12, dtype=torch.float64, generator=gen, requires_grad=True)
        bias = torch.randn(12, dtype=torch.float64, generator=gen, requires_grad=True)
        assert torch.autograd.gradcheck(lambda *a: Function.apply(a[0], a[1], a[2], ids, count, groups, 1e-5)[0],
                                        (x, weight, bias))
        assert torch.autograd.gradcheck(lambda a: Function.apply(a, None, None, ids, count, groups, 1e-5)[0], (x,))


def test_second_derivative_raises_like_the_plain_path():
    """The backward is not differentiable (the plain path's is @once_differentiable): say so, never return zeros."""
    ids = random_group_ids(8, 2, 2, 6)
    count = torch.bincount(ids, minlength=2)
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(8, dtype=torch.float64, requires_grad=True)
    for affine in (True, False):
        y = Function.apply(x, weight if affine else None, None, ids, count, 2, 1e-5)[0]
        (grad,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="differentiate twice"):
            grad.sum().backward()


def test_gradient_flags():
    """Only the gradients asked for are computed; the others come back None."""
    ids = random_group_ids(16, 4, 2, 6)
    count = torch.bincount(ids, minlength=4)
    x = torch.randn(2, 16, 5, 5)
    weight, bias = torch.randn(16), torch.randn(16)
    dy = torch.randn(2, 16, 5, 5)
    _, _, _, group_mean, group_rstd = _C.forward(x, weight, bias, ids, count, 4, 1e-5)
    full = _C.backward(dy, x, weight, group_mean, group_rstd, ids, count, 4, True, True, True)
    for flags in [(True, False, False), (False, True, False), (False, False, True), (False, True, True)]:
        part = _C.backward(dy, x, weight, group_mean, group_rstd, ids, count, 4, *flags)
        for wanted, mine, whole in zip(flags, part, full):
            if wanted:
                torch.testing.assert_close(mine, whole, atol=0, rtol=0)
            else:
                assert mine is None
    # Through autograd: x without grad, weight with.
    w = weight.clone().requires_grad_()
    out = Function.apply(x, w, bias, ids, count, 4, 1e-5)[0]
    (grad_w,) = torch.autograd.grad(out, (w,), dy)
    torch.testing.assert_close(grad_w, full[1], atol=0, rtol=0)


def test_saves_what_group_norm_saves(monkeypatch):
    monkeypatch.setenv("DGN_BACKEND", "native")

    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    weight = torch.randn(64, requires_grad=True)
    bias = torch.randn(64, requires_grad=True)
    ids = random_group_ids(64, 32, 1, 3)
    assert select_backend(x) == "native"
    ours = saved_tensor_shapes(lambda: dynamic_group_norm(x, ids, 32, weight, bias))
    assert ours == saved_tensor_shapes(lambda: F.group_norm(x, 32, weight, bias))
    ours = saved_tensor_shapes(lambda: dynamic_group_norm(x, ids, 32))  # affine=False
    assert ours == saved_tensor_shapes(lambda: F.group_norm(x, 32))


@pytest.mark.parametrize("ratio", [1e3, 1e4])
@pytest.mark.parametrize("side", [7, 14])  # rows of 49 (one-pass statistics) and 196 elements (two-pass)
def test_stable_at_large_mean_to_std_ratio(isa, ratio, side, monkeypatch):
    """Error vs float64 no larger than native GN's, for GN's grouping and a ragged one with spread means."""
    monkeypatch.setenv("DGN_BACKEND", "native")
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 256, side, side, generator=gen) + ratio
    default = default_group_ids(256, 32)
    reference = group_norm_reference(x, default, 32)
    ours = (dynamic_group_norm(x, default, 32).double() - reference).abs().max()
    native = (F.group_norm(x, 32).double() - reference).abs().max()
    assert ours <= native, (float(ours), float(native))

    ragged = random_group_ids(256, 32, 4, 12, gen)
    x = x + torch.randn(1, 256, 1, 1, generator=gen) * 5  # channel means differ within a group
    reference = group_norm_reference(x, ragged, 32)
    ours = (dynamic_group_norm(x, ragged, 32).double() - reference).abs().max()
    assert ours <= native, (float(ours), float(native))


def test_threads_give_identical_results():
    """Rows are split across threads; each row's arithmetic, and the group math, do not depend on the split."""
    ids = random_group_ids(64, 8, 4, 12)
    count = torch.bincount(ids, minlength=8)
    x = torch.randn(2, 64, 40, 41) * 2 + 1
    dy = torch.randn_like(x)
    weight, bias = torch.randn(64), torch.randn(64)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            fwd = _C.forward(x, weight, bias, ids, count, 8, 1e-5)
            results.append(fwd + _C.backward(dy, x, weight, fwd[3], fwd[4], ids, count, 8, True, True, True))
    finally:
        torch.set_num_threads(before)
    for other in results[1:]:
        for mine, theirs in zip(other, results[0]):
            assert torch.equal(mine, theirs)


def test_inputs_it_does_not_run_take_the_plain_path(monkeypatch):
    monkeypatch.setenv("DGN_BACKEND", "native")
    ids = random_group_ids(16, 4, 2, 6)
    x = torch.randn(2, 16, 6, 5)
    assert select_backend(x) == "native"
    assert select_backend(x.to(memory_format=torch.channels_last)) == "torch"
    assert select_backend(x.transpose(2, 3)) == "torch"  # not contiguous
    assert select_backend(x.bfloat16()) == "torch"
    assert select_backend(x[:0]) == "torch"
    for variant in (x.to(memory_format=torch.channels_last), x.transpose(2, 3), x[:, :, ::2]):
        out = dynamic_group_norm(variant, ids, 4)
        torch.testing.assert_close(out.double(), group_norm_reference(variant, ids, 4), atol=2e-6, rtol=0)
    # The Function itself makes non-contiguous inputs contiguous.
    count = torch.bincount(ids, minlength=4)
    strided = x.transpose(2, 3).requires_grad_()
    out = Function.apply(strided, None, None, ids, count, 4, 1e-5)[0]
    torch.testing.assert_close(out.double(), group_norm_reference(strided.detach(), ids, 4), atol=2e-6, rtol=0)
    out.sum().backward()
    assert strided.grad.shape == strided.shape
    # N = 0 (no RoIs).
    empty = torch.randn(0, 16, 7, 7, requires_grad=True)
    out = dynamic_group_norm(empty, ids, 4)
    out.sum().backward()
    assert out.shape == empty.shape and empty.grad.shape == empty.shape


def test_auto_prefers_native_on_the_cpu(monkeypatch):
    monkeypatch.setenv("DGN_BACKEND", "auto")
    assert select_backend(torch.randn(2, 64, 8, 8)) == "native"  # any size: nothing to compile
    assert select_backend(torch.randn(2, 64, 8, 8).double()) == "native"
    assert select_backend(torch.randn(2, 64)) == "native"


def test_missing_extension_warns_once_and_falls_back(monkeypatch):
    from dgn_plugins import kernels

    monkeypatch.setattr(cpu_native, "_C", None)
    monkeypatch.setattr(cpu_native, "_import_error", "ImportError: not built")
    monkeypatch.setattr(kernels, "_native_warned", False)
    monkeypatch.setenv("DGN_BACKEND", "native")
    ids = random_group_ids(16, 4, 2, 6)
    x = torch.randn(2, 16, 5, 5, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="not built"):
        out = dynamic_group_norm(x, ids, 4)
    torch.testing.assert_close(out.double(), group_norm_reference(x.detach(), ids, 4), atol=2e-6, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dynamic_group_norm(x, ids, 4)
    monkeypatch.setenv("DGN_BACKEND", "auto")
    assert select_backend(x) == "torch"
    layer = DynamicGroupNorm(16, 4)
    layer(x)  # the running statistics fall back to plain ops
    assert int(layer.num_stat_updates) == 1


def test_rejects_bad_group_ids():
    x = torch.randn(2, 8, 3, 3)
    with pytest.raises(RuntimeError, match="outside"):
        _C.forward(x, None, None, torch.tensor([0, 1, 2, 3, 0, 1, 2, 4]), torch.ones(4), 4, 1e-5)
    with pytest.raises(RuntimeError, match="int64"):
        _C.forward(x, None, None, torch.zeros(8, dtype=torch.int32), torch.ones(4), 4, 1e-5)
    with pytest.raises(RuntimeError, match="contiguous"):
        _C.forward(x.transpose(2, 3), None, None, torch.zeros(8, dtype=torch.long), torch.ones(4), 4, 1e-5)


@pytest.mark.parametrize("momentum", [0.1, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_running_statistics_match_plain_path(momentum, dtype, monkeypatch):
    """The fused update: first call copies, later ones lerp; non-finite batches change nothing; counter + 1."""
    torch.manual_seed(4)
    ids = random_group_ids(32, 8, 2, 6)
    layers = {}
    for backend in ("native", "torch"):
        layer = DynamicGroupNorm(32, 8, momentum=momentum).to(dtype)
        layer.set_group_ids(ids)
        layers[backend] = layer
    for step in range(4):
        x = (torch.randn(3, 32, 9, 11) * (step + 1) + step).to(dtype)
        if step == 2:
            x[1, 5] = float("nan")  # one channel's statistics are NaN in this batch
            x[0, 7, 0, 0] = float("inf")
        for backend, layer in layers.items():
            monkeypatch.setenv("DGN_BACKEND", backend)
            layer(x)
        native, plain = layers["native"], layers["torch"]
        assert int(native.num_stat_updates) == int(plain.num_stat_updates) == step + 1
        torch.testing.assert_close(native.channel_mean_ema, plain.channel_mean_ema)
        torch.testing.assert_close(native.channel_var_ema, plain.channel_var_ema)
        assert torch.isfinite(native.channel_mean_ema).all() and torch.isfinite(native.channel_var_ema).all()


def test_running_statistics_update_in_one_call(monkeypatch):
    """In training mode the layer's step is the forward and one update call (no chain of small ops)."""
    monkeypatch.setenv("DGN_BACKEND", "native")
    layer = DynamicGroupNorm(32, 8)
    x = torch.randn(2, 32, 5, 5)
    layer(x)
    with torch.profiler.profile() as prof:
        layer(x)
    names = [event.name for event in prof.events()]
    assert not any(name in names for name in ("aten::lerp", "aten::where", "aten::isfinite", "aten::mean")), names
    versions = (layer.channel_mean_ema._version, layer.num_stat_updates._version)
    layer(x)
    assert layer.channel_mean_ema._version > versions[0] and layer.num_stat_updates._version > versions[1]
