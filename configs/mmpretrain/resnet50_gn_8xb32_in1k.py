# The poster's ImageNet-C row "ResNet-50" with GN: mmpretrain's ResNet-50 recipe, GN (32 groups) for BN.
_base_ = 'mmpretrain::resnet/resnet50_8xb32_in1k.py'
# dgn_plugins.openmmlab registers DGN and what MMPretrain lacks; .resumable lets its own train.py --resume
# (MMEngine's checkpoint types allow-listed for torch.load(weights_only=True)).
custom_imports = dict(imports=['dgn_plugins.openmmlab', 'dgn_plugins.openmmlab.resumable'], allow_failed_imports=False)
model = dict(backbone=dict(norm_cfg=dict(type='GN', num_groups=32, requires_grad=True)))
