"""The toolkits treat DGN exactly as GN: init rules, weight-decay rules,
requires_grad=False, frozen stages, is_norm, layer names; and an unknown norm
type is named in the error."""
import pytest
import torch

pytest.importorskip("mmdet", reason="mmdet is not installed")

from mmengine.registry import DefaultScope  # noqa: E402
from torch import nn  # noqa: E402

from dgn_plugins import DynamicGroupNorm, regroup_model  # noqa: E402
from dgn_plugins.openmmlab.norm_check import (  # noqa: E402
    UnknownNormTypeError,
    check_norm_types,
    registered_norm_types,
)

DGN = dict(type="DGN", num_groups=8, requires_grad=True)


def build(cfg):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope("mmdet"):
        return MODELS.build(cfg)


def resnet(**kwargs):
    cfg = dict(type="ResNet", depth=50, base_channels=16, out_indices=(0, 1, 2, 3), norm_cfg=DGN, norm_eval=False)
    cfg.update(kwargs)
    return build(cfg)


def feed(model, steps=2):
    """Training-mode forwards, so that DGN layers collect statistics."""
    for _ in range(steps):
        model(torch.randn(2, 3, 64, 64))


def test_registered_in_the_root_for_both_scopes():
    import subprocess
    import sys

    from mmengine.registry import HOOKS, MODELS

    from dgn_plugins.openmmlab import DGNRegroupHook

    for scope in ("mmdet", "mmseg"):
        if scope == "mmseg":
            pytest.importorskip("mmseg", reason="mmseg is not installed")
        with MODELS.switch_scope_and_registry(scope) as models, HOOKS.switch_scope_and_registry(scope) as hooks:
            assert models.scope == scope and hooks.scope == scope
            assert models.get("DGN") is DynamicGroupNorm and hooks.get("DGNRegroupHook") is DGNRegroupHook
    # A config's custom_imports alone registers them, in a fresh interpreter.
    code = (
        "from mmengine.config import Config; from mmengine.registry import MODELS, HOOKS;"
        "Config.fromfile({!r}); assert MODELS.get('DGN') and HOOKS.get('DGNRegroupHook')"
    )
    from mmdet_helpers import MMDET_DGN_CONFIGS

    done = subprocess.run([sys.executable, "-c", code.format(MMDET_DGN_CONFIGS[0])], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    # And the core keeps working without MMEngine.
    code = "import sys; sys.modules['mmengine'] = None; import dgn_plugins; assert 'dgn_plugins.openmmlab' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_build_norm_layer_names_and_is_norm():
    from mmcv.cnn import ConvModule, build_norm_layer, is_norm
    from mmengine.utils.dl_utils import is_norm as mmengine_is_norm

    name, layer = build_norm_layer(dict(type="DGN", num_groups=4, alpha=0.25, percentile=0.5), 32, postfix=2)
    assert name == "gn2" and type(layer) is DynamicGroupNorm  # checkpoint keys like GN's
    assert layer.num_groups == 4 and layer.percentile == 0.5 and layer.bounds.size_min == 6
    assert is_norm(layer) and not is_norm(layer, exclude=nn.GroupNorm) and mmengine_is_norm(layer)
    conv = ConvModule(3, 16, 3, norm_cfg=dict(type="DGN", num_groups=4))
    assert conv.norm_name == "gn" and isinstance(conv.gn, DynamicGroupNorm) and conv.with_norm


def test_requires_grad_false_freezes_and_is_not_regrouped():
    model = resnet(norm_cfg=dict(type="DGN", num_groups=8, requires_grad=False))
    layers = [m for m in model.modules() if isinstance(m, DynamicGroupNorm)]
    assert layers and not any(p.requires_grad for m in layers for p in m.parameters())
    model.train()
    feed(model)
    assert regroup_model(model) == []


def test_frozen_stages_are_not_regrouped():
    model = resnet(frozen_stages=2)  # stem, layer1, layer2 frozen (eval mode, requires_grad=False)
    model.train()  # ResNet.train re-freezes the frozen stages
    feed(model)
    regrouped = {r.name for r in regroup_model(model)}
    names = {n for n, m in model.named_modules() if isinstance(m, DynamicGroupNorm)}
    frozen = {n for n in names if n == "gn1" or n.startswith(("layer1.", "layer2."))}
    assert frozen and regrouped == names - frozen
    for name, module in model.named_modules():
        if name in frozen:
            assert int(module.num_stat_updates) == 0  # eval mode: no statistics either


def test_constant_init_for_groupnorm_and_zero_init_residual():
    model = resnet(zero_init_residual=True)  # init_cfg: Constant(val=1, layer=['_BatchNorm', 'GroupNorm'])
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, DynamicGroupNorm):
                module.weight.uniform_(2, 3)
                module.bias.uniform_(2, 3)
    model.init_weights()
    for name, module in model.named_modules():
        if isinstance(module, DynamicGroupNorm):
            expected = 0.0 if name.endswith("gn3") and name.startswith("layer") else 1.0  # Bottleneck.norm3
            assert torch.all(module.weight == expected), name
            assert torch.all(module.bias == 0), name

    from mmengine.model import constant_init, initialize

    layer = DynamicGroupNorm(16, 4)
    initialize(layer, dict(type="Constant", layer="GroupNorm", val=0.5, bias=0.25))
    assert torch.all(layer.weight == 0.5) and torch.all(layer.bias == 0.25)
    constant_init(layer, 2.0)
    assert torch.all(layer.weight == 2.0)


