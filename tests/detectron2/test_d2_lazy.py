"""DGN in LazyConfigs: the shipped example, the norm factory in every slot, train.dgn_regroup."""
import json
import textwrap

import numpy as np
import pytest

# "detectron2.config", not "detectron2": with tests/ on sys.path this folder
# would pass for a (namespace) package named detectron2.
pytest.importorskip("detectron2.config", reason="Detectron2 is not installed (built from source: see docs/detectron2.md)")

import torch  # noqa: E402
from d2_support import TINY_LAZY, config_path, detectron2_configs_dir, dgn_modules  # noqa: E402
from detectron2.config import LazyCall as L  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch import nn  # noqa: E402

from dgn_plugins import DynamicGroupNorm  # noqa: E402
from dgn_plugins.detectron2 import DGNNorm, DGNRegroupHook, launcher  # noqa: E402
from dgn_plugins.detectron2.lazy import regroup_hook_from_lazy  # noqa: E402

EXAMPLE = config_path("mask_rcnn_R_50_FPN_dgn_lazy.py")
NORM_SLOTS = (
    "model.backbone.bottom_up.stem.norm",
    "model.backbone.bottom_up.stages.norm",
    "model.backbone.norm",
    "model.roi_heads.box_head.conv_norm",
    "model.roi_heads.mask_head.conv_norm",
)


@pytest.fixture(scope="module")
def example():
    detectron2_configs_dir()  # skips when the model zoo's configs are not installed
    return LazyConfig.load(EXAMPLE)


def test_example_puts_dgn_in_every_norm_slot_and_asks_for_the_hook(example, tmp_path):
    for slot in NORM_SLOTS:
        assert isinstance(instantiate(OmegaConf.select(example, slot)), DGNNorm), slot
    hook = regroup_hook_from_lazy(example)
    assert isinstance(hook, DGNRegroupHook) and (hook.schedule.interval, hook.schedule.stop) == (0.1, 0.9)  # the study's
    LazyConfig.save(example, str(tmp_path / "config.yaml"))
    assert not (tmp_path / "config.yaml.pkl").exists()  # plain YAML, no cloudpickle fallback
    reloaded = LazyConfig.load(str(tmp_path / "config.yaml"))
    assert isinstance(instantiate(reloaded.model.backbone.norm), DGNNorm)


def test_example_model_has_dgn_everywhere_the_baseline_had_a_norm(example):
    model = instantiate(example.model)
    norm_types = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm)
    norms = {n: m for n, m in model.named_modules() if isinstance(m, norm_types)}
    assert norms and all(isinstance(m, DynamicGroupNorm) for m in norms.values())
    names = list(norms)
    for part in ("bottom_up.stem", "bottom_up.res2", "bottom_up.res5", "fpn_lateral2", "fpn_output5",
                 "box_head.conv4", "mask_head.mask_fcn4"):
        assert any(part in name for name in names), part


def test_example_training_mapper_crops_polygon_masks(example, synthetic_coco_root):
    """The example's large-scale jitter (ResizeScale, FixedSizeCrop, RandomFlip) on a record with polygon
    masks: fvcore's CropTransform crops polygons with shapely, which Detectron2 does not install."""
    from detectron2.data import DatasetCatalog

    mapper = instantiate(example.dataloader.train.mapper)
    assert any(type(a).__name__ == "FixedSizeCrop" for a in mapper.augmentations.augs)
    record = next(r for r in DatasetCatalog.get("dgn_synthetic_coco_train") if r["annotations"])
    assert all(isinstance(a["segmentation"], list) for a in record["annotations"])  # polygons
    np.random.seed(0)
    for _ in range(4):  # scaled up (cropped) and down (padded)
        out = mapper(dict(record))
        assert tuple(out["image"].shape) == (3, 1024, 1024)
        instances = out["instances"]
        assert len(instances) <= len(record["annotations"])
        assert type(instances.gt_masks).__name__ == "PolygonMasks"
        assert torch.equal(instances.gt_boxes.tensor, instances.gt_masks.get_bounding_boxes().tensor)  # recomputed


def test_regroup_entry_forms():
    def cfg(entry):
        return OmegaConf.create({"train": {"dgn_regroup": entry}}, flags={"allow_objects": True})

    assert regroup_hook_from_lazy(OmegaConf.create({"train": {}})) is None
    assert regroup_hook_from_lazy(cfg(None)) is None
    assert regroup_hook_from_lazy(cfg({"interval": 0})) is None
    hook = regroup_hook_from_lazy(cfg({"interval": 5, "start": 10, "stop": 50}))
    assert (hook.schedule.interval, hook.schedule.start, hook.schedule.stop) == (5, 10, 50)
    assert regroup_hook_from_lazy(cfg(L(DGNRegroupHook)(interval=7))).schedule.interval == 7
    with pytest.raises(TypeError):
        regroup_hook_from_lazy(cfg(L(DGNNorm)(num_groups=4)))


def test_lazy_config_trains_and_evaluates_through_the_launcher(synthetic_coco_root, tmp_path):
    detectron2_configs_dir()
    path = tmp_path / "tiny_dgn_lazy.py"
    path.write_text(textwrap.dedent(TINY_LAZY))
    output_dir = tmp_path / "out"
    results = launcher.main([str(path), "--work-dir", str(output_dir)])  # train.device cuda -> cpu
    assert set(results) >= {"bbox", "segm"}  # dataloader.evaluator (COCOEvaluator) ran after training
    final = torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["trainer"]["hooks"]["DGNRegroupHook"]["schedule"]["last_regroup_step"] == 2
    regroups = {int(v) for k, v in final["model"].items() if k.endswith("num_regroups")}
    assert regroups == {2}
    assert (output_dir / "config.yaml").exists()
    records = [json.loads(line) for line in (output_dir / "dgn_groups.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]  # train.dgn_regroup's default records file
    assert all(records[-1]["group_id"][k[: -len(".group_id")]] == v.tolist()
               for k, v in final["model"].items() if k.endswith(".group_id"))

    model = instantiate(LazyConfig.load(str(output_dir / "config.yaml")).model)
    assert len(dgn_modules(model)) == sum(k.endswith("num_regroups") for k in final["model"])


def test_infeasible_dgn_norm_options_name_the_layer_and_the_slot(example):
    from dgn_plugins.detectron2 import lazy
    from dgn_plugins.grouping import DGNOptionError

    cfg = LazyConfig.load(EXAMPLE)
    cfg.model.backbone.norm.group_size = 5  # FPN: 256 channels cannot form 51 groups of 4 to 5
    cfg.model.backbone.norm.alpha = 0.05
    cfg.train.device = "cpu"
    with pytest.raises(DGNOptionError) as info:
        lazy.build_model(cfg)
    message = str(info.value)
    assert message.startswith("layer backbone.fpn_lateral2.norm: DGN layer with C=256 channels (group_size=5")
    assert "raise alpha to >= " in message and "(set in the L(DGNNorm) options of " in message
    assert "model.backbone.norm" in message
