# The GN variant regrouped by DGN's rule: the same TokenDGN layers (same
# initial grouping, same weights load), regrouped on the study's schedule.
_base_ = './fcn_vit-b16-gn_8xb32-100ep_imagenets919-224x224.py'

# The study's schedule (bench/RESULTS.md, chosen on validation corruptions), as
# the FCN-R50 DGN configs: regroup every 10% of the run, none in its last 10%.
# Shares of the run resolve against the loop's iterations at the start of training.
custom_hooks = [dict(type='DGNRegroupHook', interval=0.1, stop=0.9)]
