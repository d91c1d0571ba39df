"""Deployment: ONNX (checked with onnxruntime), TorchScript script/trace, torch.export, freeze."""
import inspect
import io

import pytest
import torch
from reference import random_group_ids
from torch import nn

from dgn_plugins import compat
from dgn_plugins.conversion.freeze import FrozenDynamicGroupNorm, freeze
from dgn_plugins.layer import DynamicGroupNorm

#: ONNX operators a DGN model may export to: standard ones, nothing custom.
STANDARD_OPS = {"Add", "Conv", "Div", "MatMul", "Mul", "Reciprocal", "ReduceMean", "Relu", "Reshape", "Sqrt", "Sub",
                "Unsqueeze", "Cast", "Constant", "Flatten", "Transpose", "Pow", "Shape", "Gather", "Concat", "OneHot",
                "ReduceSum", "Expand", "Squeeze", "Slice", "GroupNormalization", "InstanceNormalization"}


class SmallNet(nn.Module):
    """Conv -> DGN (ragged grouping) -> ReLU -> conv -> DGN (GN's grouping, labels permuted)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, 3, padding=1)
        self.norm1 = DynamicGroupNorm(24, 4)
        self.conv2 = nn.Conv2d(24, 16, 3, padding=1)
        self.norm2 = DynamicGroupNorm(16, 4)

    def forward(self, x):
        return self.norm2(self.conv2(torch.relu(self.norm1(self.conv1(x)))))


@pytest.fixture()
def model():
    torch.manual_seed(0)
    net = SmallNet()
    net.norm1.set_group_ids(random_group_ids(24, 4, 3, 9, torch.Generator().manual_seed(1)))
    blocks = torch.tensor([2, 0, 3, 1]).repeat_interleave(4)  # contiguous equal blocks, labels permuted
    net.norm2.set_group_ids(blocks)
    with torch.no_grad():
        for norm in (net.norm1, net.norm2):
            norm.weight.normal_()
            norm.bias.normal_()
    return net.eval()


def _inputs():
    return torch.randn(2, 3, 10, 12, generator=torch.Generator().manual_seed(2)) * 2 + 1


def _onnx_outputs(model, x, *, dynamic_batch=False):
    onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx onnxscript)")
    pytest.importorskip("onnxscript", reason="onnxscript is not installed (torch.onnx.export needs it)")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install onnxruntime)")
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:  # torch >= 2.5: the exporter on torch.export
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
        program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False)
        proto = program.model_proto
    else:  # before: the TorchScript exporter (the layer traces its plain formulation)
        buffer = io.BytesIO()
        torch.onnx.export(model, (x,), buffer, input_names=["x"], opset_version=17,
                          dynamic_axes={"x": {0: "batch"}} if dynamic_batch else None)
        proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    op_types = {node.op_type for node in proto.graph.node}
    domains = {node.domain for node in proto.graph.node}
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return op_types, domains, lambda t: torch.from_numpy(session.run(None, {name: t.numpy()})[0])


def test_onnx_export_uses_standard_operators_and_matches_pytorch(model):
    x = _inputs()
    expected = model(x)
    op_types, domains, run = _onnx_outputs(model, x, dynamic_batch=True)
    assert domains <= {"", "ai.onnx"}, domains  # no custom domain to register at load time
    assert op_types <= STANDARD_OPS, op_types - STANDARD_OPS
    assert "MatMul" in op_types  # the one-hot group assignment
    torch.testing.assert_close(run(x), expected, atol=1e-5, rtol=1e-5)
    other = torch.randn(3, 3, 10, 12)  # another batch size through the same graph
    torch.testing.assert_close(run(other), model(other), atol=1e-5, rtol=1e-5)


def test_torchscript_script_and_trace_round_trip(model):
    x = _inputs()
    expected = model(x)
    for module in (torch.jit.script(model), torch.jit.trace(model, (x,))):
        buffer = io.BytesIO()
        torch.jit.save(module, buffer)  # nothing Python-only left in the graph
        buffer.seek(0)
        loaded = torch.jit.load(buffer)
        torch.testing.assert_close(loaded(x), expected, atol=1e-5, rtol=1e-5)
    scripted = torch.jit.script(model)
    empty = torch.randn(0, 3, 10, 12)  # no RoIs
    assert scripted(empty).shape == (0, 16, 10, 12)


def test_scripted_layer_follows_a_later_regroup():
    layer = DynamicGroupNorm(24, 4).eval()
    scripted = torch.jit.script(layer)
    layer.set_group_ids(random_group_ids(24, 4, 3, 9))  # buffers are shared with the scripted module
    x = torch.randn(2, 24, 5, 5)
    torch.testing.assert_close(scripted(x), layer(x), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not compat.EXPORT_DETECTION, reason=f"torch {compat.TORCH_VERSION} cannot tell torch.export from "
                    "torch.compile (torch.compiler.is_exporting, 2.7+): the test below checks what its exported graphs hold, and "
                    "freeze() gives standard operators (tested above)")
def test_torch_export_has_only_aten_operators(model):
    x = _inputs()
    program = torch.export.export(model, (x,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert all(t.startswith("aten.") for t in targets), targets
    torch.testing.assert_close(program.module()(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(compat.EXPORT_DETECTION, reason="this torch exports standard operators (the test above)")
def test_torch_export_without_export_detection_records_the_operator(model):
    model.eval()
    x = _inputs()
    program = torch.export.export(model, (x,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    if compat.FUNCTIONALIZES_MUTABLE_OPS:
        assert any("dgn.group_norm" in t for t in targets), targets
        assert all(t.startswith("aten.") or "dgn." in t for t in targets), targets
    else:  # torch < 2.3 traces the plain formulation whenever Dynamo runs (compile or export): standard operators
        assert all(t.startswith("aten.") for t in targets), targets
    torch.testing.assert_close(program(x) if not hasattr(program, "module") else program.module()(x), model(x),
                               atol=1e-5, rtol=1e-5)


def test_freeze_picks_group_norm_or_fixed_layout_and_keeps_outputs(model):
    x = _inputs()
    expected = model(x)
    frozen = freeze(model)
    assert type(frozen.norm2) is nn.GroupNorm  # GN's grouping, labels permuted
    assert isinstance(frozen.norm1, FrozenDynamicGroupNorm)
    assert not any(isinstance(m, DynamicGroupNorm) for m in frozen.modules())
    torch.testing.assert_close(frozen(x), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(torch.jit.script(frozen)(x), expected, atol=1e-5, rtol=1e-5)
    _, domains, run = _onnx_outputs(frozen, x)
    assert domains <= {"", "ai.onnx"}
    torch.testing.assert_close(run(x), expected, atol=1e-5, rtol=1e-5)


def test_freeze_a_lone_layer_and_reload_its_state():
    layer = DynamicGroupNorm(12, 3, affine=True)
    ids = random_group_ids(12, 3, 2, 6)
    layer.set_group_ids(ids)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    layer.weight.requires_grad_(False)
    frozen = freeze(layer)
    assert isinstance(frozen, FrozenDynamicGroupNorm) and frozen.training == layer.training
    assert not frozen.weight.requires_grad and frozen.bias.requires_grad
    x = torch.randn(3, 12, 4, 4)
    torch.testing.assert_close(frozen(x), layer(x), atol=1e-6, rtol=0)
    clone = FrozenDynamicGroupNorm(torch.arange(12) % 3, 3)
    clone.load_state_dict(frozen.state_dict())  # the grouping travels with the state dict
    torch.testing.assert_close(clone(x), frozen(x))
    assert freeze(nn.GroupNorm(4, 12)).__class__ is nn.GroupNorm  # nothing to do
