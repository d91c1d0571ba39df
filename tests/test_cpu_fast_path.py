"""The compiled CPU fast path against the plain path, native GN and the float64 reference.

Each variant (dtype, memory format) compiles once, a few seconds, so the cases
are few and share shapes; shapes are dynamic, so a second shape must not
recompile.
"""
import warnings

import pytest
import torch
import torch.nn.functional as F

from dgn_plugins.functional import dynamic_group_norm
from dgn_plugins.kernels import COMPILE_MIN_ELEMENTS, cpu_compiled, select_backend
from dgn_plugins.layer import DynamicGroupNorm
from dgn_plugins.layout import default_group_ids
from reference import group_norm_reference, random_group_ids, reference_with_grads, run_backend


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_float32_matches_reference_plain_path_and_group_norm(memory_format, monkeypatch):
    gen = torch.Generator().manual_seed(0)
    for shape, ids, groups in [((2, 32, 9, 11), random_group_ids(32, 4, 4, 12, gen), 4),
                               ((3, 32, 6, 5), default_group_ids(32, 8), 8)]:
        x = (torch.randn(shape, generator=gen) * 2 - 1).contiguous(memory_format=memory_format)
        weight, bias = torch.randn(32, generator=gen), torch.randn(32, generator=gen)
        grad = torch.randn(shape, generator=gen)
        out, mean, var, grads = run_backend("compile", monkeypatch, x, ids, groups, weight, bias, grad)
        assert out.is_contiguous(memory_format=memory_format)
        assert grads[0].is_contiguous(memory_format=memory_format)
        expected, expected_grads = reference_with_grads(x, ids, groups, weight, bias, grad)
        torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=0)
        for mine, ref in zip(grads, expected_grads):
            torch.testing.assert_close(mine.double(), ref, atol=2e-5, rtol=1e-5)

        plain_out, plain_mean, plain_var, plain_grads = run_backend("torch", monkeypatch, x, ids, groups, weight, bias, grad)
        torch.testing.assert_close(out, plain_out, atol=2e-6, rtol=0)
        torch.testing.assert_close(mean, plain_mean, atol=1e-6, rtol=1e-6)  # the layer's running statistics
        torch.testing.assert_close(var, plain_var, atol=1e-6, rtol=1e-5)
        for mine, theirs in zip(grads, plain_grads):
            torch.testing.assert_close(mine, theirs, atol=2e-5, rtol=1e-5)
        if groups == 8:  # GN's grouping: GN's output
            torch.testing.assert_close(out, F.group_norm(x, groups, weight, bias), atol=1e-6, rtol=0)


