"""TokenDynamicGroupNorm: float64 references in both domains, LayerNorm equivalence, the shared DGN machinery."""
import io
import logging
import re

import pytest
import torch
import torch.nn.functional as F
from reference import random_group_ids
from torch import nn

from dgn_plugins import (
    DynamicGroupNorm,
    FrozenTokenDynamicGroupNorm,
    RegroupController,
    TokenDynamicGroupNorm,
    convert_ln_to_dgn,
    dgn_layers,
    freeze,
    name_layers,
    regroup_model,
)
from dgn_plugins.grouping import default_group_ids
from dgn_plugins.training.records import RegroupRecords


def token_reference(x, group_id, num_groups, weight=None, bias=None, eps=1e-5):
    """Each token over each group's channels, in float64, by explicit gathering."""
    x64 = x.double()
    out = torch.zeros_like(x64)
    for k in range(num_groups):
        channels = (group_id == k).nonzero().flatten()
        members = x64[..., channels]
        mean = members.mean(dim=-1, keepdim=True)
        var = members.var(dim=-1, unbiased=False, keepdim=True)
        out = out.index_copy(-1, channels, (members - mean) / torch.sqrt(var + eps))
    if weight is not None:
        out = out * weight.double()
    if bias is not None:
        out = out + bias.double()
    return out


def sequence_reference(x, group_id, num_groups, weight=None, bias=None, eps=1e-5):
    """Each sample over each group's channels x all its tokens, in float64, by explicit gathering."""
    x64 = x.double()
    out = torch.zeros_like(x64)
    for k in range(num_groups):
        channels = (group_id == k).nonzero().flatten()
        members = x64[..., channels]
        flat = members.reshape(members.shape[0], -1)
        shape = (members.shape[0],) + (1,) * (members.dim() - 1)
        mean = flat.mean(dim=1).view(shape)
        var = flat.var(dim=1, unbiased=False).view(shape)
        out = out.index_copy(-1, channels, (members - mean) / torch.sqrt(var + eps))
    if weight is not None:
        out = out * weight.double()
    if bias is not None:
        out = out + bias.double()
    return out


REFERENCES = {"token": token_reference, "sequence": sequence_reference}
SHAPES = {"token": [(2, 7, 12), (3, 12), (2, 3, 4, 12), (12,)], "sequence": [(2, 7, 12), (3, 12), (2, 3, 4, 12)]}


def _shuffled_layer(over, num_groups=3, seed=0, dtype=torch.float64, channels=12):
    layer = TokenDynamicGroupNorm(channels, num_groups, over=over).to(dtype)
    gen = torch.Generator().manual_seed(seed)
    layer.set_group_ids(random_group_ids(channels, num_groups, layer.bounds.size_min, layer.bounds.size_max, gen))
    assert not torch.equal(layer.group_id, default_group_ids(channels, num_groups))
    with torch.no_grad():
        layer.weight.normal_(generator=gen)
        layer.bias.normal_(generator=gen)
    return layer


@pytest.mark.parametrize("over, shape", [(o, s) for o in SHAPES for s in SHAPES[o]])
def test_shuffled_groupings_match_the_float64_reference(backend, over, shape):
    for seed in range(3):
        layer = _shuffled_layer(over, seed=seed)
        x = (torch.randn(shape, dtype=torch.float64) * 3 + 5).requires_grad_()
        grad = torch.randn(shape, dtype=torch.float64)
        out = layer(x)
        expected = REFERENCES[over](x, layer.group_id, 3, layer.weight, layer.bias)
        torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
        got = torch.autograd.grad(out, (x, layer.weight, layer.bias), grad)
        want = torch.autograd.grad(expected, (x, layer.weight, layer.bias), grad)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("over", ["token", "sequence"])
