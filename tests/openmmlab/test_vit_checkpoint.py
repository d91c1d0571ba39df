"""MAE, TEC and iBOT / SERE checkpoints as the init of the ViT ImageNet-S configs (tools/convert_vit.py).

Each released layout is built from a synthetic timm/MAE state dict
(``vit_helpers.py``) the way its code writes it: MAE's pre-trained and
fine-tuned (``fc_norm``, no ``norm``) under ``'model'``, TEC's bare state dict
without a final norm, iBOT's full checkpoint with ``teacher`` / ``student``
and their prefixes. Converted, each loads into the GN config's ViT with no
norm key missing or unexpected; mmseg's converter alone leaves some behind.
"""
import copy
import os
from collections import OrderedDict

import pytest
import torch

pytest.importorskip("mmseg", reason="mmseg is not installed")

from bad_inputs import assert_refused, load_tool  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from vit_helpers import mae_state_dict, mmseg_converter  # noqa: E402

import dgn_plugins.openmmlab  # noqa: E402, F401
from dgn_plugins.openmmlab.norm_keys import norm_key_mismatch  # noqa: E402
from dgn_plugins.openmmlab.vit_checkpoint import CheckpointFormatError, convert_vit_checkpoint  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHAPE = dict(dims=64, layers=2, hidden=256, patch=8, image=32)
GN_919 = os.path.join(ROOT, "configs", "mmseg", "fcn_vit-b16-gn_8xb32-100ep_imagenets919-224x224.py")


@pytest.fixture(autouse=True)
def mmseg_scope():
    with DefaultScope.overwrite_default_scope("mmseg"):
        yield


@pytest.fixture(scope="module")
def backbone():
    """The GN config's ViT (TokenDGN), shrunken to the synthetic checkpoints' shape."""
    cfg = Config.fromfile(GN_919).model.backbone
    cfg.update(img_size=(32, 32), patch_size=8, embed_dims=64, num_layers=2, num_heads=2, out_indices=(1,),
               init_cfg=None, norm_cfg=dict(cfg.norm_cfg, num_groups=8))
    with DefaultScope.overwrite_default_scope("mmseg"):
        return MODELS.build(cfg)


def mae_pretrained():
    state = mae_state_dict(**SHAPE)
    for key in [k for k in state if k.startswith("head.")]:
        del state[key]
    return {"model": state}


def mae_finetuned():
    """MAE's fine-tuned release (global pooling): ``fc_norm`` and a classifier, no ``norm``."""
    state = mae_state_dict(**SHAPE)
    state["fc_norm.weight"], state["fc_norm.bias"] = state.pop("norm.weight"), state.pop("norm.bias")
    return {"model": state}


def tec():
    """TEC's converted release: the bare encoder, no final norm, no head."""
    return OrderedDict((k, v) for k, v in mae_state_dict(**SHAPE).items() if not k.startswith(("norm.", "head.")))


def ibot():
    """iBOT's full checkpoint: teacher and student (DDP), each a backbone plus a projection head."""
    teacher, student = mae_state_dict(**SHAPE, seed=1), mae_state_dict(**SHAPE, seed=2)

    def wrapped(state, prefix):
        out = OrderedDict((prefix + "backbone." + k, v) for k, v in state.items() if not k.startswith("head."))
        out[prefix + "backbone.masked_embed"] = torch.zeros(1, SHAPE["dims"])
        out[prefix + "head.mlp.0.weight"] = torch.zeros(8, SHAPE["dims"])
        return out

    return {"teacher": wrapped(teacher, ""), "student": wrapped(student, "module."), "epoch": 100}, teacher, student


