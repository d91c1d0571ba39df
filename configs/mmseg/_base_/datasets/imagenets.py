# ImageNet-S semantic segmentation (LUSSeg/ImageNet-S), default subset 919.
# Layout: data/ImageNetS/ImageNetS{50,300,919}/{train-semi,train-semi-segmentation,
# validation,validation-segmentation}/<wnid>/*.{JPEG,png}; labels are RGB PNGs
# with class id R + 256 * G, 0 = "others", 1000 = ignore.
# imagenet_s: the data set, transforms and metric (and, through dgn_plugins.openmmlab,
# DGN, TokenDGN and the regroup hook); resumable: MMEngine's checkpoint types
# allow-listed, so that --resume works in MMSegmentation's own tools/train.py
# under torch >= 2.6 (torch.load(weights_only=True)).
custom_imports = dict(
    imports=['dgn_plugins.openmmlab.imagenet_s', 'dgn_plugins.openmmlab.resumable'], allow_failed_imports=False)

dataset_type = 'ImageNetSDataset'
subset = 919
data_root = 'data/ImageNetS/ImageNetS919'
crop_size = (224, 224)
ignore_index = 1000

train_pipeline = [
    # Images above 1000x1000 pixels shrink to a longer side of 1000 (the
    # benchmark's rule), their labels with them.
    dict(type='LoadImageNetSImageFromFile', downsample_large_image=True),
    dict(type='LoadImageNetSAnnotations', downsample_large_label=True),
    dict(type='RandomResize', scale=(1024, 256), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75, ignore_index=ignore_index),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageNetSImageFromFile', downsample_large_image=True),
    # Shorter side 256, as the official ImageNetSegModel evaluation.
    dict(type='Resize', scale=(1024, 256), keep_ratio=True),
    # Labels stay at full size: the metric scores at the label's resolution.
    dict(type='LoadImageNetSAnnotations', downsample_large_label=False),
    dict(
        type='PackSegInputs',
        meta_keys=('img_path', 'seg_map_path', 'ori_shape', 'img_shape', 'pad_shape', 'scale_factor', 'flip',
                   'flip_direction', 'reduce_zero_label', 'original_shape')),
]

train_dataloader = dict(
    batch_size=4,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        subset=subset,
        data_root=data_root,
        data_prefix=dict(img_path='train-semi', seg_map_path='train-semi-segmentation'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        subset=subset,
        data_root=data_root,
        data_prefix=dict(img_path='validation', seg_map_path='validation-segmentation'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader

# Reports mIoU (MMSegmentation: mean over classes present) and mIoU_official
# (the ImageNet-S evaluator: mean over all classes, absent ones as 0).
val_evaluator = dict(type='ImageNetSIoUMetric', iou_metrics=['mIoU'], ignore_index=ignore_index)
test_evaluator = val_evaluator
