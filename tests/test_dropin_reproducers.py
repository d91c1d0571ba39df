"""The drop-in defects found by running GroupNorm's tests on DGN, one test each (issue: drop-in operator).

1-3: the removed ``torch.compile`` backend (in-place ops on its outputs, 5-D channels_last,
one layer's failure switching it off); 4-5: the plain path's numerics; 6-8: GroupNorm's
constructor and checks; 9: higher-order autograd (tests/test_groupnorm_suite.py covers it in
depth); 10: mmcv's FLOPs counter (tests/openmmlab/test_mmdet_toolkit_rules.py); 11: the running
statistics' seeding step.
"""
import inspect

import pytest
import torch
import torch.nn.functional as F

from dgn_plugins import DynamicGroupNorm

pytestmark = pytest.mark.usefixtures("backend")


def test_1_in_place_relu_after_the_layer_for_many_channel_counts():
    for channels in (32, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512):
        layer = DynamicGroupNorm(channels, num_groups=32)
        x = torch.randn(2, channels, 48, 48, requires_grad=True)
        F.relu_(layer(x)).sum().backward()
        assert x.grad.shape == x.shape


def test_2_channels_last_3d_backward():
    layer = DynamicGroupNorm(9, num_groups=3)
    x = torch.randn(2, 9, 7, 200, 15).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    out = layer(x)
    out.sum().backward()
    expected = F.group_norm(x.detach().contiguous(), 3, layer.weight, layer.bias)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert x.grad.is_contiguous(memory_format=torch.channels_last_3d)


def test_3_a_one_group_layer_disturbs_no_other():
    single, other = DynamicGroupNorm(8, num_groups=1), DynamicGroupNorm(64, num_groups=32)
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    single(x).sum().backward()
    y = torch.randn(2, 64, 16, 16)
    torch.testing.assert_close(other(y), F.group_norm(y, 32, other.weight, other.bias), atol=1e-5, rtol=1e-5)
    compiled = torch.compile(lambda t: other(single(t.repeat(1, 8, 1, 1)[:, :8]).repeat(1, 8, 1, 1)), dynamic=True)
    torch.testing.assert_close(compiled(x.detach()), other(single(x.detach()).repeat(1, 8, 1, 1)), atol=1e-5,
                               rtol=1e-5)


def test_4_float32_statistics_of_large_groups():
    x = torch.rand(1, 8, 256, 256, 72, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = DynamicGroupNorm(8, num_groups=2)(x)
        expected = F.group_norm(x.double(), 2)
    assert (out.double() - expected).abs().max() < 1e-5


def test_5_backward_with_one_value_per_sample_in_a_group():
    """A group of one channel and one element per sample normalises to 0: its input's gradient is 0 up to
    float32 rounding of r * w * dy (r = eps^-1/2), as GN's (1.5e-5 here), whatever the value's size."""
    layer = DynamicGroupNorm(4, num_groups=2, alpha=0.9)
    layer.set_group_ids(torch.tensor([0, 1, 1, 1]))
    x = torch.tensor([[-227.8, 0.1, 0.7, 1.3], [512.3, -0.4, 0.2, 2.5]], requires_grad=True)
    (layer(x) * torch.randn(2, 4)).sum().backward()
    assert x.grad[:, 0].abs().max() < 5e-5, x.grad
    gen = torch.Generator().manual_seed(5)
    rstd = layer.eps ** -0.5
    for _ in range(50):
        x = torch.randn(3, 4, generator=gen)
        x[:, 0] = (torch.rand(3, generator=gen) - 0.5) * 2e4
        x.requires_grad_()
        with torch.no_grad():
            layer.weight.normal_(generator=gen)
        grad = torch.randn(3, 4, generator=gen)
        (layer(x) * grad).sum().backward()
        bound = 32 * 2.0 ** -24 * rstd * (layer.weight[0] * grad[:, 0]).abs().max()
        assert x.grad[:, 0].abs().max() <= bound, (x.grad[:, 0], bound)


def test_6_bias_keyword_as_group_norm():
    """``bias=False`` as nn.GroupNorm has it from torch 2.12, on every torch: a weight, no bias."""
    layer = DynamicGroupNorm(6, num_groups=3, bias=False)
    assert layer.bias is None and set(dict(layer.named_parameters())) == {"weight"}
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2.0)
    x = torch.randn(2, 6, 5)
    torch.testing.assert_close(layer(x), torch.nn.functional.group_norm(x, 3, layer.weight, None))
    layer.reset_parameters()  # GroupNorm's own reset assumes a bias on torch < 2.12
    assert torch.equal(layer.weight, torch.ones(6)) and layer.bias is None
    if "bias" in inspect.signature(torch.nn.GroupNorm).parameters:
        reference = torch.nn.GroupNorm(3, 6, bias=False)
        assert set(reference.state_dict()) == set(layer.state_dict()) - {
            "group_id", "channel_mean_ema", "channel_var_ema", "num_stat_updates", "num_regroups"}


