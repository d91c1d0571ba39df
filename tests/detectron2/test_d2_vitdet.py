"""ViTDet with TokenDGN in its ViT (issue 19): the shipped LazyConfig, training, resume, LN checkpoints, bad input.

The shipped config (ViT-B at 1024 px) is built as it is once; everything that
runs is the same config cut down by a small LazyConfig (``TINY``) that loads
it and shrinks the ViT, the pyramid and the heads: Detectron2's own builders,
our launcher and its trainer loop, on the generated shapes data set, on CPU.
"""
import json
import logging
import textwrap
from collections import OrderedDict
from functools import partial

import pytest

pytest.importorskip("detectron2.config", reason="Detectron2 is not installed (built from source: see docs/detectron2.md)")

import torch  # noqa: E402
from d2_support import config_path, detectron2_configs_dir, tiny_heads_and_data  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import LazyCall as L  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.layers.batch_norm import LayerNorm as ChannelsFirstLayerNorm  # noqa: E402
from torch import nn  # noqa: E402

from dgn_plugins import DynamicGroupNorm, TokenDynamicGroupNorm  # noqa: E402
from dgn_plugins.conversion.norm_keys import NormKeyMismatchError  # noqa: E402
from dgn_plugins.detectron2 import DGNNorm, DGNRegroupHook, TokenDGNNorm, check_norm_keys_on_load, launcher  # noqa: E402
from dgn_plugins.detectron2 import lazy as d2_lazy  # noqa: E402
from dgn_plugins.detectron2.lazy import regroup_hook_from_lazy  # noqa: E402
from dgn_plugins.grouping import DGNOptionError, default_group_ids  # noqa: E402
from dgn_plugins.launch import cli  # noqa: E402
from dgn_plugins.training.records import read_records  # noqa: E402

VITDET = config_path("mask_rcnn_vitdet_b_dgn_lazy.py")
DIMS, DEPTH = 64, 2

#: The shipped config, cut down: a 2-block ViT of width 64 on 64 px images, a 32-channel pyramid and heads.
#: The pyramid is narrower than the ViT so that an MAE checkpoint's final `norm.weight` (ViTDet has no such layer)
#: matches no pyramid norm by shape under Detectron2's matching heuristics, as with ViT-B (768 vs 256/384).
TINY = """
from functools import partial

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate

_shipped = LazyConfig.load({shipped!r})
model, dataloader, optimizer, train, lr_multiplier = (
    _shipped.model, _shipped.dataloader, _shipped.optimizer, _shipped.train, _shipped.lr_multiplier)

net = model.backbone.net
net.img_size, net.embed_dim, net.depth, net.num_heads = 64, {dims}, {depth}, 2
net.window_size, net.window_block_indexes, net.drop_path_rate = 2, [0], 0.0
model.backbone.square_pad = 64
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers={depth}, lr_decay_rate=0.7)
""" + tiny_heads_and_data(32, 64) + """
del dataloader.evaluator  # training only

train.init_checkpoint = ""  # the MAE weights are a download; the tests make their own checkpoints
train.max_iter = 4
train.eval_period = 0
train.log_period = 1
train.checkpointer.period = 2
train.dgn_regroup.interval = 2  # regroups after iterations 2 and 4
train.dgn_regroup.stop = None
"""


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    detectron2_configs_dir()  # skips when the model zoo's configs are not installed
    path = tmp_path_factory.mktemp("vitdet") / "tiny_vitdet_dgn.py"
    path.write_text(textwrap.dedent(TINY.format(shipped=VITDET, dims=DIMS, depth=DEPTH)))
    return str(path)


def tiny_cfg(tiny_path, norm_layer=None):
    cfg = LazyConfig.load(tiny_path)
    cfg.train.device = "cpu"
    if norm_layer is not None:
        cfg.model.backbone.net.norm_layer = norm_layer
    return cfg


LAYER_NORM = partial(nn.LayerNorm, eps=1e-6)  # ViTDet's own norm_layer


def token_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, TokenDynamicGroupNorm)]


