#!/usr/bin/env python
"""Train a detector, segmentor or classifier with DGN (MMDetection / MMSegmentation /
MMPretrain configs; Detectron2 yacs/LazyConfig files go to ``dgn_plugins.detectron2.launcher``)::

    python tools/train.py configs/mmdet/mask-rcnn_r50_fpn_dgn-all_2x_coco.py
    torchrun --nproc_per_node=2 tools/train.py CONFIG --launcher pytorch
    python tools/train.py CONFIG --resume            # latest checkpoint in work_dir
    python tools/train.py mmdet::gn/mask-rcnn_r50_fpn_gn-all_2x_coco.py --dgn   # a GN config as DGN
    python tools/train.py configs/mmpretrain/wrn40-2_dgn_augmix-jsd_cifar100.py  # a classifier

The toolkit is chosen in :mod:`dgn_plugins.launch`; the launchers live in
:mod:`dgn_plugins.openmmlab.launcher` and :mod:`dgn_plugins.detectron2.launcher`.
"""
import sys

from dgn_plugins.launch import cli

if __name__ == "__main__":
    sys.exit(cli())
