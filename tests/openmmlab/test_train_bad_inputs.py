"""Every bad input gets one clear line (issue 23): tools/train.py on MMDetection configs, and tools/demo.py.

Rows as in tests/test_bad_inputs.py (status 2, one stderr line naming the option
or file, no traceback, inputs unchanged), through what the scripts run
(``launch.cli``, the demo's ``main`` under ``run_cli``). All are refused while
parsing or loading the config; ``--dgn`` on a config with no GN builds the tiny
demo model and stops before training.
"""
import shutil
from pathlib import Path

import pytest
from bad_inputs import ROOT, assert_refused, load_tool, make_inputs, table
from mmdet_helpers import DEMO_DGN, DEMO_GN, demo_gn_state_dict

pytest.importorskip("mmdet", reason="mmdet is not installed")

from dgn_plugins.errors import run_cli  # noqa: E402
from dgn_plugins.launch import cli  # noqa: E402  (what tools/train.py runs)


@pytest.fixture(scope="module")
def made_inputs(tmp_path_factory):
    inputs = make_inputs(tmp_path_factory.mktemp("inputs"))
    (inputs / "no_gn.py").write_text(  # the demo Mask R-CNN with BN in its backbone and no norm elsewhere
        f"_base_ = [{DEMO_GN!r}]\n"
        "model = dict(backbone=dict(norm_cfg=dict(_delete_=True, type='BN', requires_grad=True)),\n"
        "             neck=dict(norm_cfg=None),\n"
        "             roi_head=dict(bbox_head=dict(norm_cfg=None), mask_head=dict(norm_cfg=None)))\n")
    _norm_key_checkpoints(inputs)
    return inputs


def _norm_key_checkpoints(inputs):
    """Checkpoints whose backbone norms are named bn1, not gn1: as load_from, and as a Pretrained init_cfg."""
    import torch

    renamed = {k.replace("backbone.gn1.", "backbone.bn1."): v for k, v in demo_gn_state_dict().items()}
    torch.save({"state_dict": renamed, "meta": {}}, inputs / "bn_names.pth")
    backbone = {k[len("backbone."):]: v for k, v in renamed.items() if k.startswith("backbone.")}
    torch.save(backbone, inputs / "bn_backbone.pth")
    (inputs / "pretrained_bn.py").write_text(
        f"_base_ = [{DEMO_DGN!r}]\n"
        f"model = dict(backbone=dict(init_cfg=dict(_delete_=True, type='Pretrained', checkpoint={str(inputs / 'bn_backbone.pth')!r})))\n")


@pytest.fixture
def inputs(made_inputs, tmp_path):
    return Path(shutil.copytree(made_inputs, tmp_path / "inputs"))


