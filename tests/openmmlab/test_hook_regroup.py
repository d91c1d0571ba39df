"""DGNRegroupHook in real MMEngine runs: schedule, options, logging, EMAHook."""
import glob
import json
import os

import pytest
import torch
from mmdet_helpers import DEMO_DGN, tiny_run_cfg

pytest.importorskip("mmdet", reason="mmdet is not installed")

from mmengine.hooks import EMAHook  # noqa: E402

from dgn_plugins import dgn_layers  # noqa: E402
from dgn_plugins.grouping import default_group_ids  # noqa: E402
from dgn_plugins.openmmlab import DGNRegroupHook  # noqa: E402


def run(train_tool, work_dir, data_root, hooks, max_iters, **kwargs):
    cfg = tiny_run_cfg(train_tool, DEMO_DGN, work_dir, data_root, max_iters=max_iters, **kwargs)
    cfg.custom_hooks = hooks
    runner = train_tool.build_runner(cfg)
    runner.train()
    return runner


def regroup_hook(runner) -> DGNRegroupHook:
    return next(h for h in runner.hooks if isinstance(h, DGNRegroupHook))


def changed_layers(model):
    return [n for n, m in dgn_layers(model) if not torch.equal(m.group_id, default_group_ids(m.num_channels, m.num_groups))]


def test_hook_options_are_checked():
    with pytest.raises(TypeError, match="norm_cfg"):
        DGNRegroupHook(alpha=0.3)  # a layout option: belongs in norm_cfg
    with pytest.raises(ValueError, match="momentum"):
        DGNRegroupHook(momentum=2.0)
    with pytest.raises(ValueError, match="percentile"):
        DGNRegroupHook(percentile=1.5)
    with pytest.raises(ValueError, match="interval"):
        DGNRegroupHook(interval=0)


def test_schedule_start_stop_and_runtime_options(train_tool, tiny_coco, tmp_path):
    hook = dict(type="DGNRegroupHook", interval=1, start=2, stop=3, momentum=0.3, n_init=2, percentile=0.5)
    runner = run(train_tool, tmp_path, tiny_coco, [hook], max_iters=4)
    hook = regroup_hook(runner)
    assert hook.regroups_done == 2 and hook.schedule.last_regroup_step == 3  # after iters 2 and 3, not 1 or 4
    layers = dgn_layers(runner.model)
    for _, layer in layers:
        assert int(layer.num_regroups) == 2
        assert layer.momentum == 0.3  # a running-statistics option: set on the layers
        assert layer.n_init == "auto"  # a policy option: the hook's policy overrides it, the layer keeps its own
    assert hook.policy.n_init == 2 and hook.policy.percentile == 0.5
    # percentile 0.5 (not the layers' 0.75): half of each layer's 8 groups dissolve
    assert runner.message_hub.get_scalar("train/dgn_groups_dissolved").current() == 4 * len(layers)


def test_schedule_in_shares_of_the_run(train_tool, tiny_coco, tmp_path):
    # interval=0.25, stop=0.75 of 8 iterations: after iterations 2, 4 and 6 (none in the last quarter).
    runner = run(train_tool, tmp_path, tiny_coco, [dict(type="DGNRegroupHook", interval=0.25, stop=0.75)], max_iters=8)
    hook = regroup_hook(runner)
    assert hook.regroups_done == 3 and hook.schedule.last_regroup_step == 6
    assert (hook.schedule.interval, hook.schedule.stop) == (2, 6)
    with pytest.raises(ValueError, match="share of the run"):
        DGNRegroupHook(interval=1.5)


def test_by_epoch_schedule(train_tool, tiny_coco, tmp_path):
    cfg = tiny_run_cfg(train_tool, DEMO_DGN, tmp_path, tiny_coco, max_iters=4)
    cfg.train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=2, val_interval=100)  # 2 iterations per epoch
    cfg.custom_hooks = [dict(type="DGNRegroupHook", interval=1, by_epoch=True, stop=None)]  # after both epochs
    runner = train_tool.build_runner(cfg)
    runner.train()
    assert regroup_hook(runner).regroups_done == 2
    assert all(int(layer.num_regroups) == 2 for _, layer in dgn_layers(runner.model))