@pytest.mark.parametrize("release", ["mae_pretrained", "mae_finetuned", "tec", "ibot"])
def test_every_release_covers_every_norm_of_the_model(backbone, release):
    checkpoint = {"mae_pretrained": mae_pretrained, "mae_finetuned": mae_finetuned, "tec": tec,
                  "ibot": lambda: ibot()[0]}[release]()
    state, notes = convert_vit_checkpoint(copy.deepcopy(checkpoint))
    assert norm_key_mismatch(backbone, state) == ([], [])
    result = backbone.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) <= {k for k in backbone.state_dict() if k.endswith(
        ("group_id", "channel_mean_ema", "channel_var_ema", "num_stat_updates", "num_regroups", "group_count"))}
    if release == "mae_finetuned":
        assert torch.equal(state["ln1.weight"], checkpoint["model"]["fc_norm.weight"])
        assert any("fc_norm" in note for note in notes)
    if release == "tec":
        assert torch.equal(state["ln1.weight"], torch.ones(64)) and torch.equal(state["ln1.bias"], torch.zeros(64))
        assert any("none in the checkpoint" in note for note in notes)


def test_mmsegs_converter_alone_leaves_the_final_norm_behind():
    """Why the tool exists: vit2mmseg on MAE's fine-tuned and TEC's releases misses the final ln1."""
    import dgn_plugins.openmmlab.norm_keys as norm_keys

    cfg = Config.fromfile(GN_919).model.backbone
    cfg.update(img_size=(32, 32), patch_size=8, embed_dims=64, num_layers=2, num_heads=2, out_indices=(1,),
               init_cfg=None, norm_cfg=dict(cfg.norm_cfg, num_groups=8))
    model = MODELS.build(cfg)
    missing, unexpected = norm_keys.norm_key_mismatch(model, mmseg_converter()(mae_finetuned()["model"]))
    assert missing == ["ln1.weight", "ln1.bias"] and unexpected == ["fc_norm.weight", "fc_norm.bias"]
    assert norm_keys.norm_key_mismatch(model, mmseg_converter()(tec()))[0] == ["ln1.weight", "ln1.bias"]


def test_ibot_gives_the_teacher_unless_asked_for_the_student():
    checkpoint, teacher, student = ibot()
    state, notes = convert_vit_checkpoint(checkpoint)
    assert notes[0].startswith("weights: teacher")
    assert torch.equal(state["layers.0.ln1.weight"], teacher["blocks.0.norm1.weight"])
    assert "masked_embed" not in state and not any(k.startswith("head") for k in state)
    assert any("masked_embed" in note and "head" in note for note in notes)
    state, _ = convert_vit_checkpoint(checkpoint, "student")
    assert torch.equal(state["layers.0.ln1.weight"], student["blocks.0.norm1.weight"])
    with pytest.raises(CheckpointFormatError, match=r"'ema' holds no state dict \(keys holding one: student, "
                                                    r"teacher\)"):
        convert_vit_checkpoint(checkpoint, "ema")


def test_tool_writes_the_converted_checkpoint_and_refuses_to_overwrite_its_input(tmp_path, capsys):
    tool = load_tool("convert_vit")
    src = tmp_path / "in" / "mae_finetuned.pth"
    src.parent.mkdir()
    torch.save(mae_finetuned(), src)
    dst = tmp_path / "out" / "vit_mmseg.pth"
    assert tool.main([str(src), str(dst)]) == 0
    out = capsys.readouterr().out
    assert "fc_norm" in out and "wrote" in out
    state = torch.load(dst, weights_only=True)
    assert "ln1.weight" in state and "layers.1.ln2.bias" in state and not any(k.startswith("fc_norm") for k in state)
    assert_refused(tool.main, [str(src), str(src)], tmp_path / "in", ["refusing to overwrite"], capsys)
    torch.save({"model": {"layer.weight": torch.zeros(2)}}, tmp_path / "in" / "not_a_vit.pth")
    assert_refused(tool.main, [str(tmp_path / "in" / "not_a_vit.pth"), str(tmp_path / "x.pth")], tmp_path / "in",
                   ["no ViT encoder found"], capsys)
