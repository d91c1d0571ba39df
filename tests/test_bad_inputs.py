"""Every bad input gets one clear line (issue 23): compare_coco, compare_miou, plot_groups,
test_robustness and demo_core, one table per tool, one row per bad input.

Each row must exit with status 2, print one stderr line naming the option or file
at fault, show no traceback and leave every input as it was (tests/bad_inputs.py).
No row builds a model or trains: all are refused before any work starts, or while
reading an input.
"""
import shutil
from pathlib import Path

import pytest
from bad_inputs import assert_refused, load_tool, make_inputs, table

from dgn_plugins.errors import run_cli

pytest.importorskip("matplotlib")
pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def made_inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("inputs"))


@pytest.fixture
def inputs(made_inputs, tmp_path):
    """A fresh copy per row: a row that damaged its inputs fails alone."""
    return Path(shutil.copytree(made_inputs, tmp_path / "inputs"))


GT = ["--gt", "{d}/gt.json"]
TWO = ["--results", "GN={d}/gn.json", "DGN={d}/dgn.json"]


def against(name):
    return GT + ["--results", "GN={d}/gn.json", f"BAD={{d}}/{name}"]


COCO = [
    # outputs never replace inputs
    ("output at the gt", GT + TWO + ["--output", "{d}/gt.json"], ["--output", "{d}/gt.json"]),
    ("output at a result file", GT + TWO + ["--output", "{d}/gn.json"], ["--output"]),
    ("plot at a result file", GT + TWO + ["--plot", "{d}/dgn.json"], ["--plot"]),
    ("plot at the gt", GT + TWO + ["--plot", "{d}/gt.json"], ["--plot"]),
    ("output and plot at one path", GT + TWO + ["--output", "{d}/out.x", "--plot", "{d}/out.x"], ["--plot"]),
    ("output is a folder", GT + TWO + ["--output", "{d}/folder"], ["--output"]),
    # garbage in: refused, never scored
    ("NaN box", against("nan_box.json"), ["nan_box.json"]),
    ("inf box", against("inf_box.json"), ["inf_box.json"]),
    ("negative width", against("negative_box.json"), ["negative_box.json"]),
    ("x2 < x1 in an mmdet pickle", against("flipped.pkl"), ["flipped.pkl"]),
    ("NaN score", against("nan_score.json"), ["nan_score.json"]),
    ("inf score", against("inf_score.json"), ["inf_score.json"]),
    ("box of three numbers", against("short_box.json"), ["short_box.json"]),
    ("box that is text", against("text_box.json"), ["text_box.json"]),
    ("score that is text", against("text_score.json"), ["text_score.json"]),
    # LABEL=PATH, files
    ("label with no path", GT + ["--results", "GN=", "DGN={d}/dgn.json"], ["--results", "'GN='"]),
    ("path with no label", GT + ["--results", "={d}/gn.json"], ["--results"]),
    ("a label twice", GT + ["--results", "A={d}/gn.json", "A={d}/dgn.json"], ["--results", "label A"]),
    ("missing result file", GT + ["--results", "GN={d}/nope.json"], ["{d}/nope.json"]),
    ("result file is a folder", GT + ["--results", "GN={d}/folder"], ["{d}/folder"]),
    ("empty result file", GT + ["--results", "GN={d}/empty.json"], ["{d}/empty.json"]),
    ("missing gt", ["--gt", "{d}/nope.json"] + TWO, ["--gt", "{d}/nope.json"]),
    ("gt is a folder", ["--gt", "{d}/folder"] + TWO, ["--gt"]),
    ("gt is a result file", ["--gt", "{d}/gn.json"] + TWO, ["{d}/gn.json"]),
    # numbers and choices
    ("digits -1", GT + TWO + ["--digits", "-1"], ["--digits"]),
    ("digits not a number", GT + TWO + ["--digits", "x"], ["--digits"]),
    ("unknown iou type", GT + TWO + ["--iou-types", "keypoints"], ["--iou-types"]),
    ("unknown format", GT + TWO + ["--format", "xml"], ["--format"]),
]


@pytest.mark.parametrize("argv, names", table(COCO))
def test_compare_coco_refuses(inputs, argv, names, capsys):
    from dgn_plugins.evaluation.compare.coco import main

    assert_refused(main, argv, inputs, names, capsys)


