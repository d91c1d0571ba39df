"""GroupNorm's own tests, run on DynamicGroupNorm: a drop-in must pass them.

The checks of PyTorch's GroupNorm tests (test_nn.py's GroupNorm tests, the
GroupNorm entries of common_nn / common_modules: forward against the
definition, empty batches, one value per group, numerics on a large input,
memory formats, dtypes, gradcheck, gradgradcheck, forward-mode AD,
torch.func, factory kwargs, pickling, repr) with the substitution
``nn.GroupNorm(K, C, eps, affine)`` -> ``DynamicGroupNorm(C, num_groups=K,
eps=eps, affine=affine)``, on every backend. Left out: GN's error for C not
divisible by K, which DGN accepts on purpose (ragged groups).
"""
import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from reference import random_group_ids
from torch import nn

from dgn_plugins import DynamicGroupNorm

pytestmark = pytest.mark.usefixtures("backend")


def dgn(num_groups, num_channels, eps=1e-5, affine=True, **kwargs):
    """The substitution applied to every ``nn.GroupNorm(K, C, eps, affine)`` of the ported tests."""
    return DynamicGroupNorm(num_channels, num_groups=num_groups, eps=eps, affine=affine, **kwargs)


# ------------------------------------------------------------------ test_nn.py
@pytest.mark.parametrize("shape,groups", [((2, 6, 4, 2, 2), 3), ((2, 6, 3, 2, 2), 3), ((2, 6, 3), 3),
                                          ((1, 6, 4), 6), ((1, 6, 4), 3), ((2, 6, 4, 2, 2), 1), ((2, 6, 4), 2)])
def test_GroupNorm_general(shape, groups):
    b, c = shape[:2]
    x = torch.rand(shape) * 10 + 10
    module = dgn(groups, c)
    out = module(x).view(b, groups, -1)
    torch.testing.assert_close(out.mean(-1), torch.zeros(b, groups), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(b, groups), atol=1e-3, rtol=0)
    out.sum().backward()
    # affine: output = normalised * scale + bias, per channel
    scale = torch.rand(c) * 10 + 0.5
    bias = torch.rand(c) * 10 + 0.5
    module.weight.data.copy_(scale)
    module.bias.data.copy_(bias)
    out = module(x)
    per_channel = (1, c) + (1,) * (len(shape) - 2)
    normalised = ((out - bias.view(per_channel)) / scale.view(per_channel)).view(b, groups, -1)
    torch.testing.assert_close(normalised.mean(-1), torch.zeros(b, groups), atol=1e-4, rtol=0)
    torch.testing.assert_close(normalised.var(-1, unbiased=False), torch.ones(b, groups), atol=1e-3, rtol=0)
    # one group per channel is InstanceNorm, one group in all is LayerNorm
    instance = dgn(c, c, affine=False)
    torch.testing.assert_close(instance(x), F.instance_norm(x), atol=1e-5, rtol=1e-5)
    layer = dgn(1, c, affine=False)
    torch.testing.assert_close(layer(x), F.layer_norm(x, x.shape[1:]), atol=1e-5, rtol=1e-5)


def test_GroupNorm_raises_error_if_one_value_per_group():
    x = torch.rand(10)[None, :, None]
    with pytest.raises(ValueError):
        nn.GroupNorm(10, 10)(x)
    with pytest.raises(ValueError):
        dgn(10, 10)(x)


def test_GroupNorm_empty():
    module = dgn(2, 4)
    x = torch.randn(0, 4, 2, 2, requires_grad=True)
    out = module(x)
    assert out.shape == x.shape
    out.sum().backward()
    assert x.grad.shape == x.shape
    torch.testing.assert_close(module.weight.grad, torch.zeros(4))
    torch.testing.assert_close(module.bias.grad, torch.zeros(4))


def test_GroupNorm_numeric(backend):
    """PyTorch's limit on its large input: 1e-5 from a float64 reference (float32 statistics over 4.7M values)."""
    x = torch.rand(1, 8, 256, 256, 72, generator=torch.Generator().manual_seed(0))
    module = dgn(2, 8)
    with torch.no_grad():
        module.weight.normal_()
        module.bias.normal_()
        out = module(x)
        expected = F.group_norm(x.double(), 2, module.weight.double(), module.bias.double())
    assert (out.double() - expected).abs().max() < 1e-5


@pytest.mark.parametrize("memory_format,shape", [(torch.channels_last, (2, 6, 5, 7)),
                                                 (torch.channels_last_3d, (2, 6, 3, 4, 5))])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
