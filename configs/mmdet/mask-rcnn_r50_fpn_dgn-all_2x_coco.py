# Mask R-CNN R50-FPN, DGN everywhere GN was (backbone incl. downsample, FPN,
# Shared4Conv1FC box head, FCN mask head), 2x schedule. The DGN twin of mmdet's
# gn/mask-rcnn_r50_fpn_gn-all_2x_coco.py: only the norm type and the
# regroup hook differ. The GN-pretrained backbone loads unchanged (same keys).
_base_ = 'mmdet::gn/mask-rcnn_r50_fpn_gn-all_2x_coco.py'
custom_imports = dict(imports=['dgn_plugins.openmmlab'], allow_failed_imports=False)

norm_cfg = dict(type='DGN', num_groups=32, requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))

# Regroup every 1000 iterations up to the last LR step (epoch 22 of 24; COCO train2017
# at 16 images per batch is 7330 iterations per epoch), so the end trains on the final grouping.
custom_hooks = [dict(type='DGNRegroupHook', interval=1000, stop=161000)]
