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

# The study's schedule (bench/RESULTS.md, chosen on validation corruptions): regroup every 10%
# of the run, none in its last 10%, so the end trains on the final grouping. Shares of the
# run resolve against the loop's max_iters at the start of training.
custom_hooks = [dict(type='DGNRegroupHook', interval=0.1, stop=0.9)]
