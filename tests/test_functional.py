"""The operator against nn.GroupNorm and a float64 reference, on every backend.

Every test runs once per available backend (``backend`` fixture in
conftest.py): the native kernels (C++ extension on the CPU), the plain
PyTorch reference, and Triton's kernels under its interpreter.
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import group_norm_reference, random_group_ids, saved_tensor_shapes

from dgn_plugins.functional import dynamic_group_norm, dynamic_group_norm_with_stats
from dgn_plugins.grouping import default_group_ids

pytestmark = pytest.mark.usefixtures("backend")


def _affine(channels, dtype=torch.float32):
    return torch.randn(channels, dtype=dtype), torch.randn(channels, dtype=dtype)


@pytest.mark.parametrize("shape,groups", [((2, 64, 9, 9), 32), ((3, 256, 5, 4), 32), ((2, 48), 4), ((2, 32, 11), 8),
                                          ((1, 16, 3, 4, 5), 4)])
def test_default_grouping_equals_group_norm(shape, groups):
    x = torch.randn(shape) * 3 + 1
    weight, bias = _affine(shape[1])
    ids = default_group_ids(shape[1], groups)
    torch.testing.assert_close(dynamic_group_norm(x, ids, groups, weight, bias), F.group_norm(x, groups, weight, bias),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
@pytest.mark.parametrize("shape", [(2, 24, 6, 5), (3, 24), (2, 24, 7), (2, 24, 2, 3, 4)])
def test_arbitrary_layouts_match_float64_reference(dtype, atol, shape):
    gen = torch.Generator().manual_seed(1)
    for num_groups, low, high in [(4, 3, 9), (6, 2, 6), (3, 8, 8)]:
        ids = random_group_ids(24, num_groups, low, high, gen)
        x = torch.randn(shape, generator=gen, dtype=dtype) * 2 - 1
        weight, bias = _affine(24, dtype)
        out = dynamic_group_norm(x, ids, num_groups, weight, bias)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), group_norm_reference(x, ids, num_groups, weight, bias), atol=atol, rtol=0)


@pytest.mark.parametrize("shape", [(2, 12, 4, 3), (3, 12), (2, 12, 5), (1, 12, 2, 2, 3)])
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_over_random_layouts(shape, affine):
    gen = torch.Generator().manual_seed(2)
    for trial in range(3):
        num_groups = [3, 4, 2][trial]
        ids = random_group_ids(12, num_groups, 2, 12 - 2 * (num_groups - 1), gen)
        x = torch.randn(shape, dtype=torch.float64, generator=gen, requires_grad=True)
        weight = torch.randn(12, dtype=torch.float64, generator=gen, requires_grad=True) if affine else None
        bias = torch.randn(12, dtype=torch.float64, generator=gen, requires_grad=True) if affine else None
        inputs = (x, weight, bias) if affine else (x,)

        def fn(*args):
            w, b = (args[1], args[2]) if affine else (None, None)
            return dynamic_group_norm(args[0], ids, num_groups, w, b)

        assert torch.autograd.gradcheck(fn, inputs)


def test_gradcheck_channels_last():
    ids = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 1, 2])
    x = torch.randn(2, 10, 3, 4, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(10, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: dynamic_group_norm(a[0], ids, 3, a[1], a[2]), (x, weight, bias))


def test_channels_last_matches_contiguous_and_keeps_layout():
    ids = random_group_ids(32, 4, 4, 12)
    x = torch.randn(2, 32, 6, 7)
    x_cl = x.to(memory_format=torch.channels_last).requires_grad_()
    x_c = x.clone().requires_grad_()
    weight, bias = _affine(32)
    out_cl = dynamic_group_norm(x_cl, ids, 4, weight, bias)
    out_c = dynamic_group_norm(x_c, ids, 4, weight, bias)
    assert out_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out_cl, out_c, atol=1e-6, rtol=0)
    grad = torch.randn_like(x)
    out_cl.backward(grad)
    out_c.backward(grad)
    torch.testing.assert_close(x_cl.grad, x_c.grad, atol=1e-5, rtol=0)


def test_gradients_match_reference_and_group_norm():
    x = torch.randn(2, 64, 7, 7, requires_grad=True)
    weight = torch.randn(64, requires_grad=True)
    bias = torch.randn(64, requires_grad=True)
    grad = torch.randn(2, 64, 7, 7)
    dynamic_group_norm(x, default_group_ids(64, 32), 32, weight, bias).backward(grad)
    ours = [t.grad.clone() for t in (x, weight, bias)]
    for t in (x, weight, bias):
        t.grad = None
    F.group_norm(x, 32, weight, bias).backward(grad)
    for mine, theirs in zip(ours, (x.grad, weight.grad, bias.grad)):
        torch.testing.assert_close(mine, theirs, atol=2e-5, rtol=1e-5)


def test_empty_batch_forward_and_backward():
    ids = random_group_ids(16, 4, 2, 6)
    for shape in [(0, 16, 7, 7), (0, 16)]:
        x = torch.randn(shape, requires_grad=True)
        weight = torch.randn(16, requires_grad=True)
        bias = torch.randn(16, requires_grad=True)
        out = dynamic_group_norm(x, ids, 4, weight, bias)
        assert out.shape == x.shape
        out.sum().backward()
        assert x.grad.shape == x.shape
        assert torch.equal(weight.grad, torch.zeros(16)) and torch.equal(bias.grad, torch.zeros(16))
    torch.testing.assert_close(dynamic_group_norm(torch.randn(0, 16, 3, 3), default_group_ids(16, 4), 4),
                               F.group_norm(torch.randn(0, 16, 3, 3), 4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_matrix(dtype):
    ids = random_group_ids(32, 4, 4, 12)
    x = (torch.randn(2, 32, 5, 5) * 2 + 3).to(dtype).requires_grad_()
    weight = torch.randn(32, dtype=dtype, requires_grad=True)
    bias = torch.randn(32, dtype=dtype, requires_grad=True)
    out, channel_mean, channel_var = dynamic_group_norm_with_stats(x, ids, 4, weight, bias)
    assert out.dtype == dtype
    stats_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert channel_mean.dtype == stats_dtype and channel_var.dtype == stats_dtype
    reference = group_norm_reference(x.detach(), ids, 4, weight.detach(), bias.detach())
    # Output is the float32 (or better) result rounded once to the output dtype.
    torch.testing.assert_close(out, reference.to(dtype))
    out.backward(torch.ones_like(out))
    assert x.grad.dtype == dtype and weight.grad.dtype == dtype and bias.grad.dtype == dtype
    x64 = x.detach().double().requires_grad_()
    w64 = weight.detach().double().requires_grad_()
    group_norm_reference(x64, ids, 4, w64, bias.detach().double()).sum().backward()
    scale = {torch.float16: 1e-2, torch.bfloat16: 5e-2}.get(dtype, 1e-5)
    torch.testing.assert_close(x.grad.double(), x64.grad, atol=scale, rtol=scale)
    torch.testing.assert_close(weight.grad.double(), w64.grad, atol=scale * 10, rtol=scale)


def _naive_sum_of_squares(x, groups, eps=1e-5):
    n, c = x.shape[:2]
    flat = x.reshape(n, groups, -1)
    mean = flat.sum(-1) / flat.shape[-1]
    var = (flat * flat).sum(-1) / flat.shape[-1] - mean * mean
    return ((flat - mean[..., None]) / torch.sqrt(var.clamp_min(0)[..., None] + eps)).reshape(x.shape)


@pytest.mark.parametrize("channels,groups,size", [(64, 32, 28), (256, 32, 14), (2048, 32, 7)])
def test_stable_at_mean_to_std_ratio_1000(channels, groups, size):
    """Error vs float64 no larger than native GN's; the naive formula fails."""
    x = torch.randn(2, channels, size, size) + 1000.0  # channel mean / std = 1000
    ids = default_group_ids(channels, groups)
    reference = group_norm_reference(x, ids, groups)
    ours = (dynamic_group_norm(x, ids, groups).double() - reference).abs().max()
    native = (F.group_norm(x, groups).double() - reference).abs().max()
    naive = (_naive_sum_of_squares(x, groups).double() - reference).abs().max()
    assert ours <= native, (float(ours), float(native))
    assert naive > 10 * native  # the test can tell a stable formula from an unstable one


