"""Checkpoints: ``--resume`` restores groupings bit-exactly and continues the
regroup calendar; ``load_from`` restores groupings only; and MMEngine's own
checkpoints load under torch's ``weights_only=True`` without turning it off."""
import argparse
import collections
import subprocess
import sys

import pytest
import torch
from mmdet_helpers import DEMO_DGN, tiny_run_cfg

pytest.importorskip("mmdet", reason="mmdet is not installed")

from dgn_plugins import compat, dgn_layers  # noqa: E402
from dgn_plugins.openmmlab import DGNRegroupHook  # noqa: E402


@pytest.fixture(scope="module")
def first_run(train_tool, tiny_coco, tmp_path_factory):
    """4 iterations, regroup and checkpoint every 2, EMAHook on."""
    work_dir = tmp_path_factory.mktemp("first_run")
    cfg = tiny_run_cfg(train_tool, DEMO_DGN, work_dir, tiny_coco, max_iters=4, checkpoint_interval=2)
    cfg.custom_hooks = [dict(type="EMAHook", momentum=0.5), dict(type="DGNRegroupHook", interval=2, stop=None)]
    runner = train_tool.build_runner(cfg)
    runner.train()
    return work_dir


def runner_from(train_tool, tiny_coco, work_dir, checkpoint, resume, max_iters=4):
    cfg = tiny_run_cfg(train_tool, DEMO_DGN, work_dir, tiny_coco, max_iters=max_iters, checkpoint_interval=2)
    cfg.custom_hooks = [dict(type="EMAHook", momentum=0.5), dict(type="DGNRegroupHook", interval=2, stop=None)]
    cfg.resume, cfg.load_from = resume, str(checkpoint)  # what --resume PATH sets
    return train_tool.build_runner(cfg)


def hook_of(runner):
    return next(h for h in runner.hooks if isinstance(h, DGNRegroupHook))


def grouping_buffers(model):
    return {
        f"{name}.{buffer}": getattr(layer, buffer).clone()
        for name, layer in dgn_layers(model)
        for buffer in ("group_id", "num_regroups", "channel_mean_ema", "channel_var_ema", "num_stat_updates")
    }


def test_resume_restores_groupings_and_continues_the_schedule(train_tool, tiny_coco, first_run, tmp_path):
    checkpoint = first_run / "iter_2.pth"
    saved = torch.load(checkpoint, map_location="cpu")
    assert saved["dgn_regroup_hook"]["schedule"]["last_regroup_step"] == 2
    # what the model held when it was saved (EMAHook keeps the raw weights in ema_state_dict)
    saved_buffers = {k[len("module."):]: v for k, v in saved["ema_state_dict"].items() if k.startswith("module.")}

    # Resumed where it stopped (no iteration left to run): exactly the saved state.
    runner = runner_from(train_tool, tiny_coco, tmp_path / "at_2", checkpoint, resume=True, max_iters=2)
    runner.train()
    assert runner.iter == 2
    buffers = grouping_buffers(runner.model)
    assert any(int(v) for k, v in buffers.items() if k.endswith("num_regroups"))
    for key, value in buffers.items():
        assert torch.equal(value, saved_buffers[key]), key  # bit-exact
    assert hook_of(runner).schedule.last_regroup_step == 2 and hook_of(runner).regroups_done == 1

    # Resumed and run on: one more regroup, after iteration 4 (not 3).
    runner = runner_from(train_tool, tiny_coco, tmp_path / "to_4", checkpoint, resume=True, max_iters=4)
    runner.train()
    hook = hook_of(runner)
    assert hook.regroups_done == 2 and hook.schedule.last_regroup_step == 4
    assert all(int(layer.num_regroups) == 2 for _, layer in dgn_layers(runner.model))
    assert runner.message_hub.get_scalar("train/dgn_regroups").current() == 2


def test_load_from_restores_groupings_but_not_the_schedule(train_tool, tiny_coco, first_run, tmp_path):
    checkpoint = first_run / "iter_4.pth"
    saved = torch.load(checkpoint, map_location="cpu")["state_dict"]
    runner = runner_from(train_tool, tiny_coco, tmp_path, checkpoint, resume=False, max_iters=1)
    runner.train()  # loads, then one iteration: no regroup due (interval 2)
    assert runner.iter == 1
    for name, layer in dgn_layers(runner.model):
        assert torch.equal(layer.group_id, saved[f"{name}.group_id"]), name
    assert hook_of(runner).schedule.last_regroup_step == -1  # fine-tuning starts its own calendar


def test_mmengine_checkpoint_needs_the_allow_list_and_safety_stays_on(first_run, tmp_path):
    checkpoint = str(first_run / "iter_2.pth")
    # Without dgn_plugins: the trap this package works around.
    plain = subprocess.run(
        [sys.executable, "-c", f"import torch; torch.load({checkpoint!r}, map_location='cpu')"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if compat.LOAD_DEFAULTS_TO_WEIGHTS_ONLY:
        assert plain.returncode != 0 and "UnpicklingError" in plain.stderr and "HistoryBuffer" in plain.stderr
    # With dgn_plugins imported (this process): loads, weights_only left at its default.
    loaded = torch.load(checkpoint, map_location="cpu")
    assert {"meta", "state_dict", "message_hub", "optimizer", "param_schedulers", "dgn_regroup_hook"} <= set(loaded)
    if not compat.LOAD_DEFAULTS_TO_WEIGHTS_ONLY:
        return  # torch < 2.6: torch.load unpickles anything by default; nothing of ours to keep on
    # Other globals are still refused, and getattr resolves HistoryBuffer's statistics only.
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"args": argparse.Namespace(x=1)}, unsafe)
    with pytest.raises(Exception, match="Unsupported global"):
        torch.load(unsafe)
    torch.save({"method": ReducesToGetattr()}, unsafe)
    with pytest.raises(AttributeError, match="only HistoryBuffer statistics methods"):
        torch.load(unsafe)


class ReducesToGetattr:
    def __reduce__(self):
        return getattr, (collections.Counter, "update")