def test_gradcheck_shuffled_groupings(backend, over):
    for seed in range(2):
        layer = _shuffled_layer(over, seed=seed).eval()
        x = torch.randn(2, 5, 12, dtype=torch.float64, requires_grad=True)

        def call(x, weight, bias, layer=layer):
            return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (x,))

        weight = layer.weight.detach().clone().requires_grad_()
        bias = layer.bias.detach().clone().requires_grad_()
        assert torch.autograd.gradcheck(call, (x, weight, bias))


def test_one_group_per_token_is_layer_norm(backend):
    layer = TokenDynamicGroupNorm(48, num_groups=1, eps=1e-6)
    norm = nn.LayerNorm(48, eps=1e-6)
    assert isinstance(layer, nn.LayerNorm) and layer._abbr_ == "ln"
    assert [(n, p.shape) for n, p in layer.named_parameters()] == [(n, p.shape) for n, p in norm.named_parameters()]
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    result = layer.load_state_dict(norm.state_dict(), strict=True)  # a LayerNorm checkpoint: no key missing
    assert not result.missing_keys and not result.unexpected_keys
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        layer, norm = layer.to(dtype), norm.to(dtype)
        x = (torch.randn(4, 9, 48, dtype=dtype) * 2 + 1).requires_grad_()
        grad = torch.randn(4, 9, 48, dtype=dtype)
        out, expected = layer(x), norm(x)
        torch.testing.assert_close(out, expected, atol=tol, rtol=tol)
        got = torch.autograd.grad(out, (x, layer.weight, layer.bias), grad)
        want = torch.autograd.grad(expected, (x, norm.weight, norm.bias), grad)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=tol * 10, rtol=tol * 10)


def test_sequence_with_gn_grouping_is_group_norm_of_transposed_tokens(backend):
    layer = TokenDynamicGroupNorm(32, num_groups=8, over="sequence").double()
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    x = torch.randn(3, 11, 32, dtype=torch.float64)
    expected = F.group_norm(x.transpose(1, 2), 8, layer.weight, layer.bias, 1e-5).transpose(1, 2)
    torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("over", ["token", "sequence"])
