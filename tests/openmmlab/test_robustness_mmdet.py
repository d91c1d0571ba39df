"""``tools/test_robustness.py`` from the command line on trained MMDetection models (GN and DGN).

Both tiny Mask R-CNNs are trained 2 iterations by a real Runner (DGN
regrouping after each), then the tool, in a process of its own, sweeps them.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from mmdet_helpers import DEMO_DGN, DEMO_GN, ROOT, TINY_SPEC, tiny_dataset, tiny_run_cfg

pytest.importorskip("mmdet", reason="mmdet is not installed")
pytest.importorskip("imagecorruptions", reason="pip install imagecorruptions-imaug==1.1.5")


def trained_model(train_tool, config, work_dir, data_root, hooks):
    """Train 2 iterations; returns the config file (with a test set) and the checkpoint."""
    cfg = tiny_run_cfg(train_tool, config, work_dir, data_root, max_iters=2)
    cfg.custom_hooks = hooks
    runner = train_tool.build_runner(cfg)
    runner.train()
    cfg.test_dataloader = dict(batch_size=2, num_workers=0, sampler=dict(type="DefaultSampler", shuffle=False),
                               dataset=tiny_dataset(data_root, "val"))
    cfg.test_evaluator = dict(type="CocoMetric", ann_file=os.path.join(data_root, "annotations", "instances_val.json"),
                              metric=["bbox", "segm"])
    cfg.test_cfg = dict(type="TestLoop")
    cfg.model.test_cfg.rcnn.score_thr = 0.0  # 2 iterations of training score low: keep every box
    path = os.path.join(work_dir, "test_config.py")
    cfg.dump(path)
    return path, os.path.join(work_dir, "iter_2.pth")


@pytest.fixture(scope="module")
def trained(train_tool, tiny_coco, tmp_path_factory):
    """{"GN": (config, checkpoint), "DGN": (config, checkpoint)}, 2 iterations each."""
    work_dir = tmp_path_factory.mktemp("robustness_mmdet")
    regroup = [dict(type="DGNRegroupHook", interval=1, stop=None)]
    return {
        "GN": trained_model(train_tool, DEMO_GN, work_dir / "gn", tiny_coco, []),
        "DGN": trained_model(train_tool, DEMO_DGN, work_dir / "dgn", tiny_coco, regroup),
    }


def test_tool_sweeps_trained_gn_and_dgn_detectors(trained, tmp_path):
    assert TINY_SPEC["num_val"] == 2
    gn, dgn = trained["GN"], trained["DGN"]
    regroups = {int(v) for k, v in torch.load(dgn[1], map_location="cpu")["state_dict"].items()
                if k.endswith("num_regroups")}
    assert regroups == {2}

    out = tmp_path / "robustness.json"
    command = [sys.executable, os.path.join(ROOT, "tools", "test_robustness.py"),
               "--models", f"GN={gn[0]},{gn[1]}", f"DGN={dgn[0]},{dgn[1]}",
               "--corruptions", "fog", "--severities", "2", "--work-dir", str(tmp_path / "work"), "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    assert "clean AP (P)" in done.stdout and "Δ DGN" in done.stdout and "fog 2" in done.stdout
    assert "Average Precision" not in done.stdout  # pycocotools' printing goes to stderr
    data = json.loads(out.read_text())
    assert [r["label"] for r in data["results"]] == ["GN", "DGN"]
    for result in data["results"]:
        assert result["task"] == "detection" and result["metric"] == "coco/bbox_mAP"
        assert "coco/segm_mAP" in result["clean"]
        (cell,) = result["cells"]
        assert (cell["corruption"], cell["severity"]) == ("fog", 2)
        assert result["summary"]["P"] == result["clean"]["coco/bbox_mAP"]
        assert result["summary"]["mPC"] == pytest.approx(cell["metrics"]["coco/bbox_mAP"])
    assert data["comparison"]["labels"] == ["GN", "DGN"]


def test_a_cell_without_detections_scores_zero_and_a_clean_set_without_any_is_refused(trained, tmp_path, caplog):
    from dgn_plugins.evaluation.robustness.openmmlab import OpenMMLabEvaluator

    config, checkpoint = trained["GN"]
    evaluator = OpenMMLabEvaluator(config, checkpoint, str(tmp_path / "work"))
    clean = evaluator.evaluate(None, 0)
    assert clean["coco/bbox_mAP_m"] == -1.0  # the tiny set's objects are all small
    # a score threshold no box passes: CocoMetric returns no metrics, as when a corruption blinds the model
    evaluator.runner.model.roi_head.test_cfg.score_thr = 1.01
    with caplog.at_level("WARNING", logger="dgn_plugins.evaluation.robustness.openmmlab"):
        blind = evaluator.evaluate("fog", 5)
    assert "fog 5: the model detected nothing" in caplog.text
    assert set(blind) == set(clean) and blind["coco/bbox_mAP"] == 0.0 and blind["coco/bbox_mAP_m"] == -1.0

    refused = OpenMMLabEvaluator(config, checkpoint, str(tmp_path / "refused"),
                                 cfg_options={"model.test_cfg.rcnn.score_thr": 1.01})
    with pytest.raises(ValueError, match="detects nothing"):
        refused.evaluate(None, 0)
    assert refused.runner.visualizer is not evaluator.runner.visualizer  # each writes into its own work_dir