SEG = ["--gt", "{d}/seg/gt", "--num-classes", "3"]
PREDS = ["--preds", "GN={d}/seg/gn", "DGN={d}/seg/dgn"]
MIOU = [
    ("output at a gt png", SEG + PREDS + ["--output", "{d}/seg/gt/im0.png"], ["--output", "{d}/seg/gt"]),
    ("output inside the gt folder", SEG + PREDS + ["--output", "{d}/seg/gt/report.md"], ["--output"]),
    ("plot at a prediction png", SEG + PREDS + ["--plot", "{d}/seg/gn/im1.png"], ["--plot"]),
    ("output at the gt folder", SEG + PREDS + ["--output", "{d}/seg/gt"], ["--output"]),
    ("num-classes 0", ["--gt", "{d}/seg/gt", "--num-classes", "0"] + PREDS, ["--num-classes"]),
    ("num-classes not a number", ["--gt", "{d}/seg/gt", "--num-classes", "x"] + PREDS, ["--num-classes"]),
    ("ignore-index -5", SEG + PREDS + ["--ignore-index", "-5"], ["--ignore-index"]),
    ("label with no path", SEG + ["--preds", "GN=", "DGN={d}/seg/dgn"], ["'GN='"]),
    ("a label twice", SEG + ["--preds", "A={d}/seg/gn", "A={d}/seg/dgn"], ["label A"]),
    ("missing gt folder", ["--gt", "{d}/nope", "--num-classes", "3"] + PREDS, ["--gt"]),
    ("gt is a file", ["--gt", "{d}/gt.json", "--num-classes", "3"] + PREDS, ["--gt"]),
    ("missing predictions", SEG + ["--preds", "GN={d}/seg/nope"], ["{d}/seg/nope"]),
    ("class names missing", SEG + PREDS + ["--class-names", "{d}/seg/nope.txt"], ["{d}/seg/nope.txt"]),
    ("class names too few", ["--gt", "{d}/seg/gt", "--num-classes", "4"] + PREDS
     + ["--class-names", "{d}/seg/classes.txt"], ["classes.txt"]),
    ("reduce-zero-label on rgb maps", SEG + PREDS + ["--label-encoding", "rgb", "--reduce-zero-label"],
     ["--reduce-zero-label"]),
    ("digits -3", SEG + PREDS + ["--digits", "-3"], ["--digits"]),
]


@pytest.mark.parametrize("argv, names", table(MIOU))
def test_compare_miou_refuses(inputs, argv, names, capsys):
    from dgn_plugins.evaluation.compare.miou import main

    assert_refused(main, argv, inputs, names, capsys)


def plot_records(name):
    return ["--records", f"{{d}}/{name}", "--out", "{d}/plot.png"]


PLOT = [
    ("out at a checkpoint", ["--checkpoints", "{d}/iter_10.pth", "{d}/iter_20.pth", "--out", "{d}/iter_20.pth"],
     ["--out", "{d}/iter_20.pth"]),
    ("out at the records", ["--records", "{d}/records.jsonl", "--out", "{d}/records.jsonl"], ["--out"]),
    ("out is a folder", ["--records", "{d}/records.jsonl", "--out", "{d}/folder"], ["--out"]),
    ("group id beyond K", plot_records("id_beyond_k.jsonl"), ["layer 1 at step 20", "group id 99"]),
    ("negative group id", plot_records("negative_id.jsonl"), ["layer 1 at step 20"]),
    ("channel count changes", plot_records("fewer_channels.jsonl"), ["layer 1 at step 20"]),
    ("fractional step", plot_records("fractional_step.jsonl"), ["step 12.5"]),
    ("step goes back", plot_records("step_back.jsonl"), ["step 5 follows step 10"]),
    ("a broken line mid-file", plot_records("broken_middle.jsonl"), ["broken_middle.jsonl: line 2"]),
    ("lines that are not records", plot_records("not_records.jsonl"), ["not_records.jsonl: line 1"]),
    ("empty records file", plot_records("empty.json"), ["{d}/empty.json"]),
    ("missing records", plot_records("nope.jsonl"), ["--records", "{d}/nope.jsonl"]),
    ("text file as a checkpoint", ["--checkpoints", "{d}/notes.txt", "--out", "{d}/plot.png"],
     ["--checkpoints", "notes.txt"]),
    ("checkpoint with a group id beyond K", ["--checkpoints", "{d}/iter_10.pth", "{d}/id_beyond_k.pth",
                                             "--out", "{d}/plot.png"], ["id_beyond_k.pth: layer 1 at step 40"]),
    ("a checkpoint twice", ["--checkpoints", "{d}/iter_10.pth", "{d}/iter_10.pth", "--out", "{d}/plot.png"],
     ["--checkpoints"]),
    ("no layer matches", plot_records("records.jsonl") + ["--layers", "nope"], ["'nope'"]),
    ("a bad regex", plot_records("records.jsonl") + ["--layers", "("], ["--layers"]),
    ("both sources", ["--records", "{d}/records.jsonl", "--checkpoints", "{d}/iter_10.pth"], ["--checkpoints"]),
]


