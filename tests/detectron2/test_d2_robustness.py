"""tools/test_robustness.py on Detectron2 models: tiny DGN Mask R-CNNs trained a few iterations, real evaluators."""
import importlib.util
import json
import logging
import math
import os
import textwrap

import numpy as np
import pytest

# "detectron2.config", not "detectron2": with tests/ on sys.path this folder
# would pass for a (namespace) package named detectron2.
pytest.importorskip("detectron2.config", reason="Detectron2 is not installed (built from source: see docs/detectron2.md)")
pytest.importorskip("imagecorruptions", reason="pip install imagecorruptions-imaug==1.1.5")

import torch  # noqa: E402
from d2_support import ROOT, TINY_LAZY, config_path, detectron2_configs_dir, load_cfg, tiny_train_opts  # noqa: E402
from detectron2.data import (
    DatasetCatalog,  # noqa: E402
    detection_utils,  # noqa: E402
)
from detectron2.data import transforms as T  # noqa: E402
from detectron2.data.dataset_mapper import DatasetMapper  # noqa: E402

from dgn_plugins.detectron2 import DGNTrainer, launcher  # noqa: E402
from dgn_plugins.evaluation.robustness.corruptions import cell_seed, corrupt_image  # noqa: E402
from dgn_plugins.evaluation.robustness.detectron2 import CorruptingMapper, Detectron2Evaluator  # noqa: E402

VAL = "dgn_synthetic_coco_val"


@pytest.fixture(scope="module")
def trained(synthetic_coco_root, tmp_path_factory):
    """The DGN demo config trained 3 iterations (regroups after 1, 2, 3): its config file and final checkpoint."""
    output_dir = tmp_path_factory.mktemp("d2_robustness")
    cfg = load_cfg(config_path("demo_mask_rcnn_dgn.yaml"), tiny_train_opts(output_dir, 3, interval=1))
    cfg.freeze()
    trainer = DGNTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATASETS.TEST = (VAL,)  # the tiny schedule turned evaluation off
    config = output_dir / "trained.yaml"
    config.write_text(cfg.dump())
    return config, output_dir / "model_final.pth"