def test_7_running_statistics_keep_their_precision():
    layer = DynamicGroupNorm(8, num_groups=2, dtype=torch.bfloat16)
    assert layer.weight.dtype == torch.bfloat16 and layer.channel_mean_ema.dtype == torch.float32
    for convert in (lambda m: m.half(), lambda m: m.bfloat16(), lambda m: m.to(torch.float16), lambda m: m.float()):
        assert convert(DynamicGroupNorm(8, num_groups=2)).channel_var_ema.dtype == torch.float32
    assert DynamicGroupNorm(8, num_groups=2).double().channel_mean_ema.dtype == torch.float64
    # A bfloat16 model's EMA does not stall: 0.1 of the gap is more than bfloat16 can add to 10.
    layer = DynamicGroupNorm(8, num_groups=2, momentum=0.1).bfloat16()
    for _ in range(30):
        layer(torch.full((4, 8, 3, 3), 1.0, dtype=torch.bfloat16) + torch.randn(4, 8, 3, 3).bfloat16() * 0.1)
    layer(torch.full((4, 8, 3, 3), 10.0, dtype=torch.bfloat16) + torch.randn(4, 8, 3, 3).bfloat16())
    assert 1.5 < float(layer.channel_mean_ema.mean()) < 2.5


def test_8_one_value_per_group_raises_as_group_norm():
    x = torch.randn(1, 10, 1)
    with pytest.raises(ValueError, match="more than 1 value"):
        torch.nn.GroupNorm(10, 10)(x)
    with pytest.raises(ValueError, match="more than 1 value"):
        DynamicGroupNorm(10, num_groups=10)(x)
    DynamicGroupNorm(10, num_groups=5)(x)  # two values per group: fine, as GN


def test_9_double_backward_forward_ad_and_torch_func():
    layer = DynamicGroupNorm(6, num_groups=3).double()
    x = torch.randn(2, 6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(layer, (x,))
    assert torch.autograd.gradcheck(layer, (x,), check_forward_ad=True, check_backward_ad=False,
                                    check_undefined_grad=False, check_batched_grad=False)
    layer.eval()
    per_sample = torch.func.vmap(torch.func.grad(lambda t: layer(t.unsqueeze(0)).pow(2).sum()))(x.detach())
    assert per_sample.shape == x.shape


def test_11_a_non_finite_first_batch_does_not_use_up_the_seeding_step():
    layer = DynamicGroupNorm(4, num_groups=2, momentum=0.1)
    bad = torch.randn(2, 4, 3, 3)
    bad[0, 1, 0, 0] = float("nan")
    layer(bad)
    assert int(layer.num_stat_updates) == 0
    layer(torch.full((2, 4, 3, 3), 10.0) + torch.randn(2, 4, 3, 3) * 0.01)
    assert int(layer.num_stat_updates) == 1
    torch.testing.assert_close(layer.channel_mean_ema, torch.full((4,), 10.0), atol=0.02, rtol=0)