@pytest.mark.parametrize("argv, names", table(PLOT))
def test_plot_groups_refuses(inputs, argv, names, capsys):
    assert_refused(load_tool("plot_groups").main, argv, inputs, names, capsys)
    assert not (inputs / "plot.png").exists()


def test_plot_groups_skips_a_cut_short_last_line_with_one_warning(inputs, tmp_path, capsys):
    records = tmp_path / "killed.jsonl"
    text = (inputs / "records.jsonl").read_text()
    records.write_text(text + text.splitlines()[-1][:40])  # a run killed while writing its last record
    assert load_tool("plot_groups").main(["--records", str(records), "--out", str(tmp_path / "g.png")]) == 0
    (warning,) = capsys.readouterr().err.strip().splitlines()
    assert warning == f"warning: {records}: line 4 is not JSON (a write cut short?): skipped"
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")


CONFIG = "configs/demo/fcn_tiny_gn_demo.py"
ROBUSTNESS = [
    ("model without a checkpoint", ["--models", f"GN={CONFIG}"], ["no checkpoint for GN", "--random-init"]),
    ("positional config without a checkpoint", [CONFIG], ["no checkpoint for fcn_tiny_gn_demo"]),
    ("label with no config", ["--models", "GN="], ["--models", "'GN='"]),
    ("no label", ["--models", f"={CONFIG},{{d}}/iter_10.pth"], ["--models"]),
    ("no =", ["--models", CONFIG], ["--models"]),
    ("empty checkpoint after the comma", ["--models", f"GN={CONFIG},"], ["--models"]),
    ("a label twice", ["--models", f"A={CONFIG},{{d}}/iter_10.pth", f"A={CONFIG},{{d}}/iter_10.pth"],
     ["label A"]),
    ("missing config", ["--models", "GN={d}/nope.py,{d}/iter_10.pth"], ["{d}/nope.py"]),
    ("missing checkpoint", ["--models", f"GN={CONFIG},{{d}}/nope.pth"], ["{d}/nope.pth"]),
    ("text file as a checkpoint", ["--models", f"GN={CONFIG},{{d}}/notes.txt"], ["notes.txt", "not a checkpoint"]),
    ("severity 0", [CONFIG, "{d}/iter_10.pth", "--severities", "0"], ["--severities"]),
    ("severity twice", [CONFIG, "{d}/iter_10.pth", "--severities", "1", "1"], ["--severities"]),
    ("unknown corruption", [CONFIG, "{d}/iter_10.pth", "--corruptions", "fogg"], ["--corruptions"]),
    ("corruption twice", [CONFIG, "{d}/iter_10.pth", "--corruptions", "fog", "fog"], ["--corruptions"]),
    ("seed not a number", [CONFIG, "{d}/iter_10.pth", "--seed", "x"], ["--seed"]),
    ("out at the checkpoint", [CONFIG, "{d}/iter_10.pth", "--out", "{d}/iter_10.pth"], ["--out"]),
    ("report at the checkpoint", [CONFIG, "{d}/iter_10.pth", "--output", "{d}/iter_10.pth"], ["--output"]),
    ("work dir is a file", [CONFIG, "{d}/iter_10.pth", "--work-dir", "{d}/notes.txt"], ["--work-dir"]),
    ("both ways of naming models", [CONFIG, "{d}/iter_10.pth", "--models", f"GN={CONFIG},{{d}}/iter_10.pth"],
     ["--models"]),
    ("nothing to evaluate", [], ["nothing to evaluate"]),
    ("a checkpoint twice", ["--models", f"GN={CONFIG},{{d}}/iter_10.pth,{{d}}/iter_10.pth"], ["--models", "twice"]),
    ("checkpoint counts differ", ["--models", f"GN={CONFIG},{{d}}/iter_10.pth,{{d}}/iter_20.pth",
                                  f"DGN={CONFIG},{{d}}/iter_10.pth"], ["checkpoints per model differ", "GN: 2, DGN: 1"]),
    ("corruption data not a folder", [CONFIG, "{d}/iter_10.pth", "--corruption-data", "{d}/notes.txt"],
     ["--corruption-data"]),
    ("cfg-options without =", [CONFIG, "{d}/iter_10.pth", "--cfg-options", "foo"], ["--cfg-options"]),
    ("cfg-options key twice", [CONFIG, "{d}/iter_10.pth", "--cfg-options", "a=1", "a=2"], ["--cfg-options"]),
]