def test_norm_decay_mult_applies_to_dgn():
    from mmengine.optim import build_optim_wrapper

    model = nn.Sequential(nn.Conv2d(3, 16, 3), DynamicGroupNorm(16, 4), nn.Conv2d(16, 8, 1), nn.GroupNorm(2, 8))
    wrapper = build_optim_wrapper(
        model,
        dict(
            type="OptimWrapper",
            optimizer=dict(type="SGD", lr=0.1, weight_decay=1e-4),
            paramwise_cfg=dict(norm_decay_mult=0.0),
        ),
    )
    decay = {id(group["params"][0]): group["weight_decay"] for group in wrapper.optimizer.param_groups}
    assert decay[id(model[1].weight)] == decay[id(model[1].bias)] == 0.0  # DGN, like GN
    assert decay[id(model[3].weight)] == 0.0
    assert decay[id(model[0].weight)] == decay[id(model[2].weight)] == 1e-4


def test_unknown_norm_type_is_named():
    from mmcv.cnn import build_norm_layer as mmcv_build_norm_layer

    with pytest.raises(KeyError, match="Cannot find None"):  # mmcv's own message: why we check
        mmcv_build_norm_layer(dict(type="DGNN"), 16)
    with pytest.raises(UnknownNormTypeError, match="'DGNN'.*Did you mean 'DGN'"):
        check_norm_types(dict(model=dict(norm_cfg=dict(type="DGNN"))))
    check_norm_types(dict(model=dict(norm_cfg=dict(type="DGN", num_groups=4))))

    cfg = dict(
        type="MaskRCNN",
        backbone=dict(type="ResNet", norm_cfg=dict(type="GN", num_groups=32)),
        neck=dict(type="FPN", norm_cfg=dict(type="dgn", num_groups=32)),
        roi_head=dict(mask_head=dict(norm_cfg=dict(type="dgn"))),
    )
    with pytest.raises(UnknownNormTypeError) as raised:
        check_norm_types(cfg, scope="mmdet")
    message = str(raised.value)
    assert "'dgn' in neck.norm_cfg (and 1 more places)" in message and "'DGN'" in message
    assert {"BN", "GN", "DGN", "LN", "SyncBN"} <= set(registered_norm_types("mmdet"))
    check_norm_types(dict(neck=dict(norm_cfg=dict(type="DGN")), head=dict(norm_cfg=dict(type=nn.GroupNorm))), "mmdet")


def test_mmcv_flops_counter_counts_dgn_as_group_norm():
    """mmcv's get_model_complexity_info looks layers up by exact type: DGN counted 0 FLOPs.
    The GN row is mmcv's own test (tests/test_cnn/test_flops_counter.py)."""
    from mmcv.cnn import get_model_complexity_info

    from dgn_plugins import freeze

    def count(layer, shape):
        return get_model_complexity_info(layer, shape, as_strings=False, print_per_layer_stat=False)

    assert count(nn.GroupNorm(2, 6), (6, 16, 16)) == (3072.0, 12.0)
    assert count(DynamicGroupNorm(6, num_groups=2), (6, 16, 16)) == (3072.0, 12.0)
    assert count(DynamicGroupNorm(6, num_groups=2, affine=False), (6, 16, 16)) == (1536.0, 0)
    assert count(freeze(DynamicGroupNorm(6, num_groups=2)), (6, 16, 16)) == (3072.0, 12.0)
    gn_model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.GroupNorm(4, 16), nn.ReLU())
    dgn_model = nn.Sequential(nn.Conv2d(3, 16, 3), DynamicGroupNorm(16, num_groups=4), nn.ReLU())
    assert count(dgn_model, (3, 16, 16)) == count(gn_model, (3, 16, 16))
