# ViTDet Mask R-CNN, ViT-B, with DGN in the ViT backbone: detectron2's
# projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py (MAE-pretrained ViT-B,
# simple feature pyramid, 100 epochs with large-scale jitter) with its backbone's
# `norm_layer` (partial(nn.LayerNorm, eps=1e-6)) set to TokenDGN: a grouped
# LayerNorm over each token's channels (over="token"), starting from 32 contiguous
# groups and regrouped every 10% of the run, none in its last 10% (the study's
# schedule, bench/RESULTS.md), via `train.dgn_regroup`, which our launcher reads:
#   python -m dgn_plugins.detectron2.launcher --config-file configs/detectron2/mask_rcnn_vitdet_b_dgn_lazy.py --num-gpus 8
#
# The model is the installed model zoo's common/models/mask_rcnn_vitdet.py; the
# ViTDet project's files (its schedule, optimizer and LSJ loader) are not
# installed with Detectron2, so the ~20 lines of them this config needs are
# restated below as they are there.
#
# Not DGN: the simple feature pyramid and the box/mask heads keep ViTDet's "LN"
# (detectron2.layers.LayerNorm: each pixel over its channels, channels first).
# They are trained from scratch, and DGN's channels-first layer would make them
# GN (each sample over its group's channels x all pixels), another model than
# ViTDet's, not the same normalisation with moving groups. To have DGN there too:
#   model.backbone.norm = model.roi_heads.box_head.conv_norm = \
#       model.roi_heads.mask_head.conv_norm = L(DGNNorm)(num_groups=32)
#
# The MAE checkpoint (`train.init_checkpoint`, LayerNorm) loads into the TokenDGN
# layers: they carry LayerNorm's names and shapes (norm1, norm2: weight, bias),
# and start from GN's grouping.
from functools import partial

import detectron2.data.transforms as T
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone.vit import get_vit_lr_decay_rate
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from dgn_plugins.detectron2 import DGNRegroupHook, TokenDGNNorm

model = model_zoo.get_config("common/models/mask_rcnn_vitdet.py").model
# The one change to ViTDet's model: TokenDGN in place of nn.LayerNorm(eps=1e-6) in every ViT block.
model.backbone.net.norm_layer = L(TokenDGNNorm)(num_groups=32, eps=1e-6, alpha=0.5, percentile=0.75, momentum=0.1)

# ViTDet's projects/ViTDet/configs/common/coco_loader_lsj.py
image_size = 1024
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.augmentations = [
    L(T.RandomFlip)(horizontal=True),  # flip first
    L(T.ResizeScale)(min_scale=0.1, max_scale=2.0, target_height=image_size, target_width=image_size),
    L(T.FixedSizeCrop)(crop_size=(image_size, image_size), pad=False),
]
dataloader.train.mapper.image_format = "RGB"
dataloader.train.total_batch_size = 64
dataloader.train.mapper.recompute_boxes = True  # recompute boxes due to cropping
dataloader.test.mapper.augmentations = [L(T.ResizeShortestEdge)(short_edge_length=image_size, max_size=image_size)]

# ViTDet's projects/ViTDet/configs/COCO/mask_rcnn_vitdet_b_100ep.py
train = model_zoo.get_config("common/train.py").train
train.amp.enabled = True
train.ddp.fp16_compression = True
train.init_checkpoint = "detectron2://ImageNetPretrained/MAE/mae_pretrain_vit_base.pth?matching_heuristics=True"
train.max_iter = 184375  # 100 ep = 184375 iters * 64 images/iter / 118000 images/ep
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[163889, 177546],
        num_updates=train.max_iter,
    ),
    warmup_length=250 / train.max_iter,
    warmup_factor=0.001,
)
optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.params.lr_factor_func = partial(get_vit_lr_decay_rate, num_layers=12, lr_decay_rate=0.7)
optimizer.params.overrides = {"pos_embed": {"weight_decay": 0.0}}

# DGN: the study's schedule, shares of train.max_iter.
train.dgn_regroup = L(DGNRegroupHook)(interval=0.1, start=0, stop=0.9)
train.output_dir = "./output/detectron2/mask_rcnn_vitdet_b_dgn_lazy"
