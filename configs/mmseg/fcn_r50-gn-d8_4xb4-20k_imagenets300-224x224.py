# FCN, ResNet-50 (dilated, output stride 8) with GroupNorm everywhere, on
# ImageNet-S300 (train-semi -> validation), 4 GPUs x 4 images of 224x224.
# 20000 iterations at batch 16 are about 100 epochs of train-semi (the official
# semi-supervised fine-tuning runs 100 epochs). DGN twin: fcn_r50-dgn-d8_4xb4-20k_imagenets300-224x224.py
_base_ = [
    './_base_/models/fcn_r50-gn-d8.py',
    './_base_/datasets/imagenets300.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_20k.py',
]
crop_size = (224, 224)
num_classes = 301  # 300 categories + "others"
max_iters = 20000

model = dict(
    data_preprocessor=dict(size=crop_size),
    decode_head=dict(num_classes=num_classes),
    auxiliary_head=dict(num_classes=num_classes))

param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=max_iters, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=4000)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=4000))