def test_bfloat16_rounds_once_and_keeps_dtypes(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    ids = random_group_ids(32, 4, 4, 12, gen)
    x = (torch.randn(2, 32, 7, 6, generator=gen) * 2 + 3).to(torch.bfloat16)
    weight = torch.randn(32, generator=gen).to(torch.bfloat16)
    bias = torch.randn(32, generator=gen).to(torch.bfloat16)
    grad = torch.randn(2, 32, 7, 6, generator=gen).to(torch.bfloat16)
    out, mean, var, grads = run_backend("compile", monkeypatch, x, ids, 4, weight, bias, grad)
    assert out.dtype == torch.bfloat16 and mean.dtype == var.dtype == torch.float32
    assert all(g.dtype == torch.bfloat16 for g in grads)
    expected, expected_grads = reference_with_grads(x, ids, 4, weight, bias, grad)
    torch.testing.assert_close(out, expected.to(torch.bfloat16))
    torch.testing.assert_close(grads[0].double(), expected_grads[0], atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(grads[1].double(), expected_grads[1], atol=5e-1, rtol=5e-2)


def test_stable_at_mean_to_std_ratio_1000(monkeypatch):
    monkeypatch.setenv("DGN_BACKEND", "compile")
    x = torch.randn(2, 64, 28, 28) + 1000.0
    ids = default_group_ids(64, 32)
    reference = group_norm_reference(x, ids, 32)
    ours = (dynamic_group_norm(x, ids, 32).double() - reference).abs().max()
    native = (F.group_norm(x, 32).double() - reference).abs().max()
    assert ours <= native, (float(ours), float(native))


def test_new_shapes_reuse_the_compiled_code(monkeypatch):
    """Varying batch and image size (RoI counts, multi-scale) must not recompile."""
    monkeypatch.setenv("DGN_BACKEND", "compile")
    ids = default_group_ids(32, 8)
    dynamic_group_norm(torch.randn(2, 32, 9, 11), ids, 8)  # compiled (or cached) before counting
    counters = torch._dynamo.utils.counters
    before = counters["stats"]["unique_graphs"]
    for shape in [(5, 32, 4, 13), (3, 32, 17, 6), (7, 32, 2, 3)]:
        x = torch.randn(shape)
        torch.testing.assert_close(dynamic_group_norm(x, ids, 8), F.group_norm(x, 8), atol=1e-6, rtol=0)
    assert counters["stats"]["unique_graphs"] == before


def test_auto_takes_the_fast_path_only_where_it_pays(monkeypatch):
    """Without the native extension (or for inputs it does not run), auto compiles only large inputs."""
    from dgn_plugins.kernels import cpu_native

    monkeypatch.setenv("DGN_BACKEND", "auto")
    side = int((COMPILE_MIN_ELEMENTS / 64) ** 0.5) + 1
    large = torch.randn(1, 64, side, side)
    large_channels_last = large.contiguous(memory_format=torch.channels_last)
    # Inputs the extension does not run, whether it is built or not.
    assert select_backend(large_channels_last) == "compile"
    assert select_backend(large.bfloat16()) == "compile"
    assert select_backend(torch.randn(2, 64, 8, 8).bfloat16()) == "torch"  # not worth a compilation
    assert select_backend(torch.randn(0, 64, side, side)) == "torch"
    monkeypatch.setattr(cpu_native, "_C", None)  # as in a pure-Python install
    assert select_backend(large) == "compile"
    assert select_backend(large.double()) == "torch"  # float64 stays the reference
    assert select_backend(torch.randn(2, 64, 8, 8)) == "torch"
    monkeypatch.setenv("DGN_BACKEND", "torch")
    assert select_backend(large) == "torch"
    monkeypatch.setenv("DGN_BACKEND", "fastest")
    with pytest.raises(ValueError, match="DGN_BACKEND"):
        select_backend(large)


def test_compilation_failure_falls_back_to_plain_ops(monkeypatch):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no C++ compiler")

    monkeypatch.setattr(cpu_compiled._Compiled, "failed", None)
    monkeypatch.setattr(cpu_compiled, "_compiled_forward", cpu_compiled._Compiled(cpu_compiled.forward_graph))
    monkeypatch.setattr(cpu_compiled, "_compiled_backward", cpu_compiled._Compiled(cpu_compiled.backward_graph))
    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setenv("DGN_BACKEND", "compile")
    ids = random_group_ids(16, 4, 2, 6)
    x = torch.randn(2, 16, 5, 5, requires_grad=True)
    with pytest.warns(RuntimeWarning, match="no C.. compiler"):
        out = dynamic_group_norm(x, ids, 4)
    torch.testing.assert_close(out.double(), group_norm_reference(x.detach(), ids, 4), atol=2e-6, rtol=0)
    out.sum().backward()  # the uncompiled graph still differentiates correctly
    assert not cpu_compiled.is_available()
    assert select_backend(x) == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning, not one per call
        dynamic_group_norm(x, ids, 4)


def test_layer_statistics_and_gradients_match_plain_path(monkeypatch):
    torch.manual_seed(2)
    fast, plain = DynamicGroupNorm(32, 8), DynamicGroupNorm(32, 8)
    ids = random_group_ids(32, 8, 2, 6)
    fast.set_group_ids(ids)
    plain.set_group_ids(ids)
    x = torch.randn(2, 32, 9, 11) * 3 + 1
    grad = torch.randn(2, 32, 9, 11)
    monkeypatch.setenv("DGN_BACKEND", "compile")
    fast(x).backward(grad)
    monkeypatch.setenv("DGN_BACKEND", "torch")
    plain(x).backward(grad)
    torch.testing.assert_close(fast.channel_mean_ema, plain.channel_mean_ema)
    torch.testing.assert_close(fast.channel_var_ema, plain.channel_var_ema)
    torch.testing.assert_close(fast.weight.grad, plain.weight.grad, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(fast.bias.grad, plain.bias.grad, atol=2e-5, rtol=1e-5)
