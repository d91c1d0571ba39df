"""plot_groups: checkpoints (three toolkits' layouts) and regroup records -> a readable PNG."""
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from dgn_plugins import convert_gn_to_dgn, dgn_layers, regroup_model
from dgn_plugins.evaluation.plots import (
    PlotError,
    grouping_state,
    select_layers,
    timelines_from_checkpoints,
    timelines_from_records,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
pytest.importorskip("matplotlib")


def _tool():
    spec = importlib.util.spec_from_file_location("plot_groups_tool", os.path.join(ROOT, "tools", "plot_groups.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_dgn():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.ReLU())
    return convert_gn_to_dgn(model, percentile=0.25, n_init=2)


def _train_and_regroup(model, steps, generator):
    """A few forward passes on channel-skewed inputs, then a regroup; returns the records."""
    records = []
    for step in range(1, steps + 1):
        scale = torch.linspace(0.1, 3.0, 3).view(1, 3, 1, 1) * step
        model(torch.randn(8, 3, 8, 8, generator=generator) * scale + step)
        reports = regroup_model(model)
        records.append({"step": step * 10, "group_id": {n: layer.group_id.tolist() for n, layer in dgn_layers(model)},
                        "reports": [r.as_dict() for r in reports]})
    return records


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Checkpoints after each of 4 regroups in three layouts, plus the regroup records."""
    root = tmp_path_factory.mktemp("run")
    model, generator = _tiny_dgn().train(), torch.Generator().manual_seed(0)
    records = []
    for step in range(1, 5):
        records += _train_and_regroup(model, 1, generator)
        records[-1]["step"] = step * 10
        state = {k: v.clone() for k, v in model.state_dict().items()}
        layouts = {"mmengine": {"meta": {"iter": step * 10}, "state_dict": state},
                   "detectron2": {"model": {"module." + k: v for k, v in state.items()}, "iteration": step * 10},
                   "plain": state}
        for layout, checkpoint in layouts.items():
            (root / layout).mkdir(exist_ok=True)
            torch.save(checkpoint, root / layout / f"iter_{step * 10}.pth")
    (root / "dgn_groups.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def _assert_png(path):
    from PIL import Image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.verify()


@pytest.mark.parametrize("layout", ["mmengine", "detectron2", "plain"])
def test_checkpoints_of_every_toolkit_give_the_same_timeline(run_dir, layout):
    paths = sorted((run_dir / layout).glob("*.pth"), reverse=True)  # ordering comes from the step, not argv
    timelines = timelines_from_checkpoints(paths)
    assert list(timelines) == ["1", "4"]
    timeline = timelines["4"]
    assert timeline.steps == [10, 20, 30, 40] and timeline.group_ids.shape == (4, 32)
    assert (timeline.sizes.sum(1) == 32).all()
    assert np.isfinite(timeline.variance_after).all()
    reference = timelines_from_checkpoints(sorted((run_dir / "plain").glob("*.pth")))["4"]
    assert np.array_equal(timeline.group_ids, reference.group_ids)


def test_checkpoint_variance_is_the_posters_intra_group_variance(run_dir):
    checkpoint = torch.load(run_dir / "plain" / "iter_40.pth")
    layer = grouping_state(checkpoint)["4"]
    mean, ids = layer["channel_mean_ema"], layer["group_id"]
    expected = np.mean([mean[ids == k].var() for k in range(8)])  # population variance per group, averaged
    timeline = timelines_from_checkpoints([run_dir / "plain" / "iter_40.pth"])["4"]
    assert timeline.variance_after[0] == pytest.approx(expected)


def test_groups_do_evolve_in_the_fixture(run_dir):
    timeline = timelines_from_records([json.loads(line) for line in (run_dir / "dgn_groups.jsonl").read_text().splitlines()])["4"]
    assert any(not np.array_equal(timeline.group_ids[0], row) for row in timeline.group_ids[1:])
    assert np.isfinite(timeline.variance_before).all()


@pytest.mark.parametrize("source", ["checkpoints", "records"])
def test_tool_writes_a_valid_png(run_dir, tmp_path, source, capsys):
    out = tmp_path / f"{source}.png"
    args = (["--checkpoints", *map(str, sorted((run_dir / "mmengine").glob("*.pth")))] if source == "checkpoints"
            else ["--records", str(run_dir / "dgn_groups.jsonl")])
    assert _tool().main(args + ["--layers", "^4$", "1", "--out", str(out)]) == 0
    assert "2 layers" in capsys.readouterr().out
    _assert_png(out)


def test_layer_selection_by_name_regex_and_default():
    names = [f"backbone.layer{i}.gn" for i in range(1, 8)]
    assert select_layers(names) == ["backbone.layer1.gn", "backbone.layer4.gn", "backbone.layer7.gn"]
    assert select_layers(names, [r"layer[23]"]) == ["backbone.layer2.gn", "backbone.layer3.gn"]
    assert select_layers(names, ["backbone.layer5.gn"]) == ["backbone.layer5.gn"]
    with pytest.raises(PlotError, match="no DGN layer matches"):
        select_layers(names, ["neck"])


def test_error_paths(tmp_path, capsys):
    gn_only = tmp_path / "gn.pth"
    torch.save({"state_dict": nn.GroupNorm(2, 4).state_dict()}, gn_only)
    tool = _tool()
    assert tool.main(["--checkpoints", str(gn_only), "--out", str(tmp_path / "x.png")]) == 2
    assert "no DGN layers" in capsys.readouterr().err
    assert tool.main(["--checkpoints", str(tmp_path / "missing.pth")]) == 2
    assert f"argument --checkpoints: {tmp_path / 'missing.pth'}: no such file" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


# ------------------------------------------------------------ what a reader sees
def _hue(colour):
    from matplotlib.colors import rgb_to_hsv

    return rgb_to_hsv(np.asarray(colour[:3], float))[0]


@pytest.mark.parametrize("num_groups", [8, 16, 20, 32, 64])
def test_neighbouring_groups_get_different_hues(num_groups):
    from dgn_plugins.evaluation.plots import group_colours

    colours = group_colours(num_groups)
    assert len(colours) == num_groups and len(set(map(tuple, colours))) == num_groups
    for k in range(num_groups - 1):
        gap = abs(_hue(colours[k]) - _hue(colours[k + 1]))
        assert min(gap, 1 - gap) > 0.04, (k, colours[k], colours[k + 1])


def test_sizes_are_counted_per_size_not_drawn_per_group(run_dir):
    from dgn_plugins.evaluation.plots import size_counts

    records = [json.loads(line) for line in (run_dir / "dgn_groups.jsonl").read_text().splitlines()]
    timeline = timelines_from_records(records)["4"]
    low, counts = size_counts(timeline)
    assert counts.shape == (timeline.sizes.max() - low + 1, len(timeline.steps))
    assert (counts.sum(0) == timeline.num_groups).all()  # every group counted once per step
    for t, row in enumerate(timeline.sizes):
        for size in set(row.tolist()):
            assert counts[size - low, t] == (row == size).sum()


def test_tool_starts_record_timelines_from_gn(run_dir, tmp_path):
    from dgn_plugins.grouping import default_group_ids

    tool = _tool()
    drawn = []
    tool.plot_timelines = lambda timelines, out, title: drawn.extend(timelines)
    assert tool.main(["--records", str(run_dir / "dgn_groups.jsonl"), "--layers", "^4$"]) == 0
    (timeline,) = drawn
    assert timeline.steps == [0, 10, 20, 30, 40]
    assert timeline.group_ids[0].tolist() == default_group_ids(32, 8).tolist()
    assert np.isnan(timeline.wss_before[0]) and np.isfinite(timeline.wss_before[1:]).all()


def _criterion_legend(timeline):
    from matplotlib.figure import Figure

    from dgn_plugins.evaluation.plots import _draw_criterion

    ax = Figure().subplots()
    _draw_criterion(ax, timeline)
    return ax.get_title(), [text.get_text() for text in ax.get_legend().get_texts()], ax.texts[-1].get_text()


def test_criterion_panel_shows_the_posters_statistic_and_when_needed_the_solvers(run_dir):
    records = [json.loads(line) for line in (run_dir / "dgn_groups.jsonl").read_text().splitlines()]
    timeline = timelines_from_records(records)["4"]
    expected = [next(r for r in rec["reports"] if r["name"] == "4")["within_group_ss_after"] for rec in records]
    assert timeline.wss_after == expected
    assert all(a <= b + 1e-12 for a, b in zip(timeline.wss_after, timeline.wss_before))  # default solver
    title, legend, caption = _criterion_legend(timeline)
    assert "within-group sum of squares" in title and legend == ["before regroup", "after regroup"]
    assert "what the solver minimises" in caption

    for record in records:
        for report in record["reports"]:
            report["cluster_features"] = ["mean", "var"]
    title, legend, caption = _criterion_legend(timelines_from_records(records)["4"])
    assert legend[2:] == ["solver objective, before", "solver objective, after"]
    assert "standardised mean+var" in caption and "may rise" in caption