def test_saves_no_more_than_group_norm(backend):
    if backend == "reference":
        pytest.skip("the reference is differentiated by autograd op by op: it saves its intermediates")
    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    weight = torch.randn(64, requires_grad=True)
    bias = torch.randn(64, requires_grad=True)
    ids = random_group_ids(64, 32, 1, 3)
    ours = saved_tensor_shapes(lambda: dynamic_group_norm(x, ids, 32, weight, bias))
    assert ours == saved_tensor_shapes(lambda: F.group_norm(x, 32, weight, bias))


def test_rejects_wrong_channel_count_by_name():
    with pytest.raises(ValueError, match="expected input with 16 channels.*got 8"):
        dynamic_group_norm(torch.randn(2, 8, 3, 3), default_group_ids(16, 4), 4)
    with pytest.raises(ValueError, match=r"\(N, C, \*\)"):
        dynamic_group_norm(torch.randn(16), default_group_ids(16, 4), 4)


@st.composite
def _problems(draw):
    num_groups = draw(st.integers(1, 5))
    size_min = draw(st.integers(1, 3))
    size_max = draw(st.integers(size_min, size_min + 3))
    channels = draw(st.integers(num_groups * size_min, num_groups * size_max))
    batch = draw(st.integers(0, 3))
    spatial = draw(st.lists(st.integers(1, 4), min_size=0, max_size=3))
    seed = draw(st.integers(0, 2**16))
    return num_groups, size_min, size_max, channels, (batch, channels, *spatial), seed


@settings(max_examples=60, deadline=None)
@given(_problems())
def test_property_forward_and_backward_match_reference(problem):
    num_groups, size_min, size_max, channels, shape, seed = problem
    gen = torch.Generator().manual_seed(seed)
    ids = random_group_ids(channels, num_groups, size_min, size_max, gen)
    x = torch.randn(shape, dtype=torch.float64, generator=gen).requires_grad_()
    weight = torch.randn(channels, dtype=torch.float64, generator=gen).requires_grad_()
    bias = torch.randn(channels, dtype=torch.float64, generator=gen).requires_grad_()
    grad = torch.randn(shape, dtype=torch.float64, generator=gen)
    if x.numel() == channels and size_min == 1 and int(torch.bincount(ids).min()) == 1:
        with pytest.raises(ValueError, match="more than 1 value"):  # as F.group_norm: a lone value per group
            dynamic_group_norm(x, ids, num_groups, weight, bias)
        return

    out = dynamic_group_norm(x, ids, num_groups, weight, bias)
    ours = torch.autograd.grad(out, (x, weight, bias), grad)
    expected = group_norm_reference(x, ids, num_groups, weight, bias)
    theirs = torch.autograd.grad(expected, (x, weight, bias), grad)
    torch.testing.assert_close(out, expected, atol=1e-9, rtol=1e-9)
    for mine, ref in zip(ours, theirs):
        torch.testing.assert_close(mine, ref, atol=1e-8, rtol=1e-7)
