# The poster's CIFAR-100 row "ResNeXt-29 A" with GN: AugMix + JSD, 200 epochs.
_base_ = [
    './_base_/models/resnext29-32x4d_cifar100.py', './_base_/datasets/cifar100_bs128_augmix-jsd.py',
    './_base_/schedules/cifar_augmix_sgd.py', 'mmpretrain::_base_/default_runtime.py',
]
# The JSD loss over the three views (cross-entropy on the clean one + 12 x JS), as the head's loss.
model = dict(head=dict(loss=dict(_delete_=True, type='AugMixJSDLoss', views=3, jsd_weight=12.0)))
max_epochs = 200
param_scheduler = dict(T_max=max_epochs)
train_cfg = dict(max_epochs=max_epochs)
