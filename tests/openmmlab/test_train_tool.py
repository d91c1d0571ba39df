"""tools/train.py: the toolkits' flags, toolkit detection, the Detectron2
dispatch point, and the unknown-norm check before anything is built."""
import os

import pytest
import torch
from mmdet_helpers import DEMO_DGN, DEMO_GN, import_train_tool

pytest.importorskip("mmdet", reason="mmdet is not installed")

from mmengine.config import Config  # noqa: E402

from dgn_plugins.errors import ConfigError  # noqa: E402
from dgn_plugins.openmmlab import UnknownNormTypeError  # noqa: E402

train = import_train_tool()


def test_flags_match_the_toolkits_train_py(tmp_path):
    args = train.parse_args([DEMO_GN, "--local-rank", "1", "--resume", "--amp", "--launcher", "pytorch"])
    assert (args.local_rank, args.resume, args.amp, args.launcher) == (1, "auto", True, "pytorch")
    assert train.parse_args([DEMO_GN, "--local_rank", "3"]).local_rank == 3

    cfg = train.load_config(train.parse_args([DEMO_GN, "--resume"]))
    assert cfg.resume is True and cfg.load_from is None  # latest checkpoint in work_dir
    assert cfg.work_dir == os.path.join("./work_dirs", "mask-rcnn_tiny_gn_demo")
    checkpoint = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {}}, checkpoint)
    cfg = train.load_config(
        train.parse_args([
            DEMO_GN, "--resume", str(checkpoint), "--amp", "--work-dir", str(tmp_path),
            "--cfg-options", "train_cfg.max_epochs=3", "model.backbone.depth=34",
        ])
    )  # fmt: skip
    assert cfg.resume is True and cfg.load_from == str(checkpoint) and cfg.work_dir == str(tmp_path)
    assert cfg.optim_wrapper.type == "AmpOptimWrapper" and cfg.optim_wrapper.loss_scale == "dynamic"
    assert cfg.train_cfg.max_epochs == 3 and cfg.model.backbone.depth == 34


def test_toolkit_detection():
    assert train.toolkit_of(Config.fromfile(DEMO_DGN)) == "mmdet"
    pytest.importorskip("mmseg", reason="mmseg is not installed")
    assert train.toolkit_of(Config(dict(default_scope="mmseg", model=dict(type="EncoderDecoder")))) == "mmseg"
    assert train.toolkit_of(Config(dict(model=dict(type="EncoderDecoder")))) == "mmseg"  # no default_scope
    assert train.toolkit_of(Config(dict(model=dict(type="MaskRCNN")))) == "mmdet"
    with pytest.raises(ConfigError, match="default_scope"):
        train.toolkit_of(Config(dict(model=dict(type="NoSuchModel"))))


def test_detectron2_configs_are_dispatched_to_the_detectron2_launcher(tmp_path):
    yaml = tmp_path / "mask_rcnn_R_50_FPN_3x.yaml"
    yaml.write_text("MODEL:\n  RESNETS:\n    NORM: GN\n")
    lazy = tmp_path / "mask_rcnn_lazy.py"
    lazy.write_text("from detectron2.config import LazyCall as L\nmodel = L(dict)()\n")
    from dgn_plugins import launch

    assert launch.detectron2_argv([str(yaml), "--num-gpus", "1"]) == [str(yaml), "--num-gpus", "1"]
    assert launch.detectron2_argv(["--config-file", str(lazy), "--eval-only"])
    assert launch.detectron2_argv([str(lazy)])
    assert not launch.detectron2_argv([DEMO_DGN, "--work-dir", str(tmp_path)])
    assert not launch.is_detectron2_config(DEMO_DGN)
    try:
        import dgn_plugins.detectron2  # noqa: F401
    except ImportError:
        for config in (yaml, lazy):
            with pytest.raises(ConfigError, match="Detectron2 is not importable.*docs/detectron2.md"):
                launch.main([str(config)])


def test_unknown_norm_type_stops_before_building(tmp_path):
    argv = [DEMO_DGN, "--work-dir", str(tmp_path), "--cfg-options", "model.neck.norm_cfg.type=DNG"]
    with pytest.raises(UnknownNormTypeError, match=r"'DNG' in model\.neck\.norm_cfg.*Did you mean 'DGN'"):
        train.main(argv)
    assert not os.listdir(tmp_path)  # no runner, no logs


def test_other_launchers_on_cpu_say_what_to_use():
    import torch

    if torch.cuda.is_available():
        pytest.skip("the CPU path applies without CUDA only")
    cfg = train.load_config(train.parse_args([DEMO_DGN, "--launcher", "slurm"]))
    with pytest.raises(ConfigError, match="torchrun"):
        train.setup_cpu_distributed(cfg)
    assert cfg.env_cfg.dist_cfg.backend == "gloo"


def test_norm_type_typo_is_one_line_from_the_command_line(tmp_path):
    import subprocess
    import sys

    from mmdet_helpers import TOOLS

    argv = [sys.executable, os.path.join(TOOLS, "train.py"), DEMO_DGN, "--work-dir", str(tmp_path),
            "--cfg-options", "model.neck.norm_cfg.type=DNG"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "'DNG' in model.neck.norm_cfg" in lines[0] and "Did you mean 'DGN'?" in lines[0]
    assert not os.listdir(tmp_path)


def test_infeasible_group_bounds_name_the_layer_and_the_option(tmp_path, capsys):
    argv = [DEMO_DGN, "--work-dir", str(tmp_path), "--cfg-options",
            "model.backbone.norm_cfg.group_size=5", "model.backbone.norm_cfg.alpha=0.05"]
    assert train.cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: layer backbone.gn1: ")
    assert "C=32" in err and "raise alpha to >= 0.200 (now 0.05)" in err and "group_size" in err
    assert "(set in model.backbone.norm_cfg)" in err  # the neck and heads' norm_cfgs are fine
    assert "backbone.layer1.0.gn1" in err
