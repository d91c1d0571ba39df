# The DGN twin of mask-rcnn_tiny_gn_demo.py: the same model with every GN
# replaced by DGN (same groups at the start), regrouped on the study's
# schedule (bench/RESULTS.md): every 10% of the run, none in its last 10%.
# Same data, schedule, seed.
_base_ = './mask-rcnn_tiny_gn_demo.py'
custom_imports = dict(
    imports=['dgn_plugins.openmmlab', 'dgn_plugins.openmmlab.synthetic_coco_dataset'],
    allow_failed_imports=False)

norm_cfg = dict(type='DGN', num_groups=8, requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    neck=dict(norm_cfg=norm_cfg),
    roi_head=dict(
        bbox_head=dict(norm_cfg=norm_cfg), mask_head=dict(norm_cfg=norm_cfg)))

custom_hooks = [dict(type='DGNRegroupHook', interval=0.1, stop=0.9)]
