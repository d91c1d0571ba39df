"""The generated COCO set: deterministic, consistent annotations (ground
truth scored as detections gives AP 1), and readable by mmdet's pipeline."""
import filecmp
import json
import os

import numpy as np
import pytest

from dgn_plugins.data.synthetic_coco import (
    CLASSES,
    SyntheticCocoSpec,
    annotation_path,
    generate_synthetic_coco,
)

SPEC = SyntheticCocoSpec(num_train=6, num_val=3, image_size=80, seed=5)


def test_generation_is_deterministic_and_well_formed(tmp_path):
    first = generate_synthetic_coco(str(tmp_path / "a"), SPEC)
    second = generate_synthetic_coco(str(tmp_path / "b"), SPEC)
    for split in ("train", "val"):
        assert filecmp.cmp(annotation_path(first, split), annotation_path(second, split), shallow=False)
        names = sorted(os.listdir(os.path.join(first, split)))
        assert len(names) == SPEC.count(split)
        match, mismatch, errors = filecmp.cmpfiles(os.path.join(first, split), os.path.join(second, split), names, False)
        assert not mismatch and not errors

    data = json.load(open(annotation_path(first, "train")))
    assert [c["name"] for c in data["categories"]] == list(CLASSES)
    by_image = {}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and 0 <= y and x + w <= SPEC.image_size and y + h <= SPEC.image_size
        polygon = np.array(ann["segmentation"][0]).reshape(-1, 2)
        assert len(polygon) >= 3 and 0 < ann["area"] <= w * h + 1e-6
        by_image.setdefault(ann["image_id"], []).append((x, y, x + w, y + h))
    for boxes in by_image.values():  # objects never overlap, so polygons are the visible masks
        for i, a in enumerate(boxes):
            for b in boxes[i + 1:]:
                assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_ground_truth_scores_ap_one(tmp_path):
    pytest.importorskip("pycocotools", reason="pycocotools is not installed")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    root = generate_synthetic_coco(str(tmp_path / "coco"), SPEC)
    gt = COCO(annotation_path(root, "val"))
    detections = [dict(ann, score=1.0) for ann in gt.dataset["annotations"]]
    for iou_type in ("bbox", "segm"):
        evaluator = COCOeval(gt, gt.loadRes([dict(d) for d in detections]), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        assert evaluator.stats[0] == pytest.approx(1.0)


def test_mmdet_dataset_generates_on_first_use_and_loads_masks(tmp_path):
    pytest.importorskip("mmdet", reason="mmdet is not installed")
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    from mmengine.registry import DefaultScope

    import dgn_plugins.openmmlab.synthetic_coco_dataset  # noqa: F401

    register_all_modules(init_default_scope=False)
    root = str(tmp_path / "made_on_first_use")
    with DefaultScope.overwrite_default_scope("mmdet"):
        dataset = DATASETS.build(dict(
            type="SyntheticCocoDataset", data_root=root, generator=dict(num_train=4, num_val=2, image_size=64),
            ann_file="annotations/instances_train.json", data_prefix=dict(img="train/"),
            pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True, with_mask=True)],
        ))  # fmt: skip
        sample = dataset[0]
    assert os.path.isfile(annotation_path(root, "val")) and len(dataset) == 4
    assert dataset.metainfo["classes"] == CLASSES
    masks, boxes = sample["gt_masks"].to_ndarray(), sample["gt_bboxes"].numpy()
    assert sample["img"].shape == (64, 64, 3) and len(masks) == len(boxes) > 0
    for mask, (x0, y0, x1, y1) in zip(masks, boxes):
        ys, xs = np.nonzero(mask)
        assert xs.min() >= int(x0) - 1 and xs.max() <= x1 + 1 and ys.min() >= int(y0) - 1 and ys.max() <= y1 + 1