def test_shipped_config_puts_token_dgn_in_every_vit_block_and_asks_for_the_hook():
    detectron2_configs_dir()
    cfg = LazyConfig.load(VITDET)
    assert isinstance(instantiate(cfg.model.backbone.net.norm_layer), TokenDGNNorm)
    hook = regroup_hook_from_lazy(cfg)
    assert isinstance(hook, DGNRegroupHook) and (hook.schedule.interval, hook.schedule.stop) == (0.1, 0.9)
    assert cfg.train.init_checkpoint.endswith("mae_pretrain_vit_base.pth?matching_heuristics=True")  # ViTDet's
    model = instantiate(cfg.model)
    layers = token_layers(model)
    assert [n for n, _ in layers[:2]] == ["backbone.net.blocks.0.norm1", "backbone.net.blocks.0.norm2"]
    assert len(layers) == 24  # ViT-B: 12 blocks, 2 norms each
    assert all(m.num_channels == 768 and m.num_groups == 32 and m.eps == 1e-6 and m.over == "token" for _, m in layers)
    assert all(torch.equal(m.group_id, default_group_ids(768, 32)) for _, m in layers)  # GN's grouping at the start
    net_norms = [n for n, m in model.backbone.net.named_modules() if isinstance(m, nn.LayerNorm)]
    assert len(net_norms) == 24  # no nn.LayerNorm left in the ViT but the TokenDGN layers
    # The simple feature pyramid and the heads keep ViTDet's channels-first "LN" (see the config's comment).
    pyramid = [m for n, m in model.named_modules() if n.startswith("backbone.simfp")
               and isinstance(m, ChannelsFirstLayerNorm)]
    assert len(pyramid) == 9 and not any(isinstance(m, DynamicGroupNorm) for m in model.modules())


def test_tiny_vitdet_trains_regroups_and_resumes_through_the_launcher(tiny_path, synthetic_coco_root, tmp_path,
                                                                       monkeypatch):
    output_dir = tmp_path / "out"
    launcher.main([tiny_path, "--work-dir", str(output_dir)])  # train.device cuda -> cpu, AMP off
    first = torch.load(output_dir / "model_0000001.pth", map_location="cpu", weights_only=False)  # after step 2
    final = torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=False)  # after step 4
    assert final["trainer"]["hooks"]["DGNRegroupHook"]["schedule"]["last_regroup_step"] == 4
    group_ids = {k: v for k, v in first["model"].items() if k.endswith(".group_id")}
    assert len(group_ids) == 2 * DEPTH and all(k.startswith("backbone.net.blocks.") for k in group_ids)
    assert {int(v) for k, v in final["model"].items() if k.endswith("num_regroups")} == {2}
    gn = default_group_ids(DIMS, 32)
    assert any(not torch.equal(ids, gn) for ids in group_ids.values())  # the first regroup moved channels
    assert [r["step"] for r in read_records(output_dir / "dgn_groups.jsonl")] == [2, 4]

    # --resume from the checkpoint after step 2: the groupings and the calendar come back.
    (output_dir / "last_checkpoint").write_text("model_0000001.pth")
    seen = {}
    before_train = DGNRegroupHook.before_train

    def spy(hook):
        seen["groupings"] = {n + ".group_id": m.group_id.clone() for n, m in token_layers(hook.trainer.model)}
        seen["last_regroup_step"] = hook.schedule.last_regroup_step
        return before_train(hook)

    monkeypatch.setattr(DGNRegroupHook, "before_train", spy)
    launcher.main([tiny_path, "--work-dir", str(output_dir), "--resume"])
    assert seen["last_regroup_step"] == 2
    assert seen["groupings"].keys() == group_ids.keys()
    assert all(torch.equal(seen["groupings"][k], v) for k, v in group_ids.items())
    resumed = torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=False)
    assert {int(v) for k, v in resumed["model"].items() if k.endswith("num_regroups")} == {2}  # one more, at 4
    records = read_records(output_dir / "dgn_groups.jsonl")
    assert [r["step"] for r in records] == [2, 4]  # the first run's step 4 replaced by the resumed run's
    assert records[0]["group_id"] == {k[: -len(".group_id")]: v.tolist() for k, v in group_ids.items()}
    metrics = [json.loads(line) for line in (output_dir / "metrics.json").read_text().splitlines()]
    assert any(m.get("dgn/regroups") for m in metrics)


# ------------------------------------------------------------ LN checkpoints
def _ln_state_dict(tiny_path):
    """A tiny LN ViTDet's weights, the norms' made different from 1 and 0."""
    torch.manual_seed(0)
    model = instantiate(tiny_cfg(tiny_path, norm_layer=LAYER_NORM).model)
    state = model.state_dict()
    for key in state:
        if ".norm1." in key or ".norm2." in key:
            state[key] = state[key] + torch.randn_like(state[key]) * 0.1
    return state


