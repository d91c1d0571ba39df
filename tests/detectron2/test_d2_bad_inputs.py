"""Every bad input gets one clear line (issue 23): tools/train.py on Detectron2 configs.

Rows as in tests/test_bad_inputs.py (status 2, one stderr line naming the option
or file, no traceback, inputs unchanged), through ``launch.cli`` (what
tools/train.py runs). All are refused while parsing or while Detectron2 reads the
config and its overrides, before any model is built.
"""
import shutil
from pathlib import Path

import pytest
from bad_inputs import assert_refused, make_inputs, table

pytest.importorskip("detectron2.config", reason="Detectron2 is not installed (built from source: see docs/detectron2.md)")

from d2_support import config_path  # noqa: E402

from dgn_plugins.launch import cli  # noqa: E402

DEMO = config_path("demo_mask_rcnn_dgn.yaml")


@pytest.fixture(scope="module")
def made_inputs(tmp_path_factory):
    inputs = make_inputs(tmp_path_factory.mktemp("inputs"))
    (inputs / "unknown_key.yaml").write_text("MODEL:\n  NO_SUCH_KEY: 1\n")
    (inputs / "broken_lazy.py").write_text("from detectron2.config import LazyCall as L\nmodel = L(dict)(\n")
    return inputs


@pytest.fixture
def inputs(made_inputs, tmp_path):
    return Path(shutil.copytree(made_inputs, tmp_path / "inputs"))


WORK = ["--work-dir", "{d}/../work"]
TRAIN = [
    ("missing config", ["--config-file", "{d}/nope.yaml"] + WORK, ["--config-file", "{d}/nope.yaml"]),
    ("missing config first", ["{d}/nope.yaml"] + WORK, ["--config-file", "{d}/nope.yaml"]),
    ("text file as a config", ["--config-file", "{d}/notes.txt"] + WORK, ["notes.txt"]),
    ("unknown key in the config", ["{d}/unknown_key.yaml"] + WORK, ["unknown_key.yaml", "NO_SUCH_KEY"]),
    ("LazyConfig with a syntax error", ["{d}/broken_lazy.py"] + WORK, ["broken_lazy.py"]),
    ("override of a word for a number", [DEMO, "SOLVER.MAX_ITER", "x"] + WORK, ["SOLVER.MAX_ITER"]),
    ("override of an unknown key", [DEMO, "SOLVER.MAX_ITR", "5"] + WORK, ["SOLVER.MAX_ITR"]),
    ("override without a value", [DEMO, "SOLVER.MAX_ITER"] + WORK, ["SOLVER.MAX_ITER"]),
    ("no GPUs", [DEMO, "--num-gpus", "0"] + WORK, ["--num-gpus"]),
    ("machines not a number", [DEMO, "--num-machines", "x"] + WORK, ["--num-machines"]),
    ("negative machine rank", [DEMO, "--machine-rank", "-1"] + WORK, ["--machine-rank"]),
    ("work dir is a file", [DEMO, "--work-dir", "{d}/notes.txt"], ["--work-dir"]),
]


@pytest.mark.parametrize("argv, names", table(TRAIN))
def test_train_refuses_detectron2_inputs(inputs, argv, names, capsys):
    assert_refused(cli, argv, inputs, names, capsys)
    assert not (inputs.parent / "work").exists()  # refused before the output folder was made
