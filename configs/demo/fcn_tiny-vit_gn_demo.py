# A tiny ViT + FCN head with GN's grouping in every norm of the ViT (TokenDGN,
# over='token': each token normalised over each group of 8 of its 64
# channels; never regrouped), trained from scratch on the demo's generated
# ImageNet-S-like shapes (./_base_/imagenets_synthetic_64px.py). The model and
# schedule are the shipped ViT-B/16 ImageNet-S recipe
# (../mmseg/_base_/fcn_vit-b16-ln_8xb32-100ep-224x224.py) shrunk: 64 px input,
# 8 px patches, 4 blocks of 64 channels, 2 heads. About a minute of CPU time
# with one torch thread. Its DGN twin is fcn_tiny-vit_dgn_demo.py.
_base_ = [
    '../mmseg/_base_/fcn_vit-b16-ln_8xb32-100ep-224x224.py',
    './_base_/imagenets_synthetic_64px.py',
]
# resumable: --resume in MMSegmentation's own tools/train.py (torch >= 2.6).
custom_imports = dict(imports=[*_base_.custom_imports.imports, 'dgn_plugins.openmmlab.resumable'])

# 8 groups of 8 channels: a regroup dissolves the top quarter, 2 groups (as
# the FCN demo's GN(8)).
norm_cfg = dict(type='TokenDGN', num_groups=8, over='token', eps=1e-6, requires_grad=True)
num_layers = 4
model = dict(
    data_preprocessor=dict(size=_base_.crop_size),
    backbone=dict(
        img_size=_base_.crop_size,
        patch_size=8,  # 8 x 8 tokens + the class token
        embed_dims=64,
        num_layers=num_layers,
        num_heads=2,
        out_indices=tuple(range(num_layers)),  # the head reads the last (in_index=3)
        norm_cfg=norm_cfg,
        init_cfg=None),  # from scratch
    decode_head=dict(in_channels=64, channels=64, num_classes=len(_base_.classes)))

# The recipe's AdamW with its lr-decay constructor, for a run from scratch:
# no layer-wise decay (1.0: nothing pretrained to keep), a higher lr for the
# small batch, and no AMP (MMEngine's AmpOptimWrapper needs a GPU).
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(lr=1e-3),
    paramwise_cfg=dict(num_layers=num_layers, decay_rate=1.0))

# The recipe's schedule shape over 20 epochs of the 240 train images (30
# iterations of 8): linear warm-up for 1 epoch, cosine to the end; one
# evaluation and one checkpoint at the end. Epoch-based, as the recipe, so
# the recipe's DefaultSampler replaces the data base's infinite one.
max_epochs = 20
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=1, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
train_dataloader = dict(sampler=_base_.vit_train_dataloader.sampler)
default_hooks = dict(checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
randomness = dict(seed=0)
