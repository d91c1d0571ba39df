"""What every tool owes a bad input (issue 23), and the small inputs the tables use.

Each row of a tool's table is an argv with one thing wrong. :func:`assert_refused`
runs it through the tool's ``main`` and checks the contract: exit status 2, one
line on stderr naming the option or file at fault, no traceback, and every input
file byte for byte as before. ``{d}`` in an argv is the folder
:func:`make_inputs` filled.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def digests(root) -> dict:
    """sha256 of every file under ``root``, by relative path."""
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_refused(run, argv, inputs, names, capsys) -> str:
    """``run(argv)`` (a ``main``) refuses: status 2, one stderr line naming one of ``names``,
    no traceback, nothing under ``inputs`` changed; returns the line."""
    argv = [str(a).format(d=inputs) for a in argv]
    before = digests(inputs)
    capsys.readouterr()
    status = run(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert status == 2, (status, err)
    assert len(lines) == 1, err
    wanted = [str(name).format(d=inputs) for name in names]
    assert any(name in lines[0] for name in wanted), (wanted, lines[0])
    assert digests(inputs) == before, "an input changed"
    return lines[0]


def table(rows):
    """``pytest.mark.parametrize`` arguments from ``(id, argv, names)`` rows."""
    import pytest

    return [pytest.param(argv, names, id=name) for name, argv, names in rows]


# ------------------------------------------------------------------ inputs
def _coco(d: Path) -> None:
    images = [{"id": i, "width": 64, "height": 64, "file_name": f"{i}.jpg"} for i in (1, 2, 3)]
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400,
                    "iscrowd": 0, "segmentation": [[10, 10, 30, 10, 30, 30, 10, 30]]} for i in (1, 2, 3)]
    (d / "gt.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                           "categories": [{"id": 1, "name": "a"}]}))
    results = [{"image_id": i, "category_id": 1, "bbox": [11, 11, 20, 20], "score": 0.9} for i in (1, 2, 3)]
    (d / "gn.json").write_text(json.dumps(results))
    (d / "dgn.json").write_text(json.dumps([dict(r, bbox=[12, 10, 19, 21]) for r in results]))
    broken = {"nan_box": ("bbox", [math.nan] * 4), "inf_box": ("bbox", [1, 2, math.inf, 3]),
              "negative_box": ("bbox", [10, 10, -5, 20]), "short_box": ("bbox", [10, 10, 20]),
              "text_box": ("bbox", "x"), "nan_score": ("score", math.nan), "inf_score": ("score", math.inf),
              "text_score": ("score", "high")}
    for name, (key, value) in broken.items():
        (d / f"{name}.json").write_text(json.dumps([dict(results[0], **{key: value})] + results[1:]))
    import torch

    samples = [{"img_id": i, "pred_instances": {"bboxes": torch.tensor([[11.0, 11.0, 31.0, 31.0]]),
                                                "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}}
               for i in (1, 2, 3)]
    samples[1]["pred_instances"]["bboxes"] = torch.tensor([[31.0, 11.0, 11.0, 31.0]])  # x2 < x1
    (d / "flipped.pkl").write_bytes(pickle.dumps(samples))
    (d / "empty.json").write_text("")
    (d / "notes.txt").write_text("not a checkpoint\n")
    (d / "folder").mkdir()


def _segmentation(d: Path) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("gt", "gn", "dgn"):
        (d / "seg" / name).mkdir(parents=True)
    for k in range(2):
        label = rng.integers(0, 3, (8, 8)).astype(np.uint8)
        for name in ("gt", "gn", "dgn"):
            Image.fromarray(label).save(d / "seg" / name / f"im{k}.png")
    (d / "seg" / "classes.txt").write_text("a\nb\nc\n")


def _records_and_checkpoints(d: Path) -> None:
    import torch
    from torch import nn

    from dgn_plugins import convert_gn_to_dgn, dgn_layers, regroup_model

    torch.manual_seed(0)
    model = convert_gn_to_dgn(nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16)),
                              percentile=0.25, n_init=2)
    records = []
    for step in (10, 20, 30):
        model(torch.randn(8, 3, 8, 8) * torch.linspace(0.1, 3, 3).view(1, 3, 1, 1) * step + step)
        reports = regroup_model(model)
        records.append({"step": step, "group_id": {n: layer.group_id.tolist() for n, layer in dgn_layers(model)},
                        "reports": [r.as_dict() for r in reports]})
        torch.save({"state_dict": model.state_dict(), "meta": {"iter": step}}, d / f"iter_{step}.pth")
    lines = [json.dumps(r) for r in records]
    (d / "records.jsonl").write_text("\n".join(lines) + "\n")

    def variant(name, change):
        second = json.loads(lines[1])
        change(second)
        (d / f"{name}.jsonl").write_text(lines[0] + "\n" + json.dumps(second) + "\n")

    variant("id_beyond_k", lambda r: r["group_id"]["1"].__setitem__(0, 99))
    variant("negative_id", lambda r: r["group_id"]["1"].__setitem__(0, -1))
    variant("fewer_channels", lambda r: r["group_id"].__setitem__("1", r["group_id"]["1"][:8]))
    variant("fractional_step", lambda r: r.__setitem__("step", 12.5))
    variant("step_back", lambda r: r.__setitem__("step", 5))
    (d / "broken_middle.jsonl").write_text(lines[0] + "\n{not json\n" + lines[1] + "\n")
    (d / "not_records.jsonl").write_text("[1, 2]\n")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["1.group_id"][0] = 77
    torch.save({"state_dict": state, "meta": {"iter": 40}}, d / "id_beyond_k.pth")


def make_inputs(root) -> Path:
    """Every input the tables point at, in ``root``."""
    d = Path(root)
    _coco(d)
    _segmentation(d)
    _records_and_checkpoints(d)
    return d


def load_tool(name: str):
    """A script in tools/ as a module (their names clash with test modules)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"{name}_tool", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
