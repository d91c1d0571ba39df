# The DGN twin of fcn_tiny_gn_demo.py: the same model with every GN replaced
# by DGN (same groups at the start), regrouped on the study's schedule
# (bench/RESULTS.md): every 10% of the run, none in its last 10%. Same data,
# schedule, seed.
_base_ = './fcn_tiny_gn_demo.py'

norm_cfg = dict(type='DGN', num_groups=8, requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))

custom_hooks = [dict(type='DGNRegroupHook', interval=0.1, stop=0.9)]