@pytest.mark.parametrize("offset", [0.0, 1000.0])  # a mean that dwarfs the spread: the sums must not cancel
@pytest.mark.parametrize("tokens", [7, 70])  # 3 x 70 tokens: more than one work item of the native token walk
@pytest.mark.parametrize("channels, groups", [(16, 4), (128, 1)])  # narrow and wide groups (two token walks)
def test_running_statistics_cover_batch_times_tokens(backend, over, offset, tokens, channels, groups):
    layer = TokenDynamicGroupNorm(channels, groups, over=over, momentum=0.25)
    mean_ema = var_ema = None
    for _ in range(3):
        x = torch.randn(3, tokens, channels) * torch.rand(channels) * 3 + torch.randn(channels) + offset
        layer(x)
        flat = x.double().reshape(-1, channels)
        batch_mean, batch_var = flat.mean(0), flat.var(0, unbiased=False)
        mean_ema = batch_mean if mean_ema is None else 0.75 * mean_ema + 0.25 * batch_mean
        var_ema = batch_var if var_ema is None else 0.75 * var_ema + 0.25 * batch_var
    assert int(layer.num_stat_updates) == 3
    torch.testing.assert_close(layer.channel_mean_ema.double(), mean_ema, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(layer.channel_var_ema.double(), var_ema, atol=1e-5, rtol=1e-5)


class _Block(nn.Module):
    """A tiny transformer block: the norms see (B, L, C) tokens."""

    def __init__(self, norm):
        super().__init__()
        self.ln1, self.fc, self.ln2 = norm(), nn.Linear(32, 32), norm()

    def forward(self, x):
        return self.ln2(self.fc(self.ln1(x)))


def _tokens():
    return torch.randn(4, 10, 32) * torch.linspace(0.2, 3, 32) + torch.linspace(-4, 4, 32)


@pytest.mark.parametrize("over", ["token", "sequence"])
def test_controller_regroups_records_and_checkpoints(tmp_path, over):
    model = _Block(lambda: TokenDynamicGroupNorm(32, 8, over=over, percentile=0.5))
    controller = RegroupController(interval=2, stop=4, records_file="groups.jsonl")
    logger = logging.getLogger("test_token_layer")
    assert controller.before_train(model, total_steps=5, logger=logger, work_dir=str(tmp_path)) == 2
    assert [layer.layer_name for _, layer in dgn_layers(model)] == ["ln1", "ln2"]
    for step in range(1, 6):
        model(_tokens()).pow(2).mean().backward()
        controller.after_step(model, step, logger)
    assert all(int(layer.num_regroups) == 2 for _, layer in dgn_layers(model))
    assert not torch.equal(model.ln1.group_id, default_group_ids(32, 8))
    records = RegroupRecords(str(tmp_path / "groups.jsonl")).read()
    assert len(records) == 2 and set(records[0]["group_id"]) == {"ln1", "ln2"}

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    restored = _Block(lambda: TokenDynamicGroupNorm(32, 8, over=over))
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    x = _tokens()
    model.eval()
    restored.eval()
    assert torch.equal(restored.ln1.group_id, model.ln1.group_id)
    assert torch.equal(restored(x), model(x))
    frozen = freeze(restored)
    assert isinstance(frozen.ln1, FrozenTokenDynamicGroupNorm)
    torch.testing.assert_close(frozen(x), model(x), atol=1e-5, rtol=1e-5)


def test_regroup_model_sees_token_and_channel_first_layers_alike():
    model = _Block(lambda: TokenDynamicGroupNorm(32, 8, percentile=0.25))
    model.conv_norm = DynamicGroupNorm(32, 8, percentile=0.25)
    model(_tokens()).sum().backward()
    model.conv_norm(torch.randn(2, 32, 3, 3))
    reports = regroup_model(model)
    assert [r.name for r in reports] == ["ln1", "ln2", "conv_norm"]
    assert all(r.groups_dissolved == 6 for r in reports)


def test_one_group_freezes_to_layer_norm_and_convert_keeps_outputs():
    model = nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32, eps=1e-6), nn.GELU(), nn.LayerNorm(32))
    with torch.no_grad():
        for norm in (model[1], model[3]):
            norm.weight.normal_()
            norm.bias.normal_()
    x = torch.randn(2, 5, 16)
    expected = model(x)
    model[3].weight.requires_grad_(False)
    convert_ln_to_dgn(model, num_groups=1)
    assert isinstance(model[1], TokenDynamicGroupNorm) and model[1].eps == 1e-6
    assert not model[3].weight.requires_grad and model[1].layer_name == "1"
    torch.testing.assert_close(model(x), expected, atol=1e-6, rtol=1e-6)
    frozen = freeze(model)
    assert type(frozen[1]) is nn.LayerNorm and frozen[1].eps == 1e-6
    torch.testing.assert_close(frozen(x), expected, atol=1e-6, rtol=1e-6)


def test_convert_ln_to_dgn_names_the_layer_it_cannot_convert():
    model = nn.Sequential(nn.Linear(4, 30), nn.LayerNorm(30))
    with pytest.raises(ValueError, match=r"convert_ln_to_dgn: layer 1 \(LayerNorm\(30\)\)"):
        convert_ln_to_dgn(model, num_groups=32)


def test_options_are_checked():
    with pytest.raises(ValueError, match="over must be one of 'token', 'sequence', got 'channels'"):
        TokenDynamicGroupNorm(32, 8, over="channels")
    with pytest.raises(ValueError, match="over must be"):
        TokenDynamicGroupNorm.check_options(num_groups=8, over="tokens")
    assert TokenDynamicGroupNorm.check_options(num_groups=8, over="sequence", eps=1e-6) == {
        "num_groups": 8, "over": "sequence", "eps": 1e-6}


