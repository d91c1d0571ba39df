# A tiny FCN (ResNet-18 at a quarter of the width, dilated to output stride 8)
# with GN in the backbone, the decode head and the auxiliary head, trained from
# scratch on a generated shapes set in the ImageNet-S layout
# (./_base_/imagenets_synthetic_64px.py: the data, shared with the ViT demo
# fcn_tiny-vit_gn_demo.py). About 40 s
# (GN) and 60 s (DGN) of CPU time with one torch thread; minutes of wall time
# on a busy 2-core machine. Its DGN twin is fcn_tiny_dgn_demo.py.
_base_ = [
    'mmseg::_base_/models/fcn_r50-d8.py',
    'mmseg::_base_/default_runtime.py',
    './_base_/imagenets_synthetic_64px.py',
]

# 8 groups: a regroup dissolves the top quarter, 2 groups, and reshuffles
# their channels between them (with 4 groups it could only rebuild 1 group).
norm_cfg = dict(type='GN', num_groups=8, requires_grad=True)
classes = _base_.classes
ignore_index = _base_.ignore_index
crop_size = _base_.crop_size
max_iters = 600

model = dict(
    data_preprocessor=dict(size=crop_size, seg_pad_val=ignore_index),
    pretrained=None,
    backbone=dict(
        type='ResNet',
        depth=18,
        stem_channels=16,
        base_channels=16,  # stages of 16, 32, 64, 128 channels
        norm_cfg=norm_cfg,
        init_cfg=None),
    decode_head=dict(
        in_channels=128,
        channels=64,
        num_classes=len(classes),
        norm_cfg=norm_cfg,
        ignore_index=ignore_index,
        loss_decode=dict(avg_non_ignore=True)),
    auxiliary_head=dict(
        in_channels=64,
        channels=32,
        num_classes=len(classes),
        norm_cfg=norm_cfg,
        ignore_index=ignore_index,
        loss_decode=dict(avg_non_ignore=True)))

# schedule: AdamW with a linear warm-up, then poly decay; one evaluation at the end
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(type='AdamW', lr=3e-3, weight_decay=1e-4))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=50),
    dict(type='PolyLR', eta_min=1e-5, power=0.9, by_epoch=False, begin=50, end=max_iters),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
randomness = dict(seed=0)
