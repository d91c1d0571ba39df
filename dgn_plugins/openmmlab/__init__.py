"""OpenMMLab adapters: registry entries, the regroup hook, ImageNet-S and MMPretrain support.

Importing it (a config's ``custom_imports=dict(imports=['dgn_plugins.openmmlab'])``)
registers ``DGN`` and ``DGNRegroupHook`` in MMEngine's root registries, so the
``mmdet``, ``mmseg`` and ``mmpretrain`` default scopes find them; the ImageNet-S dataset,
transforms and metric only make sense in MMSegmentation and register there,
when it is installed; AugMix, its JSD loss and the CIFAR backbones register in
MMPretrain's registries when it is installed (:mod:`.mmpretrain`). Loading MMEngine's training checkpoints with
``torch.load(weights_only=True)`` (``--resume``) needs
:func:`allow_checkpoint_types`, a process-wide allow-list that launchers call
explicitly (``tools/train.py`` does). Importing also teaches mmcv's FLOPs counter
the DGN layers (registration, like the registries).
"""
from importlib.util import find_spec

from .checkpoint import allow_mmengine_checkpoint_types as allow_checkpoint_types
from .flops import register_flops_counter
from .hook import DGNRegroupHook
from .norm_check import UnknownNormTypeError, check_norm_types
from .registry import register_all

register_all()
register_flops_counter()

# ImageNet-S lives in its own module (another adapter); a missing mmseg or a
# missing module is no error, but an error inside the module must surface.
if find_spec("mmseg") is not None and find_spec(f"{__name__}.imagenet_s") is not None:
    from . import imagenet_s  # noqa: F401
if find_spec("mmpretrain") is not None and find_spec(f"{__name__}.mmpretrain") is not None:
    from . import mmpretrain  # noqa: F401  (AugMix, JSD loss, CIFAR backbones)

__all__ = ["DGNRegroupHook", "allow_checkpoint_types", "UnknownNormTypeError", "check_norm_types", "register_all"]