@pytest.mark.parametrize("layer, shape, expected", [
    (lambda: TokenDynamicGroupNorm(32, 8), (2, 32, 4, 4), r"expects channels-last tokens \(\.\.\., 32\)"),
    (lambda: TokenDynamicGroupNorm(32, 8, over="sequence"), (32,), r"expects channels-last tokens \(B, \*, 32\)"),
    (lambda: DynamicGroupNorm(32, 8), (2, 10, 32), r"expects channels first \(N, 32, \*\)"),
])
def test_wrong_layout_names_the_layer_the_shape_and_the_layout(layer, shape, expected):
    model = nn.Sequential(nn.Identity(), nn.Sequential(layer()))
    name_layers(model)
    prefix = re.escape(f"layer 1.0 ({type(model[1][0]).__name__}(32)) got input of shape {tuple(shape)}")
    with pytest.raises(ValueError, match="^" + prefix + ", " + expected) as error:
        model(torch.randn(shape))
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("shuffled", [False, True])
@pytest.mark.parametrize("channels, groups, walk", [(12, 3, "tokens"), (256, 2, "token_groups")])
def test_native_token_walk_matches_the_generic_walk(dtype, tol, shuffled, channels, groups, walk):
    """Output, gradients and the running statistics' update, for narrow and wide groups (two token walks)."""
    from dgn_plugins import ops

    if not ops.native_available():
        pytest.skip(ops.native_import_error())
    from dgn_plugins import _C

    layer = (_shuffled_layer("token", num_groups=groups, dtype=dtype, channels=channels) if shuffled
             else TokenDynamicGroupNorm(channels, groups).to(dtype))
    with torch.no_grad():  # parameters that are not the identity, so that a dropped one shows
        layer.weight.uniform_(0.5, 1.5)
        layer.bias.uniform_(-1, 1)
    x = (torch.randn(70, channels, dtype=dtype) * torch.rand(channels, dtype=dtype) * 2 + 3).requires_grad_()
    grad = torch.randn(70, channels, dtype=dtype)  # 70 tokens: more than one work item
    assert _C.walk_for(x, layer.group_id, groups) == walk
    results = []
    for token_walk in (True, False):
        _C.set_token_walk(token_walk)
        layer.channel_mean_ema.zero_(), layer.channel_var_ema.fill_(1), layer.num_stat_updates.zero_()
        try:
            out = layer(x)
            results.append((out, *torch.autograd.grad(out, (x, layer.weight, layer.bias), grad),
                            layer.channel_mean_ema.clone(), layer.channel_var_ema.clone()))
        finally:
            _C.set_token_walk(True)
    for fast, generic in zip(*results):
        torch.testing.assert_close(fast, generic, atol=tol, rtol=tol)


@pytest.mark.parametrize("shape", [(40, 12), (3, 12, 5)])
def test_without_channel_statistics_the_output_and_running_update_are_the_same(backend, shape):
    from dgn_plugins.functional import dynamic_group_norm_with_stats

    ids = random_group_ids(12, 3, 2, 6, torch.Generator().manual_seed(3))
    x = torch.randn(shape) * 2 + 1
    results = []
    for channel_stats in (True, False):
        running = (torch.zeros(12), torch.ones(12), torch.tensor(0), 0.1)
        y, mean, var = dynamic_group_norm_with_stats(x, ids, 3, running_stats=running, channel_stats=channel_stats)
        assert (mean is None) == (not channel_stats) and (var is None) == (not channel_stats)
        results.append((y, *running[:3]))
        outs = torch.ops.dgn.group_norm(x, ids, torch.bincount(ids, minlength=3), None, None, 3, 1e-5,
                                        channel_stats=channel_stats)
        assert outs[1].shape == ((shape[0], 12) if channel_stats else (0, 12)) == outs[2].shape
    for with_stats, without in zip(*results):
        torch.testing.assert_close(without, with_stats, atol=1e-6, rtol=1e-6)
