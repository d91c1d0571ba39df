"""``tools/train.py --dgn``: an installed GN config trains as DGN, regrouping, with no config file written."""
import os

import pytest
from mmdet_helpers import ROOT, shrink_mask_rcnn, tiny_run_cfg

pytest.importorskip("mmdet", reason="mmdet is not installed")

from torch import nn  # noqa: E402

from dgn_plugins import DynamicGroupNorm, dgn_layers  # noqa: E402
from dgn_plugins.openmmlab import DGNRegroupHook  # noqa: E402

MMDET_GN = "mmdet::gn/mask-rcnn_r50_fpn_gn-all_2x_coco.py"


def regroup_hooks(runner):
    return [h for h in runner.hooks if isinstance(h, DGNRegroupHook)]


def log_text(runner):
    with open(os.path.join(runner.log_dir, f"{runner.timestamp}.log")) as f:
        return f.read()


def test_mmdet_gn_config_trains_with_regrouping(train_tool, tiny_coco, tmp_path):
    switch = ["--dgn", "--dgn-interval", "1", "--dgn-options", "alpha=0.4", "percentile=0.5"]
    cfg = shrink_mask_rcnn(tiny_run_cfg(train_tool, MMDET_GN, tmp_path, tiny_coco, max_iters=3, extra_args=switch))
    runner = train_tool.build_runner(cfg)
    model = runner.model
    assert not [n for n, m in model.named_modules() if type(m) is nn.GroupNorm]
    layers = dgn_layers(model)
    assert len(layers) == 1 + 3 * 16 + 4 + 8 + 4 + 4  # backbone, FPN, box head, mask head: every GN place
    assert all(layer.alpha == 0.4 and layer.percentile == 0.5 and layer.num_groups == 32 for _, layer in layers)
    (hook,) = regroup_hooks(runner)
    assert (hook.schedule.interval, hook.schedule.stop) == (1, 0.9)  # the study's stop, a share of the run
    runner.train()
    assert hook.schedule.stop == 2 and hook.regroups_done == 2  # 90% of 3 iterations, rounded down
    assert any(int(layer.num_regroups) == 2 for _, layer in dgn_layers(runner.model))
    text = log_text(runner)
    assert "--dgn: 4 GN norm_cfg(s) now DGN: model.backbone.norm_cfg, model.neck.norm_cfg" in text
    assert "--dgn: added DGNRegroupHook(interval=1, stop=0.9)" in text


def test_group_norm_built_outside_norm_cfg_is_converted(train_tool, tiny_coco, tmp_path):
    """GridRCNN's grid head builds nn.GroupNorm directly: the switch converts it after the build."""
    config = "mmdet::grid_rcnn/grid-rcnn_r50_fpn_gn-head_2x_coco.py"
    cfg = tiny_run_cfg(train_tool, config, tmp_path, tiny_coco, max_iters=2, extra_args=["--dgn"])
    cfg.model.backbone.init_cfg = None
    runner = train_tool.build_runner(cfg)
    assert not [n for n, m in runner.model.named_modules() if type(m) is nn.GroupNorm]
    assert isinstance(runner.model.roi_head.grid_head.norm1, DynamicGroupNorm)
    assert "nn.GroupNorm built outside norm_cfg converted: roi_head.grid_head.norm1" in log_text(runner)


def test_mmseg_gn_config_trains_with_regrouping(train_tool, tmp_path):
    pytest.importorskip("mmseg", reason="mmseg is not installed")
    data = str(tmp_path / "generated" / "imagenets_synthetic")
    options = [f"{split}_dataloader.dataset.data_root={data}" for split in ("train", "val", "test")]
    options += ["train_cfg.max_iters=4", "train_cfg.val_interval=100", "train_dataloader.batch_size=2",
                "default_hooks.checkpoint.interval=100"]
    argv = [os.path.join(ROOT, "configs", "demo", "fcn_tiny_gn_demo.py"), "--work-dir", str(tmp_path / "work"),
            "--dgn", "--dgn-interval", "1", "--cfg-options", *options]
    runner = train_tool.main(argv)
    assert not [n for n, m in runner.model.named_modules() if type(m) is nn.GroupNorm]
    (hook,) = regroup_hooks(runner)
    assert hook.schedule.stop == 3 and hook.regroups_done == 3  # 90% of 4 iterations, rounded down
    text = log_text(runner)
    assert "model.backbone.norm_cfg, model.decode_head.norm_cfg, model.auxiliary_head.norm_cfg" in text
    assert "--dgn: added DGNRegroupHook(interval=1, stop=0.9)" in text


def test_dgn_stop_takes_iterations_or_a_share(train_tool, tiny_coco, tmp_path):
    switch = ["--dgn", "--dgn-interval", "1", "--dgn-stop", "1"]
    cfg = shrink_mask_rcnn(tiny_run_cfg(train_tool, MMDET_GN, tmp_path, tiny_coco, max_iters=3, extra_args=switch))
    runner = train_tool.build_runner(cfg)
    (hook,) = regroup_hooks(runner)
    assert (hook.schedule.interval, hook.schedule.stop) == (1, 1)


def test_bad_switch_options_are_one_line(train_tool, tmp_path, capsys):
    config = os.path.join(ROOT, "configs", "demo", "mask-rcnn_tiny_gn_demo.py")
    assert train_tool.cli([config, "--work-dir", str(tmp_path), "--dgn", "--dgn-options", "alfa=0.3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown DGN option(s) alfa" in err and "alpha" in err
    with pytest.raises(SystemExit):
        train_tool.parse_args([config, "--dgn-options", "alpha=0.3"])  # without --dgn
