"""The native CPU extension (dgn_plugins._C) against the plain path, native GN and float64 references.

tests/test_functional.py runs its whole suite on this backend too; here are
the extension's own concerns: every instruction-set variant of the row loops,
row lengths around the vector widths, thread counts, gradient flags, the
autograd kernel's routes (double backward, forward AD), the running-statistics
update, and what happens when it is not built.
"""
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from reference import group_norm_reference, random_group_ids, reference_with_grads, run_backend, saved_tensor_shapes

from dgn_plugins import ops, use_backend
from dgn_plugins.functional import dynamic_group_norm
from dgn_plugins.grouping import default_group_ids
from dgn_plugins.layer import DynamicGroupNorm

if not ops.native_available():
    # Python words a missing submodule of a package being imported as a "circular
    # import"; say what is the case instead: no compiled file, or one that fails to load.
    if importlib.util.find_spec("dgn_plugins._C") is None:
        reason = ("the native extension dgn_plugins._C is not built (no compiled dgn_plugins/_C*.so); "
                  "build it with `pip install --no-build-isolation --use-pep517 -e .` (`make ext`)")
    else:
        reason = (f"the native extension dgn_plugins._C is built but does not load ({ops.native_import_error()}); "
                  "rebuild it against this torch with `pip install --no-build-isolation --use-pep517 -e .` (`make ext`)")
    pytest.skip(reason, allow_module_level=True)

from dgn_plugins import _C  # noqa: E402


def group_norm(x, weight, bias, ids, count, groups, eps=1e-5):
    """The operator with the old argument order of these tests."""
    return torch.ops.dgn.group_norm(x, ids, count, weight, bias, groups, eps)


