"""The ``train_net.py`` recipe of docs/detectron2.md, run as written: DGN, regroups, and their log lines."""
import logging
import os
import re

import pytest

pytest.importorskip("detectron2.config", reason="Detectron2 is not installed (built from source: see docs/detectron2.md)")

from d2_support import ROOT, config_path, dgn_modules, tiny_train_opts  # noqa: E402

from dgn_plugins.detectron2 import DGNRegroupHook  # noqa: E402


def recipe() -> dict:
    """The namespace of the doc's ``# train_net.py recipe`` block."""
    with open(os.path.join(ROOT, "docs", "detectron2.md")) as f:
        blocks = re.findall(r"```python\n(# train_net.py recipe\n.*?)```", f.read(), re.S)
    assert len(blocks) == 1
    namespace = {}
    exec(compile(blocks[0], "docs/detectron2.md", "exec"), namespace)
    return namespace


def test_recipe_trains_dgn_and_logs_each_regroup(synthetic_coco_root, tmp_path, monkeypatch):
    # As in a fresh process: no handlers on our logger yet (another test may have set them up).
    monkeypatch.setattr(logging.getLogger("dgn_plugins"), "handlers", [])
    namespace = recipe()
    output = tmp_path / "out"
    cfg = namespace["setup"](config_path("demo_mask_rcnn_dgn.yaml"),
                             ["MODEL.DEVICE", "cpu", *tiny_train_opts(output, 2, interval=1)])
    trainer = namespace["Trainer"](cfg)
    assert dgn_modules(trainer.model)
    assert sum(isinstance(h, DGNRegroupHook) for h in trainer._hooks) == 1
    trainer.resume_or_load(resume=False)
    trainer.train()
    log = (output / "log.txt").read_text()
    assert "DGN regroup #1 after iter 1" in log and "DGN regroup #2 after iter 2" in log
    assert (output / "dgn_groups.jsonl").is_file()
