"""DGNRegroupHook in real Detectron2 training on CPU: regroups, metrics, checkpoints, resume."""
import importlib.util
import json
import logging
import os

import pytest

# "detectron2.config", not "detectron2": with tests/ on sys.path this folder
# would pass for a (namespace) package named detectron2.
pytest.importorskip("detectron2.config", reason="Detectron2 is not installed (built from source: see docs/detectron2.md)")

import torch  # noqa: E402
from d2_support import ROOT, config_path, dgn_modules, load_cfg, tiny_train_opts  # noqa: E402
from detectron2.engine import hooks  # noqa: E402

from dgn_plugins.detectron2 import DGNRegroupHook, DGNTrainer, insert_regroup_hook  # noqa: E402
from dgn_plugins.training.records import read_records  # noqa: E402

DEMO_DGN = config_path("demo_mask_rcnn_dgn.yaml")


def _trainer(output_dir, max_iter, *opts, **tiny):
    cfg = load_cfg(DEMO_DGN, tiny_train_opts(output_dir, max_iter, **tiny) + list(opts))
    cfg.freeze()
    return DGNTrainer(cfg)


def _regroup_hook(trainer) -> DGNRegroupHook:
    (hook,) = [h for h in trainer._hooks if isinstance(h, DGNRegroupHook)]
    return hook


def _groupings(model):
    return {name: layer.group_id.clone() for name, layer in dgn_modules(model)}