def group_norm_backward(dy, x, weight, group_mean, group_rstd, ids, count, groups, *mask):
    return torch.ops.dgn.group_norm_backward(dy, x, group_mean, group_rstd, ids, count, weight, groups, list(mask))


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
def test_matches_reference_and_plain_path(isa, dtype, affine):
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
            out, mean, var, grads = run_backend("native", x, ids, groups, weight, bias, grad)
            assert out.dtype == dtype and mean.dtype == var.dtype == dtype
            assert all(g.dtype == dtype for g in grads)
            expected, expected_grads = reference_with_grads(x, ids, groups, weight, bias, grad)
            torch.testing.assert_close(out.double(), expected, atol=tol["out"], rtol=0)
            for mine, ref in zip(grads, expected_grads):
                torch.testing.assert_close(mine.double(), ref, atol=tol["grad"][0], rtol=tol["grad"][1])

            plain = run_backend("reference", x, ids, groups, weight, bias, grad)
            torch.testing.assert_close(out, plain[0], atol=tol["out"], rtol=0)
            torch.testing.assert_close(mean, plain[1], atol=tol["stat"][0], rtol=tol["stat"][1])
            torch.testing.assert_close(var, plain[2], atol=tol["stat"][0], rtol=tol["stat"][1])
            for mine, theirs in zip(grads, plain[3]):
                torch.testing.assert_close(mine, theirs, atol=tol["plain_grad"][0], rtol=tol["plain_grad"][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("channels", [24, 80, 200])
def test_channels_last_matches_reference(isa, dtype, channels):
    """The channels-last walk (its per-channel sums go in blocks of 4 vectors of channels, the rest one by one):
    channel counts below, at and past a block for 4, 8 and 16 lanes, against the float64 reference."""
    gen = torch.Generator().manual_seed(4)
    tol = {torch.float32: dict(out=2e-6, grad=(2e-5, 1e-5)), torch.float64: dict(out=1e-12, grad=(1e-10, 1e-10))}[dtype]
    groups = 4
    ids = random_group_ids(channels, groups, channels // 8, channels // 2, gen)
    weight, bias = torch.randn(channels, generator=gen, dtype=dtype), torch.randn(channels, generator=gen, dtype=dtype)
    for shape in [(2, channels, 5, 13), (3, channels, 70)]:  # 70 positions: past a flush of the float sums
        x = torch.randn(shape, generator=gen, dtype=dtype) * 2 - 1
        x = x.to(memory_format=torch.channels_last) if x.dim() == 4 else x.transpose(1, 2).contiguous().transpose(1, 2)
        grad = torch.randn(shape, generator=gen, dtype=dtype)
        assert _C.walk_for(x, ids, groups) == "channels_last"
        out, _, _, grads = run_backend("native", x, ids, groups, weight, bias, grad)
        expected, expected_grads = reference_with_grads(x, ids, groups, weight, bias, grad)
        torch.testing.assert_close(out.double(), expected, atol=tol["out"], rtol=0)
        for mine, ref in zip(grads, expected_grads):
            torch.testing.assert_close(mine.double(), ref, atol=tol["grad"][0], rtol=tol["grad"][1])


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
            y, mean, var, group_mean, group_rstd = group_norm(x, weight, bias, ids, count, 4)
            grads = group_norm_backward(dy, x, weight, group_mean, group_rstd, ids, count, 4, True, True, True)
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


def contiguous_group_ids(sizes):
    """Groups of consecutive channels with the given sizes (GN's grouping when they are equal)."""
    return torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))


def test_nchw_group_walk_matches_the_row_walk_and_the_reference():
    """Groups of consecutive channels in float32/64 go group by group (as GN does); shuffled groups
    and half precision by rows. Both walks do the same arithmetic, so they agree to the bit."""
    gen = torch.Generator().manual_seed(3)
    contiguous = [contiguous_group_ids([3, 9, 4, 8]), contiguous_group_ids([6, 6, 6, 6])]
    shuffled = random_group_ids(24, 4, 3, 9, gen)
    long_rows, short_rows = (2, 24, 100, 90), (2, 24, 5, 7)
    assert [_C.walk_for(torch.empty(long_rows), ids, 4) for ids in contiguous] == ["groups", "groups"]
    assert _C.walk_for(torch.empty(long_rows), shuffled, 4) == "rows"
    assert _C.walk_for(torch.empty(short_rows), contiguous[0], 4) == "groups"
    assert _C.walk_for(torch.empty(long_rows, dtype=torch.bfloat16), contiguous[0], 4) == "rows"
    before = torch.get_num_threads()
    try:  # fewer groups (N * K = 2) than threads: the rows spread over all of them
        torch.set_num_threads(3)
        assert _C.walk_for(torch.empty(1, 24, 5, 7), torch.zeros(24, dtype=torch.long), 2) == "rows"
        torch.set_num_threads(1)
        assert _C.walk_for(torch.empty(1, 24, 5, 7), torch.zeros(24, dtype=torch.long), 2) == "groups"
    finally:
        torch.set_num_threads(before)
    assert _C.walk_for(torch.empty(long_rows).to(memory_format=torch.channels_last), contiguous[0], 4) == \
        "channels_last"
    try:
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            for ids in contiguous + [shuffled]:
                for shape in (long_rows, short_rows):
                    for affine in (True, False):
                        x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 2).to(dtype)
                        grad = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
                        weight = torch.randn(24, generator=gen, dtype=dtype) if affine else None
                        bias = torch.randn(24, generator=gen, dtype=dtype) if affine else None
                        results = {}
                        for walk in ("rows", "groups"):
                            assert _C.set_nchw_walk(walk) == walk
                            out, mean, var, grads = run_backend("native", x, ids, 4, weight, bias, grad)
                            results[walk] = (out, mean, var, *grads)
                        for rows, groups in zip(results["rows"], results["groups"]):
                            torch.testing.assert_close(groups, rows, atol=0, rtol=0)
                        if dtype == torch.float64:
                            expected, expected_grads = reference_with_grads(x, ids, 4, weight, bias, grad)
                            torch.testing.assert_close(results["groups"][0], expected, atol=1e-12, rtol=0)
                            for mine, ref in zip(results["groups"][3:], expected_grads):
                                torch.testing.assert_close(mine, ref, atol=1e-10, rtol=1e-10)
    finally:
        _C.set_nchw_walk("auto")
    with pytest.raises(RuntimeError, match="NCHW walk must be"):
        _C.set_nchw_walk("diagonal")


