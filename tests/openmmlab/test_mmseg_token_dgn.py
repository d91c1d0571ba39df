"""TokenDGN in MMSegmentation's ViT: registration, LN names, converted checkpoints, a trained and regrouped run.

The checkpoint is a synthetic timm/MAE-format state dict (the key names and
shapes of a real one, random values) run through mmseg's own converter,
``tools/model_converters/vit2mmseg.py`` as the installed package ships it
(``mmseg/.mim/tools``): ``vit_helpers.py``.
"""
import os

import pytest
import torch

pytest.importorskip("mmseg", reason="mmseg is not installed")

from mmcv.cnn import build_norm_layer  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from torch import nn  # noqa: E402
from vit_helpers import save_converted  # noqa: E402

import dgn_plugins.openmmlab  # noqa: E402, F401
from dgn_plugins import TokenDynamicGroupNorm, name_layers  # noqa: E402
from dgn_plugins.grouping import default_group_ids  # noqa: E402
from dgn_plugins.openmmlab.norm_keys import NormKeyMismatchError, check_checkpoint_norm_keys  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIMS, LAYERS, HIDDEN, PATCH, IMAGE = 64, 2, 128, 8, 32


@pytest.fixture(autouse=True)
def mmseg_scope():
    with DefaultScope.overwrite_default_scope("mmseg"):
        yield


def vit_cfg(norm_cfg, **kwargs):
    return dict(type="VisionTransformer", img_size=IMAGE, patch_size=PATCH, embed_dims=DIMS, num_layers=LAYERS,
                num_heads=2, mlp_ratio=HIDDEN // DIMS, final_norm=True, norm_cfg=norm_cfg, init_cfg=None, **kwargs)


@pytest.fixture
def converted_checkpoint(tmp_path):
    return save_converted(tmp_path / "vit_mmseg.pth", dims=DIMS, layers=LAYERS, hidden=HIDDEN, patch=PATCH,
                          image=IMAGE)


def test_token_dgn_is_registered_and_named_like_layer_norm():
    name, layer = build_norm_layer(dict(type="TokenDGN", num_groups=4, eps=1e-6, requires_grad=True), DIMS, postfix=2)
    assert name == "ln2" and isinstance(layer, TokenDynamicGroupNorm)
    assert layer.eps == 1e-6 and layer.num_groups == 4 and layer.over == "token"
    _, sequence = build_norm_layer(dict(type="TokenDGN", num_groups=4, over="sequence"), DIMS)
    assert sequence.over == "sequence"


def test_one_group_vit_is_the_layer_norm_vit():
    ln = MODELS.build(vit_cfg(dict(type="LN", eps=1e-6)))
    token = MODELS.build(vit_cfg(dict(type="TokenDGN", num_groups=1, eps=1e-6)))
    result = token.load_state_dict(ln.state_dict(), strict=True)  # same parameter names: nothing missing
    assert not result.missing_keys and not result.unexpected_keys
    ln.eval()
    token.eval()
    x = torch.randn(2, 3, IMAGE, IMAGE)
    for a, b in zip(ln(x), token(x)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("norm_cfg", [dict(type="TokenDGN", num_groups=8, eps=1e-6),
                                      dict(type="TokenDGN", num_groups=8, over="sequence", eps=1e-6)])
def test_converted_mae_checkpoint_loads_every_norm_weight(converted_checkpoint, norm_cfg):
    backbone = MODELS.build(vit_cfg(norm_cfg))
    backbone.init_cfg = dict(type="Pretrained", checkpoint=converted_checkpoint)
    assert check_checkpoint_norm_keys(backbone, None) == 1  # no norm key missing or unexpected
    backbone.init_weights()  # mmseg's own loading: strict=False, logger=None
    state = torch.load(converted_checkpoint, weights_only=True)
    norms = [(n, m) for n, m in backbone.named_modules() if isinstance(m, TokenDynamicGroupNorm)]
    assert [n for n, _ in norms] == ["layers.0.ln1", "layers.0.ln2", "layers.1.ln1", "layers.1.ln2", "ln1"]
    for name, layer in norms:
        assert torch.equal(layer.weight, state[name + ".weight"]), name
        assert torch.equal(layer.bias, state[name + ".bias"]), name
        assert torch.equal(layer.group_id, default_group_ids(DIMS, 8))  # an LN checkpoint: GN's grouping


def test_checkpoint_with_other_norm_names_is_refused_naming_the_keys(converted_checkpoint):
    backbone = MODELS.build(vit_cfg(dict(type="DGN", num_groups=8)))  # mmcv names DGN layers gn1 / gn2
    backbone.init_cfg = dict(type="Pretrained", checkpoint=converted_checkpoint)
    with pytest.raises(NormKeyMismatchError, match=r"the model's layers\.0\.gn1\.weight.*not in the checkpoint; "
                                                  r"the checkpoint's layers\.0\.ln1\.weight.*not in the model"):
        check_checkpoint_norm_keys(backbone, None)


def test_dgn_given_vit_tokens_names_the_layer_and_the_layout():
    model = nn.ModuleDict(dict(backbone=MODELS.build(vit_cfg(dict(type="DGN", num_groups=8)))))
    name_layers(model)
    with pytest.raises(ValueError, match=r"^layer backbone\.layers\.0\.gn1 \(DynamicGroupNorm\(64\)\) got input of "
                                         r"shape \(2, 17, 64\), expects channels first \(N, 64, \*\)"):
        model["backbone"](torch.randn(2, 3, IMAGE, IMAGE))


def test_infeasible_token_dgn_options_name_the_layer_and_the_norm_cfg():
    from dgn_plugins.grouping import DGNOptionError
    from dgn_plugins.openmmlab.norm_check import explain_infeasible_dgn

    model_cfg = dict(backbone=vit_cfg(dict(type="TokenDGN", group_size=5, alpha=0.05, eps=1e-6)))
    model_cfg = dict(type="EncoderDecoder", **model_cfg, decode_head=dict(
        type="FCNHead", in_channels=DIMS, channels=DIMS, num_convs=0, concat_input=False, num_classes=3,
        norm_cfg=dict(type="TokenDGN", num_groups=8)))  # a feasible TokenDGN norm_cfg: not named
    with pytest.raises(DGNOptionError) as error:
        MODELS.build(model_cfg)
    assert "layers.0.ln1" not in str(error.value)  # the layer alone cannot say where it is
    message = explain_infeasible_dgn(model_cfg, "mmseg", error.value)
    assert message.startswith("layer backbone.layers.0.ln1: DGN layer with C=64 channels (group_size=5, alpha=0.05)")
    assert "raise alpha to >= " in message and "(set in model.backbone.norm_cfg)" in message
    assert "also 4 more: backbone.layers.0.ln2, backbone.layers.1.ln1, backbone.layers.1.ln2, ..." in message
    assert isinstance(MODELS.build(vit_cfg(dict(type="TokenDGN", num_groups=8))).ln1, TokenDynamicGroupNorm)  # put back
