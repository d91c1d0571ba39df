# The same as its GN config with DGN: same group size (GN checkpoints load with GN's grouping), regrouped
# every 10% of training, none in the last 10%.
_base_ = './wrn40-2_gn_augmix-jsd_cifar100.py'
model = dict(backbone=dict(norm_cfg=dict(type='DGN', group_size=8, requires_grad=True)))
custom_hooks = [dict(type='DGNRegroupHook')]
