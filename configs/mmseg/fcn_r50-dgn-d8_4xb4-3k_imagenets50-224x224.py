# The GN twin with Dynamic Group Normalization in its place (same layer
# positions, same initial grouping, same weights load), regrouped on the study's schedule below.
_base_ = './fcn_r50-gn-d8_4xb4-3k_imagenets50-224x224.py'

norm_cfg = dict(type='DGN', num_groups=32, requires_grad=True)
model = dict(
    backbone=dict(norm_cfg=norm_cfg),
    decode_head=dict(norm_cfg=norm_cfg),
    auxiliary_head=dict(norm_cfg=norm_cfg))

# The study's schedule (bench/RESULTS.md, chosen on validation corruptions): regroup every 10%
# of the run, none in its last 10%, so the end trains on the final grouping. Shares of the
# run resolve against the loop's max_iters at the start of training.
custom_hooks = [dict(type='DGNRegroupHook', interval=0.1, stop=0.9)]
