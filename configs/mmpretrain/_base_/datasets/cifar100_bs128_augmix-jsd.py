# CIFAR-100 as AugMix trains on it: random crop (pad 4) and flip, then AugMix with the JSD views
# (clean, AugMix, AugMix: severity 3, width 3, depth 1-3, alpha 1); batch 128. The configs that use
# it set the head's loss to AugMixJSDLoss (and import dgn_plugins.openmmlab, which registers AugMix).
_base_ = 'mmpretrain::_base_/datasets/cifar100_bs16.py'
data_preprocessor = dict(type='MultiViewClsDataPreprocessor')  # stacks the three views along the batch
train_pipeline = [
    dict(type='RandomCrop', crop_size=32, padding=4),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='AugMix', severity=3, width=3, depth=-1, alpha=1.0, jsd=True),
    dict(type='PackInputs'),
]
train_dataloader = dict(batch_size=128, dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader
