# ViT-B/16 + FCN on ImageNet-S at 224 x 224: the semi-supervised fine-tuning
# recipe MMSegmentation 0.x merged as
# configs/imagenets/fcn_mae-base_finetuned_fp16_8x32_224x224_100ep_imagenets919.py
# (LUSSeg/ImageNetSegModel's recipe; 61.6 mIoU on ImageNet-S919 val with LN
# and the MAE fine-tuned ViT-B), written for MMSegmentation 1.x. Everything the
# 0.x config set is here with its value; where 1.x needed a choice, a comment
# says which and why.
#
# The leaves add the data (./datasets/imagenets{50,300,919}.py) and the class
# count; the GN and DGN variants change only the backbone's norm_cfg (TokenDGN)
# and, for DGN, add the regroup hook.
_base_ = [
    # 0.x inherited the same two files; the FCN head keeps the settings below
    # that the recipe did not override (in_index=3: the last block;
    # concat_input=True: a 3x3 conv_cat over [features, features] with the
    # base's SyncBN, run as BN on one process).
    'mmseg::_base_/models/fcn_r50-d8.py',
    'mmseg::_base_/default_runtime.py',
]

model = dict(
    data_preprocessor=dict(size=(224, 224), seg_pad_val=1000),  # ImageNet-S's ignore id
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='VisionTransformer',
        img_size=(224, 224),
        patch_size=16,
        in_channels=3,
        embed_dims=768,
        num_layers=12,
        num_heads=12,
        mlp_ratio=4,
        out_indices=(2, 5, 8, 11),
        qkv_bias=True,
        # The patch embedding's conv has a bias in MAE / TEC / iBOT ViTs (timm's)
        # and in 0.x's VisionTransformer; 1.x added patch_bias with default False
        # (for CLIP-style ViTs), which would drop the checkpoint's bias silently.
        patch_bias=True,
        drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.1,
        with_cls_token=True,
        # The norm every variant changes: LN here (eps 1e-6, as MAE / TEC / iBOT
        # ViTs), TokenDGN in the GN and DGN variants.
        norm_cfg=dict(type='LN', eps=1e-6),
        act_cfg=dict(type='GELU'),
        norm_eval=False,
        final_norm=True,
        interpolate_mode='bicubic',
        # An MMSegmentation-format ViT-B/16 (configs/mmseg/README.md: MAE, TEC,
        # iBOT/SERE checkpoints and how to convert them). Override with
        # --cfg-options model.backbone.init_cfg.checkpoint=PATH.
        init_cfg=dict(type='Pretrained', checkpoint='pretrain/vit-base-p16_mmseg.pth')),
    decode_head=dict(
        # FCNHead with 0.x's downsample_label_ratio, which MMSegmentation 1.x dropped
        # (dgn_plugins.openmmlab.imagenet_s.ImageNetSFCNHead).
        type='ImageNetSFCNHead',
        in_channels=768,
        channels=768,
        num_convs=0,
        dropout_ratio=0.0,
        num_classes=920,  # ImageNet-S919 + "others"; the 50 / 300 leaves set theirs
        ignore_index=1000,
        # The official fine-tuning's loss, CrossEntropyLoss(ignore_index=1000): a
        # mean over labelled pixels (0.x's default averaged over all pixels;
        # AdamW barely sees the difference, a per-batch scale). Our FCN-R50
        # ImageNet-S configs do the same.
        loss_decode=dict(avg_non_ignore=True),
        # The loss on labels nearest-downsampled by 8 (28 x 28 for a 224 crop), the
        # logits resized to them: 0.x's setting, as the official code does.
        downsample_label_ratio=8,
        init_cfg=dict(type='TruncNormal', std=2e-5, override=dict(name='conv_seg'))),
    auxiliary_head=None)

# AdamW, lr 1e-4 at batch 256 (8 GPUs x 32), weight decay 0.05, layer-wise lr
# decay 0.4 over the 12 blocks. MMSegmentation 1.x's LearningRateDecayOptimizerConstructor
# refuses VisionTransformer (it knows ConvNeXt, BEiT and MAE by class name);
# ViTLearningRateDecayOptimizerConstructor (dgn_plugins.openmmlab.imagenet_s) is
# the same rule for it. Mixed precision as the recipe's fp16 = dict(loss_scale=
# 'dynamic') (AmpOptimWrapper's default loss scale): MMEngine's AmpOptimWrapper
# needs a GPU; on a CPU pass --cfg-options optim_wrapper.type=OptimWrapper.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='ViTLearningRateDecayOptimizerConstructor',
    paramwise_cfg=dict(num_layers=12, decay_rate=0.4, decay_type='layer_wise'))

# 100 epochs of train-semi, the recipe's schedule in epochs, so one base serves
# the three subsets: an epoch is ceil(images / 256) iterations at 8 x 32, i.e.
# 3600 iterations for ImageNet-S919's 9,190 images (0.x's max_iters=3600;
# its warmup_iters=180 and evaluation interval 360 are 5 and 10 epochs), 1200
# for ImageNet-S300 (3,000) and 200 for ImageNet-S50 (500). Linear warmup from
# 1e-6 x lr, then cosine to 1e-6 (0.x's CosineAnnealing, min_lr=1e-6, an
# absolute floor for every layer's group, as MMCV applied it). The cosine starts
# after the warmup, as in MMSegmentation 1.x's own configs and the official
# code; 0.x's MMCV ran it over the whole run under the warmup (the two lrs
# differ by at most 4.7% of the peak lr, around 37% of the run).
max_epochs = 100
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=True, begin=0, end=5, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=5, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=10)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # 0.x saved once, at the end; every 10 epochs (with each evaluation) lets a
    # run resume. The last two are kept.
    checkpoint=dict(type='CheckpointHook', by_epoch=True, interval=10, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
# An epoch-based loop needs an epoch-based sampler (the data base's is infinite).
vit_train_dataloader = dict(batch_size=32, sampler=dict(type='DefaultSampler', shuffle=True))