def _token_dgn_model(tiny_path, **options):
    cfg = tiny_cfg(tiny_path)
    cfg.model.backbone.net.norm_layer = L(TokenDGNNorm)(eps=1e-6, **options)
    return d2_lazy.build_model(cfg)


def _load(model, path, allow=False):
    return check_norm_keys_on_load(DetectionCheckpointer(model), "MODEL.WEIGHTS", allow_mismatch=allow).load(path)


def test_layer_norm_vitdet_checkpoint_loads_every_norm_weight(tiny_path, tmp_path):
    state = _ln_state_dict(tiny_path)
    path = tmp_path / "ln_vitdet.pth"
    torch.save({"model": state}, path)
    model = _token_dgn_model(tiny_path, num_groups=1)
    _load(model, str(path))  # no norm key missing or unexpected
    layers = token_layers(model)
    assert len(layers) == 2 * DEPTH
    for name, layer in layers:
        assert torch.equal(layer.weight, state[name + ".weight"]) and torch.equal(layer.bias, state[name + ".bias"])
    # With one group a TokenDGN ViT is the LN ViT: the same features.
    ln = instantiate(tiny_cfg(tiny_path, norm_layer=LAYER_NORM).model)
    ln.load_state_dict(state)
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval().backbone.net(image)["last_feat"],
                                   ln.eval().backbone.net(image)["last_feat"], atol=1e-5, rtol=1e-5)


def _mae_state_dict(ln_state):
    """The ViT as MAE saves its encoder: no `backbone.net.` prefix, a final `norm` that ViTDet does not have."""
    prefix = "backbone.net."
    state = OrderedDict((k[len(prefix):], v) for k, v in ln_state.items() if k.startswith(prefix))
    state["cls_token"] = torch.zeros(1, 1, DIMS)
    state["norm.weight"], state["norm.bias"] = torch.full((DIMS,), 1.5), torch.full((DIMS,), 0.5)
    return state


def test_mae_checkpoint_loads_by_detectron2s_matching_heuristics(tiny_path, tmp_path):
    state = _mae_state_dict(_ln_state_dict(tiny_path))
    path = tmp_path / "mae_pretrain_vit_tiny.pth"
    torch.save({"model": state}, path)
    model = _token_dgn_model(tiny_path)  # 32 groups: LN weights, GN's grouping
    _load(model, f"{path}?matching_heuristics=True")  # as ViTDet's train.init_checkpoint
    for name, layer in token_layers(model):
        short = name[len("backbone.net."):]
        assert torch.equal(layer.weight, state[short + ".weight"]), name
        assert torch.equal(layer.bias, state[short + ".bias"]), name
        assert torch.equal(layer.group_id, default_group_ids(DIMS, 32))


def test_checkpoint_with_other_norm_names_is_refused_naming_the_keys(tiny_path, tmp_path):
    state = {k.replace(".norm1.", ".ln1."): v for k, v in _ln_state_dict(tiny_path).items()}
    path = tmp_path / "renamed.pth"
    torch.save({"model": state}, path)
    model = _token_dgn_model(tiny_path)
    with pytest.raises(NormKeyMismatchError) as error:
        _load(model, str(path))
    message = str(error.value)
    assert f"checkpoint {path} (MODEL.WEIGHTS) does not match the model's normalisation layers" in message
    assert "the model's backbone.net.blocks.0.norm1.weight, backbone.net.blocks.0.norm1.bias, " \
           "backbone.net.blocks.1.norm1.weight, backbone.net.blocks.1.norm1.bias not in the checkpoint" in message
    assert "the checkpoint's backbone.net.blocks.0.ln1.weight" in message and "\n" not in message
    # A partial checkpoint (the ViT alone; the pyramid and heads fresh) is no mismatch, nor DGN's own buffers: here
    # with DGN in the pyramid too (docs/detectron2.md), whose norms the checkpoint lacks as it lacks their convs.
    backbone_only = {k: v for k, v in _ln_state_dict(tiny_path).items() if k.startswith("backbone.net.")}
    torch.save({"model": backbone_only}, tmp_path / "backbone.pth")
    cfg = tiny_cfg(tiny_path, norm_layer=L(TokenDGNNorm)(eps=1e-6))
    cfg.model.backbone.norm = L(DGNNorm)(num_groups=8)
    partial_model = d2_lazy.build_model(cfg)
    pyramid = [n for n, m in partial_model.named_modules() if isinstance(m, DynamicGroupNorm)]
    assert len(pyramid) == 9 and all(n.startswith("backbone.simfp_") for n in pyramid)
    _load(partial_model, str(tmp_path / "backbone.pth"))
    # --allow-norm-key-mismatch: a WARNING names the keys, and the rest loads.
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("dgn_plugins.detectron2.checkpoint").addHandler(handler)
    try:
        _load(model, str(path), allow=True)
    finally:
        logging.getLogger("dgn_plugins.detectron2.checkpoint").removeHandler(handler)
    (warning,) = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert "backbone.net.blocks.0.norm1.weight" in warning and "--allow-norm-key-mismatch" in warning
    assert torch.equal(model.backbone.net.blocks[0].norm2.weight, state["backbone.net.blocks.0.norm2.weight"])


