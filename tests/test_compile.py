"""torch.compile sees DGN as one operator: no graph breaks, no recompilation per shape, eager's numbers."""
import pytest
import torch
import torch.nn.functional as F
from reference import random_group_ids
from torch import nn

from dgn_plugins import DynamicGroupNorm, compat, convert_gn_to_dgn, dgn_layers


def _resnet50_dgn():
    torchvision = pytest.importorskip("torchvision", reason="torchvision builds the ResNet-50 (make setup installs it)")
    model = torchvision.models.resnet50(norm_layer=lambda channels: nn.GroupNorm(32, channels), num_classes=10)
    model = convert_gn_to_dgn(model)
    gen = torch.Generator().manual_seed(0)
    for _, layer in dgn_layers(model):  # a regrouped state, not GN's grouping
        layer.set_group_ids(random_group_ids(layer.num_channels, 32, layer.bounds.size_min,
                                             layer.bounds.size_max, gen))
    return model


def test_resnet50_with_dgn_has_no_graph_breaks():
    model = _resnet50_dgn().train()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 64, 64))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    # One operator call per layer, not its decomposition. Dynamo records the overload
    # packet (``dgn.group_norm``) or the overload (``dgn.group_norm.default``), by build.
    calls = [str(node.target) for graph in explanation.graphs for node in graph.graph.nodes
             if node.op == "call_function"]
    dgn_calls = [target for target in calls if target in ("dgn.group_norm", "dgn.group_norm.default")]
    if compat.FUNCTIONALIZES_MUTABLE_OPS:
        assert len(dgn_calls) == len(list(dgn_layers(model))) == 53
    else:  # torch < 2.3 compiles the plain formulation (the operator's schema writes to the running statistics)
        assert dgn_calls == [] and len(list(dgn_layers(model))) == 53


class _Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.norm1 = DynamicGroupNorm(16, 4)
        self.norm2 = DynamicGroupNorm(16, 8, alpha=0.9)
        self.norm2.set_group_ids(random_group_ids(16, 8, 1, 3, torch.Generator().manual_seed(1)))

    def forward(self, x):
        return F.relu_(self.norm2(F.relu(self.norm1(self.conv(x)))))


def _assert_step_matches(out, expected, model, eager):
    """A compiled model's output and every parameter's gradient (of a squared loss) against eager mode's."""
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    reference = torch.autograd.grad(expected.square().sum(), list(eager.parameters()))
    for mine, theirs in zip(grads, reference):
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)


def test_compiled_training_matches_eager_and_does_not_recompile_per_shape():
    torch.manual_seed(0)
    eager = _Small()
    compiled_model = _Small()
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model, backend="aot_eager", dynamic=True, fullgraph=True)
    torch._dynamo.reset()
    counts = torch._dynamo.utils.counters
    counts.clear()
    for batch, size in [(2, 8), (3, 10), (1, 12), (4, 9)]:
        x = torch.randn(batch, 3, size, size)
        expected = eager(x)
        out = compiled(x)
        _assert_step_matches(out, expected, compiled_model, eager)
    # The running statistics were updated in the compiled graph as in eager mode.
    for name in ("norm1", "norm2"):
        torch.testing.assert_close(getattr(compiled_model, name).channel_mean_ema, getattr(eager, name).channel_mean_ema)
        assert int(getattr(compiled_model, name).num_stat_updates) == 4
    assert counts["stats"]["unique_graphs"] <= 2, dict(counts["stats"])  # the first shape, then one dynamic graph


def test_inductor_training_matches_eager():
    """Inductor's generated code, not only the traced graph: torch 2.1's Inductor, which compiles the plain
    formulation there, miscompiled its scatter-adds (wrong outputs and gradients, no error)."""
    torch.manual_seed(0)
    eager = _Small()
    compiled_model = _Small()
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model)  # the default backend: Inductor
    x = torch.randn(2, 3, 8, 8)
    expected, out = eager(x), compiled(x)
    _assert_step_matches(out, expected, compiled_model, eager)
    for name in ("norm1", "norm2"):
        torch.testing.assert_close(getattr(compiled_model, name).channel_mean_ema, getattr(eager, name).channel_mean_ema)
        torch.testing.assert_close(getattr(compiled_model, name).channel_var_ema, getattr(eager, name).channel_var_ema)


def _vit_with_token_dgn(over, **size):
    """torchvision's VisionTransformer (nn.LayerNorm) converted to the token layer, in a regrouped state."""
    torchvision = pytest.importorskip("torchvision", reason="torchvision builds the ViT (make setup installs it)")
    from dgn_plugins import convert_ln_to_dgn

    model = torchvision.models.VisionTransformer(num_classes=10, **size)
    model = convert_ln_to_dgn(model, num_groups=32, over=over)
    gen = torch.Generator().manual_seed(0)
    for _, layer in dgn_layers(model):
        layer.set_group_ids(random_group_ids(layer.num_channels, 32, layer.bounds.size_min,
                                             layer.bounds.size_max, gen))
    return model


@pytest.mark.parametrize("over", ["token", "sequence"])
def test_vit_with_token_dgn_has_no_graph_breaks(over):
    size = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128)
    model = _vit_with_token_dgn(over, **size).train()
    explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    calls = [str(node.target) for graph in explanation.graphs for node in graph.graph.nodes
             if node.op == "call_function"]
    dgn_calls = [target for target in calls if target in ("dgn.group_norm", "dgn.group_norm.default")]
    assert len(list(dgn_layers(model))) == 5
    assert len(dgn_calls) == (5 if compat.FUNCTIONALIZES_MUTABLE_OPS else 0)


def test_vit_b_with_token_dgn_has_no_graph_breaks():
    model = _vit_with_token_dgn("token", image_size=224, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768,
                                mlp_dim=3072).train()
    explanation = torch._dynamo.explain(model)(torch.randn(1, 3, 224, 224))
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert len(list(dgn_layers(model))) == 25


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])  # Inductor: see test_inductor_training_matches_eager
@pytest.mark.parametrize("over", ["token", "sequence"])
def test_compiled_token_layer_matches_eager(over, backend):
    from dgn_plugins import TokenDynamicGroupNorm

    torch.manual_seed(0)
    eager = nn.Sequential(nn.Linear(8, 32), TokenDynamicGroupNorm(32, 8, over=over, alpha=0.9), nn.GELU())
    eager[1].set_group_ids(random_group_ids(32, 8, 1, 7, torch.Generator().manual_seed(1)))
    twin = nn.Sequential(nn.Linear(8, 32), TokenDynamicGroupNorm(32, 8, over=over, alpha=0.9), nn.GELU())
    twin.load_state_dict(eager.state_dict())
    compiled = torch.compile(twin, backend=backend, fullgraph=True)
    for shape in [(2, 5, 8), (3, 7, 8)]:
        x = torch.randn(shape)
        expected, out = eager(x), compiled(x)
        _assert_step_matches(out, expected, twin, eager)
    torch.testing.assert_close(twin[1].channel_mean_ema, eager[1].channel_mean_ema)
    assert int(twin[1].num_stat_updates) == 2
