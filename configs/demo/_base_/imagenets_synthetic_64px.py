# The demo's data: a generated shapes set in the ImageNet-S layout
# (dgn_plugins/data/synthetic_seg.py: 64 px images, "others" + 4 shape
# classes, RGB labels R + 256 * G with ignore = 1000, 240 train / 80 val, made
# on first use). It runs the ImageNet-S code path: ImageNetSDataset,
# LoadImageNetS{ImageFromFile,Annotations}, ImageNetSIoUMetric. Data only (no
# model, schedule or runtime), so that a demo can inherit it next to a model
# base: fcn_tiny_gn_demo.py (CNN) and fcn_tiny-vit_gn_demo.py (ViT) do.
custom_imports = dict(imports=['dgn_plugins.openmmlab.imagenet_s'], allow_failed_imports=False)

classes = ('others', 'circle', 'square', 'triangle', 'cross')
ignore_index = 1000
image_size = 64
crop_size = (image_size, image_size)

# data: generated under data_root on first use (generate_if_missing)
dataset_type = 'ImageNetSDataset'
data_root = 'data/generated/imagenets_synthetic'
train_pipeline = [
    dict(type='LoadImageNetSImageFromFile'),
    dict(type='LoadImageNetSAnnotations', downsample_large_label=True),
    dict(type='RandomResize', scale=crop_size, ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75, ignore_index=ignore_index),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageNetSImageFromFile'),
    dict(type='LoadImageNetSAnnotations'),
    dict(type='PackSegInputs'),
]
# num_workers=0: on 2 cores a loader process makes torch's two threads wait
# on each other (several times slower); loading 64 px images costs little.
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        subset=None,
        metainfo=dict(classes=classes),
        generate_if_missing=True,
        data_root=data_root,
        data_prefix=dict(img_path='train-semi', seg_map_path='train-semi-segmentation'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        subset=None,
        metainfo=dict(classes=classes),
        generate_if_missing=True,
        data_root=data_root,
        data_prefix=dict(img_path='validation', seg_map_path='validation-segmentation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='ImageNetSIoUMetric', iou_metrics=['mIoU'], ignore_index=ignore_index)
test_evaluator = val_evaluator