def test_gradcheck_and_gradgradcheck_float64():
    gen = torch.Generator().manual_seed(2)
    for shape, groups in [((2, 12, 4, 3), 3), ((3, 12, 5), 4), ((1, 12, 2, 2, 3), 2), ((2, 12, 1), 3)]:
        ids = random_group_ids(12, groups, 2, 12 - 2 * (groups - 1), gen)
        count = torch.bincount(ids, minlength=groups)
        x = torch.randn(shape, dtype=torch.float64, generator=gen, requires_grad=True)
        weight = torch.randn(12, dtype=torch.float64, generator=gen, requires_grad=True)
        bias = torch.randn(12, dtype=torch.float64, generator=gen, requires_grad=True)

        def affine(*a):
            return group_norm(a[0], a[1], a[2], ids, count, groups)[0]

        def plain(a):
            return group_norm(a, None, None, ids, count, groups)[0]

        assert torch.autograd.gradcheck(affine, (x, weight, bias))
        assert torch.autograd.gradcheck(plain, (x,))
        assert torch.autograd.gradgradcheck(affine, (x, weight, bias))
        assert torch.autograd.gradcheck(affine, (x, weight, bias), check_forward_ad=True, check_backward_ad=False,
                                        check_undefined_grad=False, check_batched_grad=False)


def test_first_derivatives_run_the_kernels_and_more_the_composite():
    """One backward: the C++ node and dgn::group_norm_backward; create_graph or forward AD: the plain composite."""
    ids = random_group_ids(8, 2, 2, 6)
    count = torch.bincount(ids, minlength=2)
    x = torch.randn(2, 8, 3, 3, requires_grad=True)
    weight = torch.randn(8, requires_grad=True)

    def ops_run(fn):
        with torch.profiler.profile() as prof:
            fn()
        return {event.name for event in prof.events()}

    y = group_norm(x, weight, None, ids, count, 2)[0]
    names = ops_run(lambda: torch.autograd.grad((y * y).sum(), (x, weight)))
    assert "dgn::group_norm_backward" in names and "dgn::group_norm_composite" not in names
    y = group_norm(x, weight, None, ids, count, 2)[0]
    names = ops_run(lambda: torch.autograd.grad((y * y).sum(), (x, weight), create_graph=True))
    assert "dgn::group_norm_composite" in names
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        dual = fwAD.make_dual(x.detach(), torch.randn_like(x))
        names = ops_run(lambda: group_norm(dual, weight.detach(), None, ids, count, 2))
    assert "dgn::group_norm_composite" in names


def test_gradient_flags():
    """Only the gradients asked for are computed; the others come back None."""
    ids = random_group_ids(16, 4, 2, 6)
    count = torch.bincount(ids, minlength=4)
    x = torch.randn(2, 16, 5, 5)
    weight, bias = torch.randn(16), torch.randn(16)
    dy = torch.randn(2, 16, 5, 5)
    _, _, _, group_mean, group_rstd = group_norm(x, weight, bias, ids, count, 4)
    full = group_norm_backward(dy, x, weight, group_mean, group_rstd, ids, count, 4, True, True, True)
    for flags in [(True, False, False), (False, True, False), (False, False, True), (False, True, True)]:
        part = group_norm_backward(dy, x, weight, group_mean, group_rstd, ids, count, 4, *flags)
        for wanted, mine, whole in zip(flags, part, full):
            if wanted:
                torch.testing.assert_close(mine, whole, atol=0, rtol=0)
            else:
                assert mine.numel() == 0
    # Through autograd: x without grad, weight with.
    w = weight.clone().requires_grad_()
    out = group_norm(x, w, bias, ids, count, 4)[0]
    (grad_w,) = torch.autograd.grad(out, (w,), dy)
    torch.testing.assert_close(grad_w, full[1], atol=0, rtol=0)