def test_launcher_refuses_such_a_checkpoint_in_one_line(tiny_path, synthetic_coco_root, tmp_path, captured_launcher):
    state = {k.replace(".norm2.", ".gn2."): v for k, v in _ln_state_dict(tiny_path).items()}
    path = tmp_path / "renamed.pth"
    torch.save({"model": state}, path)
    output_dir = tmp_path / "out"
    status = cli([tiny_path, "--work-dir", str(output_dir), f"train.init_checkpoint={path}"])
    err = captured_launcher.readouterr().err
    assert status == 2 and "Traceback" not in err, err
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    assert "(train.init_checkpoint) does not match the model's normalisation layers: the model's " \
           "backbone.net.blocks.0.norm2.weight" in line and "--allow-norm-key-mismatch" in line
    assert not list(output_dir.glob("model_*.pth"))  # nothing trained


# ------------------------------------------------------------- bad layer options
def test_infeasible_token_dgn_options_name_the_layer_and_the_slot(tiny_path):
    cfg = tiny_cfg(tiny_path)
    cfg.model.backbone.net.norm_layer.group_size = 5  # 64 channels cannot form 12 groups of 4 to 5
    cfg.model.backbone.net.norm_layer.alpha = 0.05
    with pytest.raises(DGNOptionError) as info:
        d2_lazy.build_model(cfg)
    message = str(info.value)
    assert message.startswith("layer backbone.net.blocks.0.norm1: DGN layer with C=64 channels (group_size=5")
    assert "raise alpha to >= " in message
    assert "(set in the L(TokenDGNNorm) options of model.backbone.net.norm_layer)" in message
    assert "also 3 more: backbone.net.blocks.0.norm2, backbone.net.blocks.1.norm1, backbone.net.blocks.1.norm2" \
        in message


def test_dgn_given_vit_tokens_names_the_layer_the_shape_and_the_layout(tiny_path, synthetic_coco_root, tmp_path,
                                                                        captured_launcher):
    cfg = tiny_cfg(tiny_path, norm_layer=L(DGNNorm)(num_groups=8))  # the channels-first layer in a ViT block
    model = d2_lazy.build_model(cfg)
    expected = ("layer backbone.net.blocks.0.norm1 (DynamicGroupNorm(64)) got input of shape (1, 4, 4, 64), "
                "expects channels first (N, 64, *); the input looks like the other layout: use TokenDGN / "
                "TokenDynamicGroupNorm there")
    with pytest.raises(ValueError) as error:
        model.backbone.net(torch.randn(1, 3, 64, 64))
    assert str(error.value) == expected
    # Through the launcher: the first training step stops with that line, exit status 2.
    output_dir = tmp_path / "out"
    status = cli([tiny_path, "--work-dir", str(output_dir),
                  "model.backbone.net.norm_layer._target_=dgn_plugins.detectron2.DGNNorm",
                  "model.backbone.net.norm_layer.num_groups=8"])
    err = captured_launcher.readouterr().err
    assert status == 2, err
    (line,) = [x for x in err.splitlines() if x.startswith("error: ")]
    assert "layer backbone.net.blocks.0.norm1 (DynamicGroupNorm(64)) got input of shape (2, 4, 4, 64)" in line
