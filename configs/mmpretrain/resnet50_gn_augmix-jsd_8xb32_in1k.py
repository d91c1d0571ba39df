# The poster's ImageNet-C row "ResNet-50 A" with GN: its plain recipe plus AugMix + JSD (the three views
# stacked along the batch; the head's loss cross-entropy on the clean view + 12 x JSD).
_base_ = './resnet50_gn_8xb32_in1k.py'
data_preprocessor = dict(type='MultiViewClsDataPreprocessor')
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='AugMix', severity=3, width=3, depth=-1, alpha=1.0, jsd=True),
    dict(type='PackInputs'),
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
model = dict(head=dict(loss=dict(_delete_=True, type='AugMixJSDLoss', views=3, jsd_weight=12.0)))