def _plot_groups_main(argv) -> int:
    spec = importlib.util.spec_from_file_location("plot_groups_tool", os.path.join(ROOT, "tools", "plot_groups.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


def test_hook_sits_before_checkpointer_eval_and_writer():
    hook = DGNRegroupHook(interval=10)
    defaults = [hooks.IterationTimer(), hooks.LRScheduler(), None, hooks.EvalHook(0, lambda: {})]
    ordered = insert_regroup_hook(defaults, hook)
    assert ordered.index(hook) == 3
    timer = hooks.IterationTimer()
    assert insert_regroup_hook([timer], None) == [timer]
    assert insert_regroup_hook([timer], hook) == [timer, hook]


def test_schedule_state_round_trips():
    hook = DGNRegroupHook(interval=3, start=3, stop=9)
    hook.schedule.mark_done(6)
    hook.regroups_done = 2
    other = DGNRegroupHook(interval=3, start=3, stop=9)
    other.load_state_dict(hook.state_dict())
    assert other.schedule.last_regroup_step == 6 and other.regroups_done == 2
    assert not other.schedule.is_due(6) and other.schedule.is_due(9) and not other.schedule.is_due(12)


def test_training_regroups_logs_and_resumes(synthetic_coco_root, tmp_path):
    output_dir = tmp_path / "run"
    # Iterations 1-2, regroup after 2, checkpoints after 1 and 2 (model_final).
    trainer = _trainer(output_dir, 2, interval=2, checkpoint_period=1)
    trainer.resume_or_load(resume=False)
    initial = _groupings(trainer.model)
    trainer.train()

    hook = _regroup_hook(trainer)
    assert hook.regroups_done == 1 and hook.schedule.last_regroup_step == 2
    layers = dgn_modules(trainer.model)
    assert all(int(layer.num_regroups) == 1 for _, layer in layers)  # FREEZE_AT 0: every layer trains
    after = _groupings(trainer.model)
    assert any(not torch.equal(after[name], initial[name]) for name in after)

    # EventStorage (storage iteration 1 = step 2) -> metrics.json and TensorBoard
    history = trainer.storage.history("dgn/groups_changed").values()
    assert [iteration for _, iteration in history] == [1] and history[0][0] > 0
    with open(output_dir / "metrics.json") as f:
        records = [json.loads(line) for line in f if line.strip()]
    (record,) = [r for r in records if "dgn/groups_changed" in r]
    assert record["iteration"] == 1 and record["dgn/regroups"] == 1
    assert record["dgn/layers_regrouped"] == len(layers) and record["dgn/layers_skipped"] == 0

    # The checkpoint of step 1 precedes the regroup; the final one (step 2) holds it.
    before = torch.load(output_dir / "model_0000000.pth", map_location="cpu", weights_only=False)
    assert before["trainer"]["hooks"]["DGNRegroupHook"]["schedule"]["last_regroup_step"] == -1
    final = torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["trainer"]["hooks"]["DGNRegroupHook"]["schedule"]["last_regroup_step"] == 2

    # --resume to 4 iterations: schedule and groupings come back, the calendar goes on.
    resumed = _trainer(output_dir, 4, interval=2, checkpoint_period=1)
    resumed.resume_or_load(resume=True)
    resumed_hook = _regroup_hook(resumed)
    assert resumed.start_iter == 2
    assert resumed_hook.schedule.last_regroup_step == 2 and resumed_hook.regroups_done == 1
    for name, layer in dgn_modules(resumed.model):
        assert torch.equal(layer.group_id, final["model"][name + ".group_id"])
        assert torch.equal(layer.group_id, after[name])
        assert int(layer.num_regroups) == 1
    first_records = (output_dir / "dgn_groups.jsonl").read_text()
    resumed.train()  # iterations 3-4: one regroup, after 4
    assert resumed_hook.regroups_done == 2 and resumed_hook.schedule.last_regroup_step == 4
    assert all(int(layer.num_regroups) == 2 for _, layer in dgn_modules(resumed.model))

    # Regroup records in OUTPUT_DIR: the resumed run appended to the first run's.
    text = (output_dir / "dgn_groups.jsonl").read_text()
    assert text.startswith(first_records) and len(first_records.splitlines()) == 1
    records = read_records(output_dir / "dgn_groups.jsonl")
    assert [r["step"] for r in records] == [2, 4]
    assert set(records[0]["group_id"]) == set(after)
    for name, ids in records[0]["group_id"].items():
        assert ids == after[name].tolist(), name
    for name, layer in dgn_modules(resumed.model):
        assert records[1]["group_id"][name] == layer.group_id.tolist(), name
    assert [r["name"] for r in records[1]["reports"]] == [name for name, _ in dgn_modules(resumed.model)]
    png = output_dir / "groups.png"
    assert _plot_groups_main(["--records", str(output_dir / "dgn_groups.jsonl"), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_frozen_stages_keep_their_grouping(synthetic_coco_root, tmp_path):
    trainer = _trainer(tmp_path / "frozen", 1, "MODEL.BACKBONE.FREEZE_AT", "2", interval=1)
    trainer.resume_or_load(resume=False)
    trainer.train()
    layers = dict(dgn_modules(trainer.model))
    frozen = [name for name in layers if ".stem." in name or ".res2." in name]
    assert frozen
    assert all(int(layers[name].num_regroups) == 0 for name in frozen)
    assert all(int(layer.num_regroups) == 1 for name, layer in layers.items() if name not in frozen)


def test_interval_zero_disables_the_hook(synthetic_coco_root, tmp_path):
    trainer = _trainer(tmp_path / "off", 1, interval=0)
    assert not [h for h in trainer._hooks if isinstance(h, DGNRegroupHook)]


def test_empty_records_file_writes_no_records(synthetic_coco_root, tmp_path):
    trainer = _trainer(tmp_path / "norecords", 1, "MODEL.DGN.REGROUP.RECORDS_FILE", "", interval=1)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert _regroup_hook(trainer).regroups_done == 1
    assert not list((tmp_path / "norecords").rglob("*.jsonl"))


def test_hook_warns_on_a_model_without_dgn():
    from detectron2.engine import SimpleTrainer

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), torch.nn.GroupNorm(2, 8))
    trainer = SimpleTrainer(model, [], torch.optim.SGD(model.parameters(), lr=0.1))
    hook = DGNRegroupHook(interval=1)
    trainer.register_hooks([hook])
    messages = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("dgn_plugins").addHandler(handler)  # Detectron2's loggers do not propagate
    try:
        hook.before_train()
    finally:
        logging.getLogger("dgn_plugins").removeHandler(handler)
    assert any("no DGN layers" in m for m in messages)


def test_fresh_run_keeps_the_previous_records_and_warns(synthetic_coco_root, tmp_path):
    output_dir = tmp_path / "twice"
    first = _trainer(output_dir, 2, interval=1)
    first.resume_or_load(resume=False)
    first.train()
    first_text = (output_dir / "dgn_groups.jsonl").read_text()
    messages = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("dgn_plugins").addHandler(handler)  # Detectron2's loggers do not propagate
    try:
        again = _trainer(output_dir, 1, interval=1)
        again.resume_or_load(resume=False)
        again.train()
    finally:
        logging.getLogger("dgn_plugins").removeHandler(handler)
    assert [r["step"] for r in read_records(output_dir / "dgn_groups.jsonl")] == [1]
    (kept,) = output_dir.glob("dgn_groups.*.jsonl")
    assert kept.read_text() == first_text
    assert any(kept.name in m and "steps 1..2" in m for m in messages), messages


def test_schedule_in_shares_of_max_iter():
    """interval=0.25, stop=0.75 of 8 iterations: regroups after iterations 2, 4 and 6."""
    from detectron2.engine import SimpleTrainer

    from dgn_plugins import DynamicGroupNorm

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), DynamicGroupNorm(16, 4))

        def forward(self, batch):
            return {"loss": self.body(batch).pow(2).mean()}

    model = Net()
    batches = iter(lambda: torch.randn(2, 3, 8, 8), None)
    trainer = SimpleTrainer(model, batches, torch.optim.SGD(model.parameters(), lr=0.01))
    hook = DGNRegroupHook(interval=0.25, stop=0.75, records_file=None)
    trainer.register_hooks([hook])
    trainer.train(0, 8)
    assert (hook.schedule.interval, hook.schedule.stop) == (2, 6)
    assert hook.regroups_done == 3 and hook.schedule.last_regroup_step == 6
