# WRN-40-2 (Zagoruyko & Komodakis) for CIFAR-100, GN with 8 channels per group
# (2-16 groups over its 16-128-channel layers; why: dgn_plugins/openmmlab/mmpretrain/backbones/wrn.py).
# dgn_plugins.openmmlab registers DGN and what MMPretrain lacks; .resumable lets its own train.py --resume
# (MMEngine's checkpoint types allow-listed for torch.load(weights_only=True)).
custom_imports = dict(imports=['dgn_plugins.openmmlab', 'dgn_plugins.openmmlab.resumable'], allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    backbone=dict(type='WideResNetCIFAR', depth=40, widen_factor=2, drop_rate=0.0,
                  norm_cfg=dict(type='GN', group_size=8, requires_grad=True)),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=100, in_channels=128,
              loss=dict(type='CrossEntropyLoss', loss_weight=1.0)))
