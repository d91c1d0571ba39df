# The same as its GN config with DGN (GN's 32 groups), regrouped every 10% of training, none in the last 10%.
_base_ = './resnet50_gn_augmix-jsd_8xb32_in1k.py'
model = dict(backbone=dict(norm_cfg=dict(type='DGN', num_groups=32, requires_grad=True)))
custom_hooks = [dict(type='DGNRegroupHook')]
