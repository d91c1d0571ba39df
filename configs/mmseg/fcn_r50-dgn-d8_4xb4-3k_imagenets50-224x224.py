# The GN twin with Dynamic Group Normalization in its place (same layer
# positions, same initial grouping, same weights load), regrouped every
# 200 iterations; the last 400 iterations train on the final grouping.
_base_ = './fcn_r50-gn-d8_4xb4-3k_imagenets50-224x224.py'

norm_cfg = dict(type='DGN', num_groups=32, requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))

custom_hooks = [dict(type='DGNRegroupHook', interval=200, stop=2800)]
