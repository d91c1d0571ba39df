# The LN anchor with TokenDGN (a grouped LayerNorm: 32 groups of 24 channels,
# each token normalised over its group, over="token") in every norm of the
# ViT, never regrouped: GN's grouping throughout. LN checkpoints load (TokenDGN
# layers are named ln1 / ln2 like LN's). DGN twin: fcn_vit-b16-dgn_8xb32-100ep_imagenets919-224x224.py
_base_ = './fcn_vit-b16-ln_8xb32-100ep_imagenets919-224x224.py'
model = dict(backbone=dict(norm_cfg=dict(type='TokenDGN', num_groups=32, over='token', eps=1e-6, requires_grad=True)))
