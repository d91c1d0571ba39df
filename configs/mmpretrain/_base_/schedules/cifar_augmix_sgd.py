# AugMix's CIFAR recipe: SGD (Nesterov, momentum 0.9) at lr 0.1, weight decay 5e-4, cosine to 1e-6
# stepped every iteration, batch 128. max_epochs: 100 (WRN-40-2) or 200 (ResNeXt-29), set per config.
optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True))
max_epochs = 100
param_scheduler = dict(type='CosineAnnealingLR', by_epoch=True, T_max=max_epochs, eta_min=1e-6,
                       convert_to_iter_based=True)
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=128)
