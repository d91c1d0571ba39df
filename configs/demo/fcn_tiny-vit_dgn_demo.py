# The DGN twin of fcn_tiny-vit_gn_demo.py: the same TokenDGN layers (same
# groups at the start), regrouped on the study's schedule (bench/RESULTS.md):
# every 10% of the run, none in its last 10%. Same data, schedule, seed.
_base_ = './fcn_tiny-vit_gn_demo.py'

custom_hooks = [dict(type='DGNRegroupHook', interval=0.1, stop=0.9)]
