"""Dumps the toolkits really write still load through the data-only allow-list.

mmdet ``tools/test.py --out x.pkl`` appends ``DumpDetResults`` to the test
evaluator; mmengine's ``DumpResults`` is what mmseg results go through. Both
pickle tensors (``torch.storage._load_from_bytes``), numpy values, bytes (RLE
``counts``) with protocol 2: the restricted loader must read them exactly as
``pickle.load`` does, and the comparison tools must score them.
"""
import os
import pickle
import pickletools

import numpy as np
import pytest
import torch
from mmdet_helpers import DEMO_GN, tiny_dataset, tiny_run_cfg

pytest.importorskip("mmdet", reason="mmdet is not installed")

from dgn_plugins.data.safe_load import load_data_file  # noqa: E402
from dgn_plugins.evaluation.compare import coco, miou  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def globals_of(path):
    names = set()
    strings = []
    for op, arg, _ in pickletools.genops(open(path, "rb").read()):
        if op.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
        elif isinstance(arg, str):
            strings.append(arg)
    return names


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b and type(a) is type(b)


def test_mmdet_test_py_out_pickle(train_tool, tiny_coco, tmp_path, capsys):
    cfg = tiny_run_cfg(train_tool, DEMO_GN, tmp_path / "work", tiny_coco, max_iters=1)
    out = tmp_path / "results.pkl"
    cfg.test_dataloader = dict(batch_size=2, num_workers=0, sampler=dict(type="DefaultSampler", shuffle=False),
                               dataset=tiny_dataset(tiny_coco, "val"))
    cfg.test_cfg = dict(type="TestLoop")
    cfg.test_evaluator = [dict(type="DumpDetResults", out_file_path=str(out))]  # what test.py --out adds
    cfg.model.test_cfg.rcnn.score_thr = 0.0  # an untrained model scores low: keep its boxes and masks
    train_tool.build_runner(cfg).test()

    used = globals_of(out)
    assert {"torch._utils._rebuild_tensor_v2", "torch.storage._load_from_bytes", "_codecs.encode"} <= used, used
    with open(out, "rb") as handle:
        reference = pickle.load(handle)
    loaded = load_data_file(out)
    assert_same(reference, loaded)
    masks = loaded[0]["pred_instances"]["masks"]
    assert masks and isinstance(masks[0]["counts"], bytes)

    gt = os.path.join(tiny_coco, "annotations", "instances_val.json")
    assert coco.main(["--gt", gt, "--results", f"GN={out}", "--format", "csv"]) == 0
    report = capsys.readouterr().out
    assert "bbox,AP," in report and "segm,AP," in report


def test_mmengine_dump_results_of_a_segmentor(tmp_path, capsys):
    pytest.importorskip("mmseg", reason="mmseg is not installed")
    from mmengine.config import Config
    from mmengine.evaluator import DumpResults, Evaluator
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from PIL import Image

    cfg = Config.fromfile(os.path.join(ROOT, "configs", "demo", "fcn_tiny_gn_demo.py"))
    with DefaultScope.overwrite_default_scope("mmseg"):
        model = MODELS.build(cfg.model).eval()
        images = [torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8) for _ in range(2)]
        samples = [SegDataSample(metainfo=dict(img_path=f"img_{i}.jpg", img_shape=(64, 64), ori_shape=(64, 64)))
                   for i in range(2)]
        with torch.no_grad():
            predictions = model.test_step(dict(inputs=images, data_samples=samples))
    out = tmp_path / "seg.pkl"
    evaluator = Evaluator([DumpResults(out_file_path=str(out))])
    evaluator.process(predictions)
    evaluator.evaluate(len(predictions))

    assert "torch.storage._load_from_bytes" in globals_of(out)
    with open(out, "rb") as handle:
        reference = pickle.load(handle)
    assert_same(reference, load_data_file(out))

    gt = tmp_path / "gt"
    gt.mkdir()
    for i in range(2):
        Image.fromarray(np.full((64, 64), i, np.uint8)).save(gt / f"img_{i}.png")
    assert miou.main(["--gt", str(gt), "--preds", f"GN={out}", "--num-classes", "5", "--format", "csv"]) == 0
    assert "mIoU (mmseg IoUMetric)" in capsys.readouterr().out
