# ViT-B/16 + FCN with LayerNorm (the anchor) on ImageNet-S50 (train-semi,
# 500 images -> validation), 8 GPUs x 32 images of 224x224, 100 epochs
# (200 iterations). The recipe: ./_base_/fcn_vit-b16-ln_8xb32-100ep-224x224.py.
# Variants: fcn_vit-b16-gn_... (TokenDGN, never regrouped), fcn_vit-b16-dgn_...
_base_ = [
    './_base_/datasets/imagenets50.py',
    './_base_/fcn_vit-b16-ln_8xb32-100ep-224x224.py',
]
model = dict(decode_head=dict(num_classes=51))  # 50 categories + "others"
train_dataloader = {{_base_.vit_train_dataloader}}
