# FCN (MMSegmentation's fcn_r50-d8) with GroupNorm in the backbone, the decode
# head and the auxiliary head, and ImageNet-S's ignore id 1000 everywhere.
_base_ = 'mmseg::_base_/models/fcn_r50-d8.py'

norm_cfg = dict(type='GN', num_groups=32, requires_grad=True)

model = dict(
    data_preprocessor=dict(seg_pad_val=1000),  # ImageNet-S's ignore id
    # A GroupNorm-pretrained ResNet-50 (PyTorch style, the one MMDetection's GN
    # configs use): the base's ResNetV1c weights are BatchNorm ones and would
    # leave every GN layer at its initial values.
    pretrained=None,
    backbone=dict(
        type='ResNet',
        norm_cfg=norm_cfg,
        init_cfg=dict(type='Pretrained', checkpoint='open-mmlab://contrib/resnet50_gn')),
    # avg_non_ignore: the loss is a mean over labelled pixels, as PyTorch's
    # CrossEntropyLoss(ignore_index=1000) of the official fine-tuning.
    decode_head=dict(norm_cfg=norm_cfg, ignore_index=1000, loss_decode=dict(avg_non_ignore=True)),
    auxiliary_head=dict(norm_cfg=norm_cfg, ignore_index=1000, loss_decode=dict(avg_non_ignore=True)))
