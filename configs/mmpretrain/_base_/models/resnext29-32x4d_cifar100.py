# ResNeXt-29 (Xie et al.) with AugMix's settings, cardinality 4 and base width 32, for CIFAR-100;
# GN with Wu & He's 32 groups (its layers have 64-1024 channels).
# dgn_plugins.openmmlab registers DGN and what MMPretrain lacks; .resumable lets its own train.py --resume
# (MMEngine's checkpoint types allow-listed for torch.load(weights_only=True)).
custom_imports = dict(imports=['dgn_plugins.openmmlab', 'dgn_plugins.openmmlab.resumable'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    backbone=dict(type='ResNeXtCIFAR', depth=29, cardinality=4, base_width=32,
                  norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=100, in_channels=1024,
              loss=dict(type='CrossEntropyLoss', loss_weight=1.0)))