def test_GroupNorm_memory_format(memory_format, shape, dtype):
    """Channels-last input: channels-last output and gradient, the contiguous computation's values."""
    module = dgn(3, 6).to(dtype)
    x = torch.randn(shape).to(dtype)
    x_cl = x.contiguous(memory_format=memory_format).requires_grad_()
    x_c = x.clone().requires_grad_()
    out_cl, out_c = module(x_cl), module(x_c)
    assert out_cl.is_contiguous(memory_format=memory_format)
    grad = torch.randn(shape).to(dtype)
    out_cl.backward(grad.contiguous(memory_format=memory_format))
    out_c.backward(grad)
    assert x_cl.grad.is_contiguous(memory_format=memory_format)
    tol = {torch.bfloat16: 2e-2, torch.float16: 2e-3}.get(dtype, 1e-5)
    torch.testing.assert_close(out_cl, out_c, atol=tol, rtol=tol)
    torch.testing.assert_close(x_cl.grad, x_c.grad, atol=tol * 10, rtol=tol)
    torch.testing.assert_close(out_c.float(), F.group_norm(x.float(), 3, module.weight.float(), module.bias.float()),
                               atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_GroupNorm_half_precision_matches_float32(dtype):
    x = torch.randn(2, 8, 6, 6)
    module = dgn(4, 8)
    expected = module(x)
    half = copy.deepcopy(module).to(dtype)
    out = half(x.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, atol=4e-2, rtol=4e-2)
    assert half.channel_mean_ema.dtype == torch.float32


# ------------------------------------------------------------------ common_nn / common_modules entries
MODULE_CASES = [  # (K, C, eps, affine, input shape): the GroupNorm entries of common_nn and common_modules
    (3, 6, 1e-3, True, (4, 6, 5)),
    (5, 5, 1e-3, False, (4, 5, 5)),   # no affine, InstanceNorm
    (1, 5, 1e-3, False, (4, 5, 5)),   # no affine, LayerNorm
    (3, 6, 1e-3, True, (4, 6, 2, 3)),
    (3, 3, 1e-3, False, (4, 3, 2, 3)),
    (1, 3, 1e-3, False, (4, 3, 2, 3)),
    (1, 6, 1e-5, True, (1, 6, 1, 1, 2)),
]


@pytest.mark.parametrize("case", MODULE_CASES)
def test_module_forward_matches_group_norm(case):
    groups, channels, eps, affine, shape = case
    module = dgn(groups, channels, eps, affine)
    if affine:
        with torch.no_grad():
            module.weight.normal_()
            module.bias.normal_()
    reference = nn.GroupNorm(groups, channels, eps, affine)
    reference.load_state_dict(module.state_dict(), strict=False)
    x = torch.randn(shape)
    torch.testing.assert_close(module(x), reference(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", MODULE_CASES)
def test_module_gradcheck_gradgradcheck(case):
    groups, channels, eps, affine, shape = case
    module = dgn(groups, channels, eps, affine).double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    params = tuple(module.parameters())

    def fn(x, *p):
        if affine:
            return torch.func.functional_call(module, dict(zip(("weight", "bias"), p)), (x,))
        return module(x)

    assert torch.autograd.gradcheck(fn, (x, *params))
    assert torch.autograd.gradgradcheck(fn, (x, *params))


@pytest.mark.parametrize("case", MODULE_CASES)
def test_module_forward_ad(case):
    groups, channels, eps, affine, shape = case
    module = dgn(groups, channels, eps, affine).double()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,), check_forward_ad=True, check_backward_ad=False,
                                    check_undefined_grad=False, check_batched_grad=False)


def test_module_non_contiguous_input():
    module = dgn(3, 6)
    x = torch.randn(4, 5, 6).transpose(1, 2)  # (4, 6, 5), not contiguous
    assert not x.is_contiguous()
    torch.testing.assert_close(module(x), module(x.contiguous()), atol=1e-6, rtol=0)
    grad = torch.randn(4, 6, 5)
    x = x.detach().requires_grad_()
    module(x).backward(grad)
    y = x.detach().contiguous().requires_grad_()
    module(y).backward(grad)
    torch.testing.assert_close(x.grad, y.grad, atol=1e-5, rtol=0)


def test_module_factory_kwargs():
    module = dgn(3, 6, dtype=torch.float64, device="cpu")
    assert module.weight.dtype == module.bias.dtype == torch.float64
    assert module.channel_mean_ema.dtype == module.channel_var_ema.dtype == torch.float64
    meta = dgn(3, 6, device="meta")
    assert all(t.device.type == "meta" for t in list(meta.parameters()) + list(meta.buffers()))
    bias_free = DynamicGroupNorm(6, num_groups=3, bias=False)  # nn.GroupNorm's keyword
    assert bias_free.bias is None and bias_free.weight is not None
    torch.testing.assert_close(bias_free(torch.randn(2, 6, 4)).shape, torch.Size([2, 6, 4]))


def test_module_repr_pickle_deepcopy_and_modes():
    module = dgn(3, 6)
    assert "3, 6, eps=1e-05, affine=True" in repr(module)
    x = torch.randn(4, 6, 5)
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        torch.testing.assert_close(clone(x), module(x))
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    buffer.seek(0)
    restored = dgn(3, 6)
    restored.load_state_dict(torch.load(buffer))
    torch.testing.assert_close(restored(x), module(x))
    # Train and eval mode give the same output (no batch statistics), as GN.
    torch.testing.assert_close(module.train()(x), module.eval()(x))


# ------------------------------------------------------------------ torch.func (functorch's GroupNorm checks)
from dgn_plugins import compat  # noqa: E402

needs_vmap_rules = pytest.mark.skipif(not compat.HAS_VMAP_RULES, reason=compat.VMAP_UNSUPPORTED)


@pytest.mark.skipif(compat.HAS_VMAP_RULES, reason="this torch has vmap rules: the tests below run instead")
def test_vmap_without_rules_says_so_in_one_line():
    module = dgn(3, 6).eval()
    with pytest.raises(RuntimeError) as raised:
        torch.func.vmap(module)(torch.randn(5, 4, 6, 3))
    assert str(raised.value) == compat.VMAP_UNSUPPORTED


@needs_vmap_rules
def test_vmap_over_a_batch_of_inputs():
    module = dgn(3, 6).eval()
    x = torch.randn(5, 4, 6, 3)
    out = torch.func.vmap(module)(x)
    torch.testing.assert_close(out, torch.stack([module(xi) for xi in x]), atol=1e-6, rtol=0)


@needs_vmap_rules
def test_vmap_in_training_mode_updates_the_running_statistics_as_one_batch():
    vmapped, plain = dgn(3, 6), dgn(3, 6)
    x = torch.randn(5, 4, 6, 3)
    torch.func.vmap(vmapped)(x)
    plain(x.reshape(20, 6, 3))
    torch.testing.assert_close(vmapped.channel_mean_ema, plain.channel_mean_ema)
    torch.testing.assert_close(vmapped.channel_var_ema, plain.channel_var_ema)


@needs_vmap_rules
def test_per_sample_gradients_with_vmap_and_grad():
    module = dgn(3, 6).double()
    params = {k: v.detach() for k, v in module.named_parameters()}
    x = torch.randn(4, 6, 5, dtype=torch.float64)
    target = torch.randn(4, 6, 5, dtype=torch.float64)

    def loss(p, xi, ti):
        return ((torch.func.functional_call(module, p, (xi.unsqueeze(0),)) - ti) ** 2).sum()

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, target)
    for i in range(4):
        expected = torch.autograd.grad(loss(dict(module.named_parameters()), x[i], target[i]),
                                       list(module.parameters()))
        torch.testing.assert_close(per_sample["weight"][i], expected[0])
        torch.testing.assert_close(per_sample["bias"][i], expected[1])


