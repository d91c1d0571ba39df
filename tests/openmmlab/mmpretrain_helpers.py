"""Tiny versions of the shipped MMPretrain configs, on a generated image-folder set (no download)."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = os.path.join(ROOT, "configs", "mmpretrain")

#: Each shipped CIFAR config with a backbone small enough for a CPU test, and its feature width.
TINY_BACKBONES = {
    "wrn40-2": ("dict(depth=10, widen_factor=1, base_width=8)", 32),
    "resnext29-32x4d": ("dict(depth=11, cardinality=2, base_width=16, stem_channels=16, norm_cfg=dict(num_groups=4))", 256),
}


def mmpretrain_train_py() -> str:
    """mmpretrain's own ``tools/train.py``, shipped inside the package (``.mim``)."""
    import mmpretrain

    return os.path.join(os.path.dirname(mmpretrain.__file__), ".mim", "tools", "train.py")


def tiny_config(tmp_path, config: str, data_root: str, *, epochs: int = 2, name: str = "tiny.py") -> str:
    """A config file that inherits ``config`` and shrinks model, data and schedule (four classes)."""
    from mmengine.config import Config

    model = next(key for key in TINY_BACKBONES if os.path.basename(config).startswith(key))
    backbone, width = TINY_BACKBONES[model]
    pipeline = [dict(type="LoadImageFromFile")] + [dict(step) for step in Config.fromfile(config).train_pipeline]
    text = f"""
_base_ = {config!r}
model = dict(backbone={backbone}, head=dict(num_classes=4, in_channels={width}))
train_dataloader = dict(
    batch_size=4, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, type='CustomDataset', data_root={data_root!r}, data_prefix='train',
                 pipeline={pipeline!r}))
val_dataloader = dict(
    batch_size=8, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, type='CustomDataset', data_root={data_root!r}, data_prefix='val',
                 pipeline=[dict(type='LoadImageFromFile'), dict(type='PackInputs')]))
test_dataloader = val_dataloader
train_cfg = dict(max_epochs={epochs})
param_scheduler = dict(T_max={epochs})
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
randomness = dict(seed=0)
"""
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run_mmpretrain_train(config: str, work_dir: str, *extra: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """mmpretrain's ``tools/train.py`` in a subprocess (this checkout's ``dgn_plugins`` first on the path)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, mmpretrain_train_py(), config, "--work-dir", work_dir, *extra],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)