WORK = ["--work-dir", "{d}/../work"]  # beside the inputs: a run that starts writes there, not among them
TRAIN = [
    ("--dgn on a config with no GN", ["{d}/no_gn.py", "--dgn"] + WORK, ["--dgn: nothing to convert", "BN"]),
    ("dgn-options without =", [DEMO_GN, "--dgn", "--dgn-options", "alpha"] + WORK, ["--dgn-options", "'alpha'"]),
    ("dgn-options unknown key", [DEMO_GN, "--dgn", "--dgn-options", "alpah=0.5"] + WORK, ["alpah"]),
    ("dgn-options word for a number", [DEMO_GN, "--dgn", "--dgn-options", "alpha=x"] + WORK, ["alpha='x'"]),
    ("dgn-options alpha=2", [DEMO_GN, "--dgn", "--dgn-options", "alpha=2"] + WORK, ["alpha=2"]),
    ("dgn-options a key twice", [DEMO_GN, "--dgn", "--dgn-options", "alpha=0.3", "alpha=0.4"] + WORK,
     ["--dgn-options: alpha given twice"]),
    ("dgn-options without --dgn", [DEMO_GN, "--dgn-options", "alpha=0.3"] + WORK, ["--dgn-options"]),
    ("dgn-stop without --dgn", [DEMO_GN, "--dgn-stop", "5"] + WORK, ["--dgn-stop need --dgn"]),
    ("dgn-interval 0", [DEMO_GN, "--dgn", "--dgn-interval", "0"] + WORK, ["--dgn-interval"]),
    ("dgn-interval -3", [DEMO_GN, "--dgn", "--dgn-interval", "-3"] + WORK, ["--dgn-interval"]),
    ("dgn-stop 1.5", [DEMO_GN, "--dgn", "--dgn-stop", "1.5"] + WORK, ["--dgn-stop"]),
    ("cfg-options without =", [DEMO_GN, "--cfg-options", "foo"] + WORK, ["--cfg-options", "'foo'"]),
    ("cfg-options word for a number", [DEMO_GN, "--cfg-options", "train_cfg.max_epochs=x"] + WORK,
     ["--cfg-options train_cfg.max_epochs=x"]),
    ("cfg-options word for True/False", [DEMO_GN, "--cfg-options", "model.backbone.norm_eval=maybe"] + WORK,
     ["model.backbone.norm_eval=maybe"]),
    ("cfg-options through a number", [DEMO_GN, "--cfg-options", "model.backbone.depth.x=1"] + WORK,
     ["--cfg-options model.backbone.depth.x=1"]),
    ("cfg-options unbalanced brackets", [DEMO_GN, "--cfg-options", "model.neck.in_channels=[1,2"] + WORK,
     ["--cfg-options"]),
    ("resume from a text file", [DEMO_GN, "--resume", "{d}/notes.txt"] + WORK, ["--resume", "notes.txt"]),
    ("resume from a missing file", [DEMO_GN, "--resume", "{d}/nope.pth"] + WORK, ["--resume", "{d}/nope.pth"]),
    ("missing config", ["{d}/nope.py"] + WORK, ["{d}/nope.py"]),
    ("text file as a config", ["{d}/notes.txt"] + WORK, ["notes.txt", "not a config"]),
    ("missing package config", ["mmdet::nope/nope.py"] + WORK, ["mmdet::nope/nope.py"]),
    ("work dir is a file", [DEMO_GN, "--work-dir", "{d}/notes.txt"], ["--work-dir"]),
    ("local rank not a number", [DEMO_GN, "--local-rank", "x"] + WORK, ["--local-rank"]),
    ("unknown launcher", [DEMO_GN, "--launcher", "ray"] + WORK, ["--launcher"]),
    ("load_from with other norm names", [DEMO_DGN, "--cfg-options", "load_from={d}/bn_names.pth"] + WORK,
     ["bn_names.pth (load_from) does not match the model's normalisation layers: the model's backbone.gn1.weight, "
      "backbone.gn1.bias not in the checkpoint; the checkpoint's backbone.bn1.weight, backbone.bn1.bias not in "
      "the model"]),
    ("Pretrained init_cfg with other norm names", ["{d}/pretrained_bn.py"] + WORK,
     ["bn_backbone.pth (backbone.init_cfg) does not match the model's normalisation layers: the model's gn1.weight, "
      "gn1.bias not in the checkpoint; the checkpoint's bn1.weight, bn1.bias not in the model"]),
    ("auto-scale-lr without auto_scale_lr", [DEMO_DGN, "--auto-scale-lr", "--cfg-options", "auto_scale_lr=None"]
     + WORK, ["--auto-scale-lr"]),
]


@pytest.mark.parametrize("argv, names", table(TRAIN))
def test_train_refuses(inputs, argv, names, capsys):
    assert_refused(cli, argv, inputs, names, capsys)
    work = inputs.parent / "work"
    assert not work.exists() or not list(work.rglob("*.pth"))  # nothing trained


DEMO = [
    ("no epochs", ["--epochs", "0", "--work-dir", "{d}/../demo"], ["--epochs"]),
    ("negative epochs", ["--epochs", "-1", "--work-dir", "{d}/../demo"], ["--epochs"]),
    ("work dir is a file", ["--work-dir", "{d}/notes.txt"], ["--work-dir"]),
    ("data root is someone's data", ["--data-root", "{d}/seg", "--work-dir", "{d}/../demo", "--skip-seg",
                                     "--skip-core"], ["{d}/seg", "refusing to replace it"]),
]


@pytest.mark.parametrize("argv, names", table(DEMO))
def test_demo_refuses(inputs, argv, names, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    demo = load_tool("demo")
    assert_refused(lambda args: run_cli(demo.main, args, errors=(FileExistsError,)), argv, inputs, names, capsys)
