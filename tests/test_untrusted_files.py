"""Result files and checkpoints from elsewhere run no code in our tools.

Each malicious file's ``__reduce__`` would write a marker file when unpickled
by a plain ``pickle.load`` / ``torch.load(weights_only=False)``. The tools
must refuse it with one line on stderr, exit status 2, and no marker.
"""
import importlib.util
import io
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dgn_plugins.data.safe_load import UnsafeFileError, load_data_file
from dgn_plugins.evaluation.compare import coco, miou

ROOT = Path(__file__).resolve().parent.parent


class WritesAFile:
    """Unpickling calls ``exec`` on code that writes ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


def legacy_torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=False)
    return buffer.getvalue()


class TensorWithEvilStorage:
    """Pickles like a tensor whose storage bytes are a malicious legacy torch archive:
    the path ``torch.storage._load_from_bytes`` -> ``torch.load(weights_only=False)``."""

    def __init__(self, marker):
        self.payload = legacy_torch_bytes(WritesAFile(marker))

    def __reduce__(self):
        from torch.storage import _load_from_bytes

        return _load_from_bytes, (self.payload,)


def malicious_files(tmp_path, marker):
    """name -> path of every kind of malicious file."""
    evil = [{"img_id": 1, "pred_instances": {"bboxes": WritesAFile(marker)}}]
    files = {}
    for protocol in (2, 5):
        files[f"pickle-p{protocol}"] = tmp_path / f"results_p{protocol}.pkl"
        files[f"pickle-p{protocol}"].write_bytes(pickle.dumps(evil, protocol=protocol))
    files["torch-zip"] = tmp_path / "instances_predictions.pth"
    torch.save(evil, files["torch-zip"])
    files["torch-legacy"] = tmp_path / "legacy.pth"
    files["torch-legacy"].write_bytes(legacy_torch_bytes(evil))
    files["tensor-storage"] = tmp_path / "storage.pkl"
    files["tensor-storage"].write_bytes(pickle.dumps([{"x": TensorWithEvilStorage(marker)}], protocol=2))
    files["pickle-named-json"] = tmp_path / "instances_val.json"
    files["pickle-named-json"].write_bytes(pickle.dumps(evil, protocol=2))
    return files


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "RAN"
    yield path


def test_the_files_are_malicious(tmp_path, marker):
    """Loaded the unsafe way each file runs its code: the checks below are not vacuous."""
    for name, path in malicious_files(tmp_path, marker).items():
        if name.startswith("torch"):
            torch.load(path, weights_only=False)
        else:
            try:
                pickle.loads(path.read_bytes())
            except Exception:
                pass
        assert marker.exists(), name
        marker.unlink()


def test_loader_refuses_every_kind(tmp_path, marker):
    for name, path in malicious_files(tmp_path, marker).items():
        with pytest.raises(UnsafeFileError, match=r"references builtins\.exec|references torch"):
            load_data_file(path)
        assert not marker.exists(), name


def _one_error_line(err: str, *words):
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and all(word in lines[0] for word in words), lines[0]


def _gt(tmp_path):
    gt = {"images": [{"id": 1, "width": 8, "height": 8}], "annotations": [],
          "categories": [{"id": 1, "name": "a"}]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    return path


def test_compare_coco_results_and_gt(tmp_path, marker, capsys):
    files = malicious_files(tmp_path, marker)
    gt = _gt(tmp_path)
    for name, path in files.items():
        assert coco.main(["--gt", str(gt), "--results", f"X={path}"]) == 2, name
        _one_error_line(capsys.readouterr().err, "error:", path.name)
        assert coco.main(["--gt", str(path), "--results", f"X={gt}"]) == 2, name
        _one_error_line(capsys.readouterr().err, "error:", path.name)
        assert not marker.exists(), name


def test_json_that_is_not_coco(tmp_path, capsys):
    gt = _gt(tmp_path)
    for text in ('{"images": []}', '[{"a": 1}]', '{"images": [], "annotations": [], "categories": 5',
                 '{"__class__": "os.system", "args": ["touch x"]}'):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        assert coco.main(["--gt", str(bad), "--results", f"X={gt}"]) == 2
        _one_error_line(capsys.readouterr().err, "error:", "bad.json")
        assert coco.main(["--gt", str(gt), "--results", f"X={bad}"]) == 2
        _one_error_line(capsys.readouterr().err, "error:", "bad.json")


def test_compare_miou_preds(tmp_path, marker, capsys):
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(gt_dir / "a.png")
    for name, path in malicious_files(tmp_path, marker).items():
        assert miou.main(["--gt", str(gt_dir), "--preds", f"X={path}", "--num-classes", "2"]) == 2, name
        _one_error_line(capsys.readouterr().err, "error:", path.name)
        assert not marker.exists(), name


def _plot_groups():
    spec = importlib.util.spec_from_file_location("plot_groups_tool", ROOT / "tools" / "plot_groups.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plot_groups_checkpoints(tmp_path, marker, capsys):
    tool = _plot_groups()
    for name, path in malicious_files(tmp_path, marker).items():
        assert tool.main(["--checkpoints", str(path), "--out", str(tmp_path / "x.png")]) == 2, name
        _one_error_line(capsys.readouterr().err, "error:", path.name)
        assert not marker.exists(), name
    checkpoint = tmp_path / "iter_1.pth"
    torch.save({"state_dict": {"norm.weight": torch.ones(2)}, "meta": {"args": WritesAFile(marker)}}, checkpoint)
    assert tool.main(["--checkpoints", str(checkpoint), "--out", str(tmp_path / "x.png")]) == 2
    _one_error_line(capsys.readouterr().err, "refused", "builtins.exec")
    assert not marker.exists() and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("tool", ["compare_coco", "plot_groups"])
def test_scripts_print_one_line(tmp_path, marker, tool):
    path = malicious_files(tmp_path, marker)["torch-zip"]
    args = (["--gt", str(_gt(tmp_path)), "--results", str(path)] if tool == "compare_coco"
            else ["--checkpoints", str(path), "--out", str(tmp_path / "x.png")])
    done = subprocess.run([sys.executable, str(ROOT / "tools" / f"{tool}.py"), *args],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    _one_error_line(done.stderr, "error:", "refused", "builtins.exec")
    assert not marker.exists()


class _Box:
    def size(self):
        return 1


def _box_attribute(owner, name):
    """The extra global this test allows for getattr: attributes of _Box only."""
    if owner is not _Box:
        raise pickle.UnpicklingError(f"getattr on {owner!r}")
    return getattr(owner, name)


def test_extra_globals_match_python2_names_of_protocol_2():
    """torch 2.1 saves with pickle protocol 2, which writes a class's method as __builtin__.getattr(cls, name)
    (MMEngine's HistoryBuffer.min in every checkpoint): an allowed (callable, "builtins.getattr") must match it."""
    from dgn_plugins.data.safe_load import _restricted_pickle_module

    data = pickle.dumps({"method": _Box.size}, protocol=2)
    allowed = _restricted_pickle_module([_Box, (_box_attribute, "builtins.getattr")])
    assert allowed.Unpickler(io.BytesIO(data)).load() == {"method": _Box.size}
    with pytest.raises(UnsafeFileError, match=r"builtins\.getattr"):
        _restricted_pickle_module([]).Unpickler(io.BytesIO(data)).load()