def test_saves_what_group_norm_saves():
    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    weight = torch.randn(64, requires_grad=True)
    bias = torch.randn(64, requires_grad=True)
    ids = random_group_ids(64, 32, 1, 3)
    ours = saved_tensor_shapes(lambda: dynamic_group_norm(x, ids, 32, weight, bias))
    assert ours == saved_tensor_shapes(lambda: F.group_norm(x, 32, weight, bias))
    ours = saved_tensor_shapes(lambda: dynamic_group_norm(x, ids, 32))  # affine=False
    assert ours == saved_tensor_shapes(lambda: F.group_norm(x, 32))


@pytest.mark.parametrize("ratio", [1e3, 1e4])
@pytest.mark.parametrize("side", [7, 14])  # rows of 49 (one-pass statistics) and 196 elements (two-pass)
def test_stable_at_large_mean_to_std_ratio(isa, ratio, side):
    """Error vs float64 no larger than native GN's, for GN's grouping and a ragged one with spread means."""
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
    """Rows, groups and channels-last runs are split across threads; each one's arithmetic, and the way
    their sums are combined, do not depend on the split. The channels-last case spans several runs
    (2^18 elements each) per sample, so their combination is checked against the reference too."""
    shuffled = random_group_ids(64, 8, 4, 12)
    contiguous = torch.arange(64) // 8
    x = torch.randn(2, 64, 40, 41) * 2 + 1
    wide = (torch.randn(2, 64, 100, 100) * 2 + 1).to(memory_format=torch.channels_last)  # 3 runs per sample
    cases = [("nchw rows", x, shuffled), ("nchw groups", x, contiguous), ("channels last", wide, shuffled)]
    assert [_C.walk_for(x, ids, 8) for _, x, ids in cases] == ["rows", "groups", "channels_last"]
    weight, bias = torch.randn(64), torch.randn(64)
    before = torch.get_num_threads()
    for name, x, ids in cases:
        count = torch.bincount(ids, minlength=8)
        dy = torch.randn_like(x)
        results = []
        try:
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)
                fwd = group_norm(x, weight, bias, ids, count, 8)
                results.append(fwd + group_norm_backward(dy, x, weight, fwd[3], fwd[4], ids, count, 8,
                                                         True, True, True))
        finally:
            torch.set_num_threads(before)
        for other in results[1:]:
            for mine, theirs in zip(other, results[0]):
                assert torch.equal(mine, theirs), name
        expected, expected_grads = reference_with_grads(x, ids, 8, weight, bias, dy)
        torch.testing.assert_close(results[0][0].double(), expected, atol=2e-6, rtol=0, msg=name)
        torch.testing.assert_close(results[0][5].double(), expected_grads[0], atol=2e-5, rtol=1e-5, msg=name)


