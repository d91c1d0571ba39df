"""Helpers for the MMDetection tests: paths, a tiny data set, few-iteration runs.

Everything toolkit-related is imported inside the helpers, so a machine
without mmdet still collects the test modules (and skips them with a reason).
Not a conftest: test modules import it by name (pytest puts this folder on
``sys.path``), which two conftest.py files would make ambiguous.
"""
import os
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = os.path.join(ROOT, "tools")
DEMO_GN = os.path.join(ROOT, "configs", "demo", "mask-rcnn_tiny_gn_demo.py")
DEMO_DGN = os.path.join(ROOT, "configs", "demo", "mask-rcnn_tiny_dgn_demo.py")
MMDET_DGN_CONFIGS = [
    os.path.join(ROOT, "configs", "mmdet", name)
    for name in (
        "mask-rcnn_r50_fpn_dgn-all_2x_coco.py",
        "mask-rcnn_r50_fpn_dgn-all_3x_coco.py",
        "mask-rcnn_r101_fpn_dgn-all_2x_coco.py",
        "mask-rcnn_r101_fpn_dgn-all_3x_coco.py",
    )
]

#: 4 train / 2 val images of 64 px: enough for a few real iterations.
TINY_SPEC = dict(num_train=4, num_val=2, image_size=64, max_objects=2, min_object_size=16, max_object_size=30, seed=3)


def import_train_tool():
    """What tools/train.py runs: :mod:`dgn_plugins.openmmlab.launcher`."""
    from dgn_plugins.openmmlab import launcher

    return launcher


def demo_gn_state_dict():
    """The GN demo Mask R-CNN's weights, as its training would save them (norms named gn1, ...)."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.registry import DefaultScope

    register_all_modules(init_default_scope=False)
    with DefaultScope.overwrite_default_scope("mmdet"):
        return MODELS.build(Config.fromfile(DEMO_GN).model).state_dict()


def tiny_dataset(data_root, split="train"):
    """A SyntheticCocoDataset config over ``data_root`` with a 64 px pipeline."""
    import dgn_plugins.openmmlab.synthetic_coco_dataset  # noqa: F401  (registers the dataset)

    pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
        dict(type="Resize", scale=(64, 64), keep_ratio=True),
        dict(type="PackDetInputs"),
    ]
    return dict(
        type="SyntheticCocoDataset",
        data_root=data_root,
        generator=TINY_SPEC,
        ann_file=f"annotations/instances_{split}.json",
        data_prefix=dict(img=f"{split}/"),
        filter_cfg=dict(filter_empty_gt=True) if split == "train" else None,
        test_mode=split != "train",
        pipeline=pipeline,
    )


def tiny_run_cfg(train_tool, config, work_dir, data_root, *, max_iters=2, checkpoint_interval=None, cfg_options=None,
                 extra_args=()):
    """A config file turned into a few-iteration, iteration-based CPU run.

    Validation is off, batches hold 2 images of 64 px, every iteration is
    logged, and the experiment (and visualizer) name is unique so several
    runners can live in one test process.
    """
    from mmengine.config import ConfigDict

    argv = [config, "--work-dir", str(work_dir), *extra_args]
    if cfg_options:
        argv += ["--cfg-options", *[f"{k}={v}" for k, v in cfg_options.items()]]
    cfg = train_tool.load_config(train_tool.parse_args(argv))
    cfg.experiment_name = f"{os.path.basename(config)}-{uuid.uuid4().hex[:8]}"
    # The toolkits name their visualizer 'visualizer': a later runner in the
    # same process would get the first one back, writing into its work_dir.
    cfg.visualizer.name = cfg.experiment_name
    cfg.train_cfg = ConfigDict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=10**6)
    cfg.train_dataloader = ConfigDict(
        batch_size=2,
        num_workers=0,
        persistent_workers=False,
        sampler=dict(type="DefaultSampler", shuffle=True),
        dataset=tiny_dataset(data_root),
    )
    for key in ("val_dataloader", "val_cfg", "val_evaluator", "test_dataloader", "test_cfg", "test_evaluator"):
        cfg[key] = None
    cfg.param_scheduler = [dict(type="MultiStepLR", by_epoch=False, milestones=[max_iters], gamma=0.1)]
    cfg.default_hooks.logger = dict(type="LoggerHook", interval=1)
    cfg.default_hooks.checkpoint = dict(
        type="CheckpointHook", by_epoch=False, interval=checkpoint_interval or max_iters, max_keep_ckpts=-1
    )
    cfg.log_processor = dict(type="LogProcessor", window_size=1, by_epoch=False)
    cfg.randomness = dict(seed=0)
    return cfg


def shrink_mask_rcnn(cfg):
    """Fewer proposals and sampled RoIs, and no pretrained download, for
    the full-size mmdet configs; the architecture is unchanged."""
    cfg.model.backbone.init_cfg = None
    cfg.model.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=50)
    cfg.model.train_cfg.rcnn.sampler.num = 32
    cfg.model.test_cfg.rpn.update(nms_pre=200, max_per_img=50)
    return cfg
