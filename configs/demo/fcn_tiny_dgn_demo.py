# The DGN twin of fcn_tiny_gn_demo.py: the same model with every GN replaced
# by DGN (same groups at the start), regrouped every 100 iterations up to
# iteration 500, so the last 100 train on the final grouping. Same data,
# schedule, seed.
_base_ = './fcn_tiny_gn_demo.py'

norm_cfg = dict(type='DGN', num_groups=8, requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))

custom_hooks = [dict(type='DGNRegroupHook', interval=100, stop=500)]