def test_the_dispatcher_runs_the_extension_on_the_cpu():
    for key in ("CPU", "Autograd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key("dgn::group_norm", key), key
    assert torch._C._dispatch_has_kernel_for_dispatch_key("dgn::group_norm_backward", "CPU")
    assert torch._C._dispatch_has_kernel_for_dispatch_key("dgn::update_channel_stats_", "CPU")


def test_any_cpu_input_runs_natively():
    """Strided, channels_last, half precision, empty: the CPU kernel takes them all, outputs keep the layout."""
    ids = random_group_ids(16, 4, 2, 6)
    count = torch.bincount(ids, minlength=4)
    x = torch.randn(2, 16, 6, 5)
    for variant, tol in [(x.to(memory_format=torch.channels_last), 2e-6), (x.transpose(2, 3), 2e-6),
                         (x[:, :, ::2], 2e-6), (x.bfloat16(), 3e-2), (x.half(), 3e-3)]:
        variant = variant.detach().requires_grad_()
        out = group_norm(variant, None, None, ids, count, 4)[0]
        assert out.dtype == variant.dtype
        if variant.is_contiguous(memory_format=torch.channels_last) and not variant.is_contiguous():
            assert out.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out.double(), group_norm_reference(variant.detach(), ids, 4), atol=tol, rtol=tol)
        out.sum().backward()
        assert variant.grad.shape == variant.shape and variant.grad.dtype == variant.dtype
    empty = torch.randn(0, 16, 7, 7, requires_grad=True)
    out = group_norm(empty, None, None, ids, count, 4)[0]
    out.sum().backward()
    assert out.shape == empty.shape and empty.grad.shape == empty.shape


def test_without_the_extension_everything_runs_the_plain_composite(tmp_path):
    """A process that cannot import dgn_plugins._C: same numbers, autograd by composition, no warning."""
    script = tmp_path / "no_extension.py"
    script.write_text(textwrap.dedent("""
        import sys, warnings
        import importlib.abc

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "dgn_plugins._C":
                    raise ImportError("hidden for the test")

        sys.meta_path.insert(0, Block())
        import torch
        from dgn_plugins import DynamicGroupNorm, ops
        warnings.simplefilter("error")  # using the layer warns about nothing
        assert not ops.native_available() and "hidden" in ops.native_import_error()
        torch.manual_seed(0)
        layer = DynamicGroupNorm(16, 4).double()
        x = torch.randn(2, 16, 5, 5, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradgradcheck(layer, (x,))
        reference = torch.nn.functional.group_norm(x, 4, layer.weight, layer.bias)
        torch.testing.assert_close(layer(x), reference)
        assert int(layer.num_stat_updates) > 0
        print("ok")
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr


def test_rejects_bad_group_ids():
    x = torch.randn(2, 8, 3, 3)
    with pytest.raises(RuntimeError, match="outside"):
        group_norm(x, None, None, torch.tensor([0, 1, 2, 3, 0, 1, 2, 4]), torch.ones(4), 4)
    with pytest.raises(RuntimeError, match="channels"):
        group_norm(x, None, None, torch.zeros(6, dtype=torch.long), torch.ones(4), 4)


@pytest.mark.parametrize("momentum", [0.1, 0.7])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_running_statistics_match_plain_path(momentum, dtype):
    """The fused update: first call copies, later ones lerp; non-finite batches change nothing; counter + 1."""
    torch.manual_seed(4)
    ids = random_group_ids(32, 8, 2, 6)
    layers = {}
    for backend in ("native", "reference"):
        layer = DynamicGroupNorm(32, 8, momentum=momentum).to(dtype)
        layer.set_group_ids(ids)
        layers[backend] = layer
    for step in range(4):
        x = (torch.randn(3, 32, 9, 11) * (step + 1) + step).to(dtype)
        if step == 2:
            x[1, 5] = float("nan")  # one channel's statistics are NaN in this batch
            x[0, 7, 0, 0] = float("inf")
        for backend, layer in layers.items():
            with use_backend(backend):
                layer(x)
        native, plain = layers["native"], layers["reference"]
        assert int(native.num_stat_updates) == int(plain.num_stat_updates) == step + 1
        torch.testing.assert_close(native.channel_mean_ema, plain.channel_mean_ema)
        torch.testing.assert_close(native.channel_var_ema, plain.channel_var_ema)
        assert torch.isfinite(native.channel_mean_ema).all() and torch.isfinite(native.channel_var_ema).all()


def test_running_statistics_update_in_one_call():
    """In training mode the layer's step is the forward and one update call (no chain of small ops)."""
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