def test_jvp_jacfwd_jacrev_hessian_agree():
    module = dgn(2, 4).double().eval()
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    tangent = torch.randn_like(x)
    _, jvp_out = torch.func.jvp(module, (x,), (tangent,))
    jac = torch.func.jacrev(module)(x)
    torch.testing.assert_close(jvp_out, torch.einsum("abcdef,def->abc", jac, tangent))
    torch.testing.assert_close(torch.func.jacfwd(module)(x), jac)
    hessian = torch.func.hessian(lambda t: module(t).pow(3).sum())(x)
    assert hessian.shape == x.shape * 2 and torch.isfinite(hessian).all()


def test_gradient_penalty_double_backward_matches_group_norm():
    """create_graph=True (gradient penalties): same second-order gradients as GN at GN's grouping."""
    x = torch.randn(2, 6, 5, dtype=torch.float64, requires_grad=True)
    ours, theirs = dgn(3, 6).double(), nn.GroupNorm(3, 6).double()
    results = []
    for module in (ours, theirs):
        (grad,) = torch.autograd.grad(module(x).pow(3).sum(), x, create_graph=True)
        results.append(torch.autograd.grad(grad.pow(2).sum(), [x, module.weight, module.bias]))
    for mine, reference in zip(*results):
        torch.testing.assert_close(mine, reference)


def test_ragged_grouping_gradgradcheck():
    module = dgn(3, 8, alpha=0.9).double()
    module.set_group_ids(random_group_ids(8, 3, 1, 5, torch.Generator().manual_seed(3)))
    x = torch.randn(2, 8, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(module, (x,))