def _tool():
    spec = importlib.util.spec_from_file_location("robustness_tool", os.path.join(ROOT, "tools", "test_robustness.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tool_sweeps_a_detectron2_model_with_coco_ap(trained, tmp_path, capsys):
    config, checkpoint = trained
    out = tmp_path / "robustness.json"
    status = _tool().main([
        str(config), str(checkpoint), "--corruptions", "gaussian_noise", "--severities", "3",
        "--cfg-options", "MODEL.ROI_HEADS.SCORE_THRESH_TEST=0.0",  # an untrained model scores low: keep its boxes
        "--work-dir", str(tmp_path / "work"), "--out", str(out)])
    assert status == 0
    captured = capsys.readouterr()
    assert "clean AP (P)" in captured.out and "gaussian_noise 3" in captured.out
    assert "Average Precision" not in captured.out  # pycocotools' printing goes to stderr

    (result,) = json.loads(out.read_text())["results"]
    assert result["task"] == "detection" and result["metric"] == "bbox/AP"
    assert {"bbox/AP", "bbox/AP50", "segm/AP"} <= set(result["clean"])
    assert [(c["corruption"], c["severity"]) for c in result["cells"]] == [("gaussian_noise", 3)]
    clean, noisy = result["clean"]["bbox/AP"], result["cells"][0]["metrics"]["bbox/AP"]
    assert math.isfinite(clean) and math.isfinite(noisy)
    assert result["summary"]["P"] == clean and result["summary"]["mPC"] == pytest.approx(noisy)
    assert result["summary"]["per_corruption"] == {"gaussian_noise": pytest.approx(noisy)}
    # the corruption reached the model: its raw predictions differ from the clean ones
    predictions = [torch.load(tmp_path / "work" / "trained" / cell / VAL / "instances_predictions.pth")
                   for cell in ("clean", "gaussian_noise_3")]
    assert [p["image_id"] for p in predictions[0]] == [p["image_id"] for p in predictions[1]]
    assert any(a["instances"] != b["instances"] for a, b in zip(*predictions))


def test_mapper_corrupts_the_image_as_read_with_the_per_image_seed(trained):
    config, _ = trained
    cfg = load_cfg(str(config))
    mapper = DatasetMapper(cfg, is_train=False)
    mapper.augmentations = T.AugmentationList([])  # no resize: compare pixels directly
    record = DatasetCatalog.get(VAL)[0]
    corrupted = CorruptingMapper(mapper, "fog", 2, seed=5)(record)["image"].numpy().transpose(1, 2, 0)

    bgr = detection_utils.read_image(record["file_name"], format="BGR")
    seed = cell_seed(5, "fog", 2, os.path.basename(record["file_name"]))  # ApplyCorruption's seed
    expected = corrupt_image(np.ascontiguousarray(bgr[..., ::-1]), "fog", 2, seed)[..., ::-1]  # in RGB
    assert np.array_equal(corrupted, expected)
    assert not np.array_equal(corrupted, bgr)
    again = CorruptingMapper(mapper, "fog", 2, seed=5)(record)["image"].numpy().transpose(1, 2, 0)
    assert np.array_equal(again, corrupted)
    with pytest.raises(TypeError, match="augmentations"):
        CorruptingMapper(lambda d: d, "fog", 2)


def test_evaluator_keeps_the_checkpoint_groupings(trained, tmp_path):
    config, checkpoint = trained
    evaluator = Detectron2Evaluator(str(config), str(checkpoint), str(tmp_path))
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]
    groupings = {k: v for k, v in evaluator.model.state_dict().items() if k.endswith(".group_id")}
    assert groupings and all(torch.equal(v, saved[k]) for k, v in groupings.items())
    assert any(int(v) == 3 for k, v in saved.items() if k.endswith("num_regroups"))
    assert evaluator.task == "detection"


def test_lazy_config_sweeps_through_its_dataloader_and_evaluator(synthetic_coco_root, tmp_path):
    detectron2_configs_dir()  # skips without the model zoo's configs
    config = tmp_path / "tiny_dgn_lazy.py"
    config.write_text(textwrap.dedent(TINY_LAZY))
    launcher.main([str(config), "--work-dir", str(tmp_path / "train")])
    evaluator = Detectron2Evaluator(str(config), str(tmp_path / "train" / "model_final.pth"), str(tmp_path / "eval"),
                                    cfg_options=["model.roi_heads.box_predictor.test_score_thresh=0.0",
                                                 f"dataloader.evaluator.output_dir={tmp_path / 'eval'}"])
    clean = evaluator.evaluate(None, 0)
    clean_predictions = torch.load(tmp_path / "eval" / "instances_predictions.pth")
    noisy = evaluator.evaluate("gaussian_noise", 5)
    noisy_predictions = torch.load(tmp_path / "eval" / "instances_predictions.pth")
    assert evaluator.task == "detection" and {"bbox/AP", "segm/AP"} <= set(clean) and set(noisy) == set(clean)
    assert any(a["instances"] != b["instances"] for a, b in zip(clean_predictions, noisy_predictions))


def test_a_cell_without_predictions_scores_zero_and_a_clean_set_without_any_is_refused(trained, tmp_path):
    config, checkpoint = trained
    evaluator = Detectron2Evaluator(str(config), str(checkpoint), str(tmp_path),
                                    cfg_options=["MODEL.ROI_HEADS.SCORE_THRESH_TEST=0.0"])
    clean = evaluator.evaluate(None, 0)
    # a score threshold no box passes: COCOEvaluator's NaN, as when a corruption blinds the model
    evaluator.model.roi_heads.box_predictor.test_score_thresh = 1.01
    messages = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("dgn_plugins").addHandler(handler)  # Detectron2's loggers do not propagate
    try:
        blind = evaluator.evaluate("fog", 5)
    finally:
        logging.getLogger("dgn_plugins").removeHandler(handler)
    assert "fog_5: the model predicted nothing; its AP is 0" in messages
    assert set(blind) == set(clean) and blind["bbox/AP"] == 0.0 and blind["segm/AP"] == 0.0
    assert all(math.isnan(blind[k]) for k, v in clean.items() if math.isnan(v))  # no ground truth stays NaN

    refused = Detectron2Evaluator(str(config), str(checkpoint), str(tmp_path / "refused"),
                                  cfg_options={"MODEL.ROI_HEADS.SCORE_THRESH_TEST": 1.01})
    with pytest.raises(ValueError, match="no predictions"):
        refused.evaluate(None, 0)


@pytest.fixture(scope="module")
def colour_images(tmp_path_factory):
    """One colourful 64x80 picture written as PNG and JPEG (colour corruptions depend on the channel order)."""
    import cv2

    root = tmp_path_factory.mktemp("colour")
    rng = np.random.RandomState(0)
    bgr = (rng.rand(64, 80, 3) * 90).astype(np.uint8)
    bgr[8:40, 10:50] = (30, 60, 230)  # red in BGR
    bgr[30:60, 40:75] = (200, 120, 20)  # blue
    paths = {}
    for ext in ("png", "jpg"):
        paths[ext] = str(root / f"000007.{ext}")
        assert cv2.imwrite(paths[ext], bgr)
    return paths


@pytest.mark.parametrize("ext", ["png", "jpg"])
@pytest.mark.parametrize("corruption", ["frost", "snow", "jpeg_compression", "gaussian_noise", "fog"])
def test_both_toolkits_corrupt_an_image_file_into_the_same_pixels(colour_images, corruption, ext):
    """OpenMMLab's pipeline (LoadImageFromFile + ApplyCorruption as inserted) vs Detectron2's mapper."""
    mmcv = pytest.importorskip("mmcv", reason="the OpenMMLab side needs mmcv and mmengine")
    from mmcv.transforms import Compose

    from dgn_plugins.evaluation.robustness.openmmlab import insert_corruption

    path = colour_images[ext]
    dataset = dict(pipeline=[dict(type="LoadImageFromFile")])
    insert_corruption(dataset, corruption, 3, seed=11)
    mm_bgr = Compose(dataset["pipeline"])({"img_path": path})["img"]

    mapper = DatasetMapper(is_train=False, augmentations=[], image_format="BGR")
    record = {"file_name": path, "image_id": 7, "height": 64, "width": 80}
    d2_bgr = CorruptingMapper(mapper, corruption, 3, seed=11)(record)["image"].numpy().transpose(1, 2, 0)

    loaded = mmcv.imread(path)  # BGR, as LoadImageFromFile gives it
    assert np.array_equal(loaded, detection_utils.read_image(path, format="BGR"))  # both decode the file alike
    assert d2_bgr.shape == mm_bgr.shape == (64, 80, 3)
    assert np.array_equal(d2_bgr, mm_bgr)
    assert not np.array_equal(mm_bgr, loaded)