@pytest.mark.parametrize("argv, names", table(ROBUSTNESS))
def test_test_robustness_refuses(inputs, argv, names, capsys, monkeypatch):
    from bad_inputs import ROOT

    monkeypatch.chdir(ROOT)  # the config path is the repository's
    assert_refused(load_tool("test_robustness").main, argv, inputs, names, capsys)


TINY = ["--iters", "2", "--train-size", "16", "--test-size", "8", "--batch", "4", "--work-dir", "{d}/core"]
CORE = [
    ("a seed twice", TINY + ["--seeds", "0", "0"], ["--seeds", "seed 0 given twice"]),
    ("a negative seed", TINY + ["--seeds", "-1", "1"], ["--seeds"]),
    ("seed not a number", TINY + ["--seeds", "x"], ["--seeds"]),
    ("no iterations", TINY + ["--iters", "0"], ["--iters"]),
    ("batch 0", TINY + ["--batch", "0"], ["--batch"]),
    ("lr NaN", TINY + ["--lr", "nan"], ["--lr"]),
    ("negative lr", TINY + ["--lr", "-1"], ["--lr"]),
    ("percentile 2", TINY + ["--percentile", "2"], ["--percentile"]),
    ("no training images", TINY + ["--train-size", "0"], ["--train-size"]),
    ("no test images", TINY + ["--test-size", "0"], ["--test-size"]),
    ("regroup interval 0", TINY + ["--regroup-interval", "0"], ["--regroup-interval"]),
    ("regroup stop 1.5", TINY + ["--regroup-stop", "1.5"], ["--regroup-stop"]),
    ("regroup stop before the first regroup", TINY + ["--regroup-interval", "1", "--regroup-stop", "0"],
     ["--regroup-stop"]),
    ("work dir is a file", TINY + ["--work-dir", "{d}/notes.txt"], ["--work-dir"]),
]


@pytest.mark.parametrize("argv, names", table(CORE))
def test_demo_core_refuses(inputs, argv, names, capsys):
    demo_core = load_tool("demo_core")
    assert_refused(lambda args: run_cli(demo_core.main, args), argv, inputs, names, capsys)
    assert not (inputs / "core").exists()  # refused before any work


@pytest.mark.parametrize("gn, dgn, why", [
    ([90.0], [93.12], "one pair; a CI needs 2 or more distinct pairs"),
    ([90.0, 90.0], [93.12, 93.12], "2 pairs but all identical (the same seed twice?)"),  # --seeds 0 0 before
    ([90.0, 80.0], [93.0, 83.0], "all 2 pairs differ by exactly +3; no spread to build a CI from"),
])
def test_demo_core_table_prints_no_interval_without_two_distinct_pairs(gn, dgn, why):
    runs = [{"seed": i, "GN": {"clean_acc": a, "noisy_acc": a}, "DGN": {"clean_acc": b, "noisy_acc": b}}
            for i, (a, b) in enumerate(zip(gn, dgn))]
    rows = [line for line in load_tool("demo_core").summary_table(runs).splitlines()
            if line.startswith(("| clean", "| noisy"))]
    assert len(rows) == 2
    for row in rows:
        difference, verdict = [cell.strip() for cell in row.split("|")][4:6]
        assert "±" not in difference and verdict.startswith(f"no interval: {why}")
