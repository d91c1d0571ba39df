# Mask R-CNN R50-FPN with DGN as a Detectron2 LazyConfig: detectron2's
# new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py (common/models/mask_rcnn_fpn.py,
# from scratch, 4conv1fc box head, large-scale jitter, 100 epochs) with DGN in
# place of its SyncBN: in the stem, the ResNet stages, the FPN and the box and
# mask heads (DGN, like GN, needs no cross-GPU statistics and takes empty RoI
# batches). Regrouped every 10% of the run via `train.dgn_regroup`, which our
# launcher reads (detectron2's tools/lazyconfig_train_net.py would ignore it):
#   python -m dgn_plugins.detectron2.launcher --config-file configs/detectron2/mask_rcnn_R_50_FPN_dgn_lazy.py --num-gpus 8
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from dgn_plugins.detectron2 import DGNNorm, DGNRegroupHook

_base = model_zoo.get_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
model = _base.model
dataloader = _base.dataloader
optimizer = _base.optimizer
lr_multiplier = _base.lr_multiplier
train = _base.train

# One norm factory for every layer; L(...) keeps the config YAML-serialisable.
_dgn = L(DGNNorm)(num_groups=32, alpha=0.5, percentile=0.75, momentum=0.1)
# fmt: off
model.backbone.bottom_up.stem.norm = \
    model.backbone.bottom_up.stages.norm = \
    model.backbone.norm = \
    model.roi_heads.box_head.conv_norm = \
    model.roi_heads.mask_head.conv_norm = _dgn
# fmt: on

# The study's schedule (bench/RESULTS.md): every 10% of train.max_iter, none in its last 10%.
train.dgn_regroup = L(DGNRegroupHook)(interval=0.1, start=0, stop=0.9)
train.output_dir = "./output/detectron2/mask_rcnn_R_50_FPN_dgn_lazy"
