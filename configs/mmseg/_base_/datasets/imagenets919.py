_base_ = './imagenets.py'

subset = 919
data_root = 'data/ImageNetS/ImageNetS919'

train_dataloader = dict(dataset=dict(subset=subset, data_root=data_root))
val_dataloader = dict(dataset=dict(subset=subset, data_root=data_root))
test_dataloader = val_dataloader
