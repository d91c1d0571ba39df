"""DGNRegroupHook's regroup records in real MMEngine runs: content, plotting, resume, opt-out."""
import importlib.util
import os

import pytest
import torch
from mmdet_helpers import DEMO_DGN, TOOLS, tiny_run_cfg

pytest.importorskip("mmdet", reason="mmdet is not installed")

from dgn_plugins import dgn_layers  # noqa: E402
from dgn_plugins.evaluation.plots import timelines_from_records  # noqa: E402
from dgn_plugins.training.records import RECORDS_FILE, read_records  # noqa: E402


def run(train_tool, work_dir, data_root, max_iters, hook=None, resume_from=None):
    cfg = tiny_run_cfg(train_tool, DEMO_DGN, work_dir, data_root, max_iters=max_iters, checkpoint_interval=2)
    # Every 2 iterations to the end (the default stop, 90% of the run, would drop the last one).
    cfg.custom_hooks = [dict(dict(type="DGNRegroupHook", interval=2, stop=None), **(hook or {}))]
    if resume_from is not None:
        cfg.resume, cfg.load_from = True, str(resume_from)
    runner = train_tool.build_runner(cfg)
    runner.train()
    return runner


def plot_groups_tool():
    spec = importlib.util.spec_from_file_location("plot_groups_tool", os.path.join(TOOLS, "plot_groups.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def four_iterations(train_tool, tiny_coco, tmp_path_factory):
    """4 iterations, regroup and checkpoint after 2 and 4: the run and its records' text."""
    work_dir = tmp_path_factory.mktemp("records")
    runner = run(train_tool, work_dir, tiny_coco, max_iters=4)
    return runner, work_dir, (work_dir / RECORDS_FILE).read_text()


def test_one_record_per_regroup_holds_the_groupings_and_reports(four_iterations, tmp_path):
    runner, work_dir, _ = four_iterations
    records = read_records(work_dir / RECORDS_FILE)
    assert [r["step"] for r in records] == [2, 4]
    layers = dgn_layers(runner.model)
    for record in records:
        assert list(record["group_id"]) == [name for name, _ in layers]
        assert [r["name"] for r in record["reports"]] == [name for name, _ in layers]
        assert all(r["mean_group_variance_before"] >= 0 and r["mean_group_variance_after"] >= 0
                   for r in record["reports"])  # what plot_groups draws in its variance panel
    # the last record is the grouping the model ended with
    for name, layer in layers:
        assert records[-1]["group_id"][name] == layer.group_id.tolist(), name
    assert any(records[0]["group_id"][n] != records[1]["group_id"][n] for n, _ in layers), "nothing moved: vacuous"

    timelines = timelines_from_records(records)
    assert timelines["backbone.layer1.0.gn1"].steps == [2, 4]
    out = tmp_path / "groups.png"
    status = plot_groups_tool().main(["--records", str(work_dir / RECORDS_FILE), "--out", str(out)])
    assert status == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resumed_run_keeps_records_up_to_its_checkpoint_and_appends(train_tool, tiny_coco, four_iterations):
    _, first_dir, first_text = four_iterations
    work_dir = first_dir.parent / "resumed"
    work_dir.mkdir()
    for name in ("iter_2.pth", RECORDS_FILE):
        (work_dir / name).write_bytes((first_dir / name).read_bytes())
    # Resume from iteration 2: the record of step 4 came after that checkpoint and is rewritten by this run.
    runner = run(train_tool, work_dir, tiny_coco, max_iters=6, resume_from=work_dir / "iter_2.pth")
    lines = (work_dir / RECORDS_FILE).read_text().splitlines()
    assert lines[0] == first_text.splitlines()[0]  # step 2 kept byte for byte
    records = read_records(work_dir / RECORDS_FILE)
    assert [r["step"] for r in records] == [2, 4, 6]
    for name, layer in dgn_layers(runner.model):
        assert records[-1]["group_id"][name] == layer.group_id.tolist(), name
    # The first run's record of step 4, replaced in the file, is kept beside it.
    (first_aside,) = work_dir.glob("dgn_groups.*.jsonl")
    assert first_aside.read_text() == first_text

    # A fresh run in the same work_dir starts the file anew ...
    fresh = run(train_tool, work_dir, tiny_coco, max_iters=2)
    assert [r["step"] for r in read_records(work_dir / RECORDS_FILE)] == [2]
    # ... keeping the earlier run's records beside it, and says so at WARNING.
    kept = sorted(set(work_dir.glob("dgn_groups.*.jsonl")) - {first_aside})
    assert len(kept) == 1 and [r["step"] for r in read_records(kept[0])] == [2, 4, 6]
    with open(os.path.join(fresh.log_dir, f"{fresh.timestamp}.log")) as log:
        warnings = [line for line in log if "WARNING" in line and "DGNRegroupHook" in line]
    assert any(kept[0].name in line and "steps 2..6" in line for line in warnings), warnings


def test_records_file_can_be_renamed_or_turned_off(train_tool, tiny_coco, tmp_path):
    run(train_tool, tmp_path / "renamed", tiny_coco, max_iters=2, hook=dict(records_file="groups/regroups.jsonl"))
    records = read_records(tmp_path / "renamed" / "groups" / "regroups.jsonl")
    assert [r["step"] for r in records] == [2]
    assert not (tmp_path / "renamed" / RECORDS_FILE).exists()

    runner = run(train_tool, tmp_path / "off", tiny_coco, max_iters=2, hook=dict(records_file=None))
    assert all(int(layer.num_regroups) == 1 for _, layer in dgn_layers(runner.model))
    assert not list((tmp_path / "off").rglob("*.jsonl"))
    assert torch.load(tmp_path / "off" / "iter_2.pth", map_location="cpu")["dgn_regroup_hook"]["regroups_done"] == 1
