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


# ------------------------------------------------------- through tools/train.py
def _runner(tmp_path, *cfg_options, allow=False):
    pytest.importorskip("mmdet", reason="mmdet is not installed")
    from mmdet_helpers import DEMO_DGN, import_train_tool

    train = import_train_tool()
    argv = [DEMO_DGN, "--work-dir", str(tmp_path / "work"), "--cfg-options", *cfg_options]
    args = train.parse_args(argv + (["--allow-norm-key-mismatch"] if allow else []))
    return train.build_runner(train.load_config(args), allow_norm_key_mismatch=args.allow_norm_key_mismatch)


def _demo_gn_checkpoint(tmp_path, rename=None):
    from mmdet_helpers import demo_gn_state_dict

    state = demo_gn_state_dict()
    if rename:
        state = {k.replace(*rename): v for k, v in state.items()}
    return save(tmp_path, {"state_dict": state, "meta": {}}, "gn_demo.pth")


def test_launcher_loads_a_gn_checkpoint_into_the_dgn_model(tmp_path):
    runner = _runner(tmp_path, f"load_from={_demo_gn_checkpoint(tmp_path)}")  # no norm key missing: no error
    runner.load_checkpoint(runner.cfg.load_from)
    state = torch.load(runner.cfg.load_from, weights_only=True)["state_dict"]
    layer = runner.model.backbone.gn1
    assert isinstance(layer, DynamicGroupNorm) and torch.equal(layer.weight, state["backbone.gn1.weight"])
    assert layer.layer_name == "backbone.gn1"  # named by the launcher: its layout errors say where it is


def test_launcher_refuses_other_norm_names_unless_allowed(tmp_path):
    checkpoint = _demo_gn_checkpoint(tmp_path, rename=("backbone.gn1.", "backbone.ln1."))
    with pytest.raises(NormKeyMismatchError, match=r"the model's backbone\.gn1\.weight, backbone\.gn1\.bias not in "
                                                   r"the checkpoint; the checkpoint's backbone\.ln1\.weight"):
        _runner(tmp_path, f"load_from={checkpoint}")
    runner = _runner(tmp_path, f"load_from={checkpoint}", allow=True)
    assert runner.cfg.load_from == checkpoint
    text = "\n".join(p.read_text() for p in (tmp_path / "work").rglob("*.log"))  # the runner's log file
    assert "loading it anyway (--allow-norm-key-mismatch)" in text and "backbone.ln1.weight" in text


def test_reading_a_checkpoint_keeps_the_process_wide_allow_list(tmp_path):
    """The launcher reads load_from before MMEngine does: MMEngine's types must stay allow-listed for its own load
    (torch's safe_globals context drops its entries on exit, also those allowed before it)."""
    from dgn_plugins import compat
    from dgn_plugins.openmmlab import allow_checkpoint_types

    if not allow_checkpoint_types():
        pytest.skip("this torch loads without weights_only by default: there is no allow-list to keep")
    before = compat.get_safe_globals()
    model = backbone()
    assert check_checkpoint_norm_keys(model, save(tmp_path, {"state_dict": model.state_dict()})) == 1
    after = compat.get_safe_globals()
    assert [g for g in before if g not in after] == []
