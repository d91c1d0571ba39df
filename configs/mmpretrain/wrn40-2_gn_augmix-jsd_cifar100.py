# The poster's CIFAR-100 row "WRN40-2 A" with GN: AugMix + JSD, 100 epochs.
_base_ = [
    './_base_/models/wrn40-2_cifar100.py', './_base_/datasets/cifar100_bs128_augmix-jsd.py',
    './_base_/schedules/cifar_augmix_sgd.py', 'mmpretrain::_base_/default_runtime.py',
]
# The JSD loss over the three views (cross-entropy on the clean one + 12 x JS), as the head's loss.
model = dict(head=dict(loss=dict(_delete_=True, type='AugMixJSDLoss', views=3, jsd_weight=12.0)))
