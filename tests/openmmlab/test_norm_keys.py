"""The launcher's check of checkpoints against the model's normalisation layers (nothing dropped silently)."""
import pytest
import torch
from torch import nn

pytest.importorskip("mmengine", reason="mmengine is not installed")

from dgn_plugins import DynamicGroupNorm, TokenDynamicGroupNorm  # noqa: E402
from dgn_plugins.openmmlab.norm_keys import (  # noqa: E402
    NormKeyMismatchError,
    check_checkpoint_norm_keys,
    checkpoints_to_load,
    norm_key_mismatch,
)


class Block(nn.Module):
    """A transformer block as mmcv names it: the norms after the layer's ``_abbr_``."""

    def __init__(self, norm, abbr):
        super().__init__()
        self.add_module(f"{abbr}1", norm())
        self.fc = nn.Linear(16, 16)
        self.add_module(f"{abbr}2", norm())


def backbone(norm=lambda: nn.LayerNorm(16), abbr="ln"):
    model = nn.Module()
    model.layers = nn.ModuleList([Block(norm, abbr), Block(norm, abbr)])
    return model


def save(tmp_path, state, name="ckpt.pth"):
    path = str(tmp_path / name)
    torch.save(state, path)
    return path


def test_layer_norm_checkpoint_into_token_dgn_matches():
    state = backbone().state_dict()
    model = backbone(lambda: TokenDynamicGroupNorm(16, 4), "ln")
    assert norm_key_mismatch(model, state) == ([], [])  # DGN's grouping buffers are not asked of a LN checkpoint


def test_other_norm_names_are_named_both_ways(tmp_path):
    model = nn.Module()
    model.backbone = backbone(lambda: DynamicGroupNorm(16, 4), "gn")  # what type='DGN' builds in a ViT
    model.backbone.init_cfg = dict(type="Pretrained", checkpoint=save(tmp_path, backbone().state_dict()))
    with pytest.raises(NormKeyMismatchError) as error:
        check_checkpoint_norm_keys(model, None)
    message = str(error.value)
    assert "ckpt.pth (backbone.init_cfg)" in message
    assert "the model's layers.0.gn1.weight, layers.0.gn1.bias, layers.0.gn2.weight, layers.0.gn2.bias, ... " \
           "(8 in all) not in the checkpoint" in message
    assert "the checkpoint's layers.0.ln1.weight" in message and "\n" not in message


def test_load_from_with_a_prefix_and_wrapped_weights(tmp_path):
    model = nn.Module()
    model.backbone = backbone()
    whole = {"meta": {}, "state_dict": {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}}
    assert check_checkpoint_norm_keys(model, save(tmp_path, whole)) == 1
    model.backbone.init_cfg = [dict(type="Kaiming", layer="Linear"),
                               dict(type="Pretrained", checkpoint=save(tmp_path, whole, "b.pth"), prefix="backbone")]
    assert check_checkpoint_norm_keys(model, None) == 1
    state = dict(whole["state_dict"])
    del state["backbone.layers.1.ln2.bias"]
    with pytest.raises(NormKeyMismatchError, match=r"the model's backbone\.layers\.1\.ln2\.bias not in the checkpoint"):
        check_checkpoint_norm_keys(model, save(tmp_path, {"state_dict": state}, "c.pth"))


def test_urls_and_missing_files_are_not_read(tmp_path):
    model = backbone()
    model.init_cfg = dict(type="Pretrained", checkpoint="https://example.com/vit.pth")
    assert checkpoints_to_load(model, str(tmp_path / "absent.pth")) == []