def test_regroups_are_logged_to_text_json_and_tensorboard(train_tool, tiny_coco, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    cfg = tiny_run_cfg(train_tool, DEMO_DGN, tmp_path, tiny_coco, max_iters=4)
    cfg.visualizer.vis_backends = [dict(type="LocalVisBackend"), dict(type="TensorboardVisBackend")]
    cfg.custom_hooks = [dict(type="DGNRegroupHook", interval=2, stop=None)]
    runner = train_tool.build_runner(cfg)
    runner.train()
    assert changed_layers(runner.model), "no grouping changed: the logging test would be vacuous"

    hub = runner.message_hub
    assert hub.get_scalar("train/dgn_regroups").current() == 2
    moved = hub.get_scalar("train/dgn_channels_moved").current()
    assert moved >= 0
    assert hub.get_scalar("train/dgn_layers_regrouped").current() == len(dgn_layers(runner.model))

    # the json log (LoggerHook -> LocalVisBackend): the LogProcessor keeps train/ keys, prefix removed
    (json_log,) = [p for p in glob.glob(str(tmp_path / "*" / "vis_data" / "*.json")) if not p.endswith("scalars.json")]
    records = [json.loads(line) for line in open(json_log)]
    by_iter = {r["iter"]: r for r in records if "iter" in r}
    assert "dgn_groups_changed" not in by_iter[1]
    for step in (2, 3, 4):
        for key in ("dgn_groups_changed", "dgn_channels_moved", "dgn_groups_dissolved", "dgn_regroups"):
            assert key in by_iter[step], (step, key)
    assert by_iter[4]["dgn_regroups"] == 2 and by_iter[4]["dgn_channels_moved"] == moved

    # TensorBoard gets the same tags
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = glob.glob(str(tmp_path / "*" / "vis_data" / "events.out.tfevents*"))
    accumulator = EventAccumulator(os.path.dirname(events))
    accumulator.Reload()
    assert {"dgn_groups_changed", "dgn_channels_moved"} <= set(accumulator.Tags()["scalars"])
    assert [e.step for e in accumulator.Scalars("dgn_regroups")] == [2, 3, 4]

    # the text log: totals and one line per layer
    (text_log,) = glob.glob(str(tmp_path / "*" / "*.log"))
    text = open(text_log).read()
    assert "DGN regroup #1 after iter 2:" in text and "DGN regroup #2 after iter 4:" in text
    assert "backbone.layer1.0.gn1:" in text and "roi_head.mask_head.convs.3.gn:" in text
    # interval 2 of 4 iterations, no stop: the last regroup lands after the last iteration
    assert "a regroup is due after the last of 4 iterations" in text and "stop=2" in text


@pytest.mark.parametrize("update_buffers", [False, True])
def test_ema_model_follows_regroups(train_tool, tiny_coco, tmp_path, update_buffers):
    """mmengine averages float buffers and, with update_buffers=True, never
    copies integer ones: the hook must hand the EMA copy every new grouping."""
    hooks = [
        dict(type="EMAHook", momentum=0.5, update_buffers=update_buffers),
        dict(type="DGNRegroupHook", interval=1, stop=None),  # to the end: 2 regroups in 2 iterations
    ]
    runner = run(train_tool, tmp_path, tiny_coco, hooks, max_iters=2)
    assert changed_layers(runner.model), "no grouping changed: the EMA test would be vacuous"
    ema = next(h for h in runner.hooks if isinstance(h, EMAHook)).ema_model.module
    source = dict(dgn_layers(runner.model))
    for name, layer in dgn_layers(ema):
        assert torch.equal(layer.group_id, source[name].group_id), name
        assert torch.equal(layer.group_count, source[name].group_count), name
        assert int(layer.num_regroups) == int(source[name].num_regroups) == 2

    # The checkpoint holds the EMA weights as state_dict (EMAHook swaps them): same groupings.
    checkpoint = torch.load(tmp_path / "iter_2.pth", map_location="cpu")
    for name, layer in source.items():
        assert torch.equal(checkpoint["state_dict"][f"{name}.group_id"], layer.group_id), name
        assert torch.equal(checkpoint["ema_state_dict"][f"module.{name}.group_id"], layer.group_id), name
