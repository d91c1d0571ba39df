"""OpenMMLab adapters: registry entries, the regroup hook, ImageNet-S support.

Imported by ``dgn_plugins`` when MMEngine is installed. ``DGN`` and
``DGNRegroupHook`` go into MMEngine's root registries, so both the ``mmdet``
and ``mmseg`` default scopes find them; the ImageNet-S dataset, transforms and
metric only make sense in MMSegmentation and register there, when it is
installed. Importing also allow-lists the types MMEngine writes into
checkpoints, so ``--resume`` works with ``torch.load(weights_only=True)``, and
teaches mmcv's FLOPs counter the DGN layers.
"""
from importlib.util import find_spec

from . import checkpoint
from .flops import register_flops_counter
from .hook import DGNRegroupHook
from .norm_check import UnknownNormTypeError, check_norm_types
from .registry import register_all

register_all()
checkpoint.allow_mmengine_checkpoint_types()
register_flops_counter()

# ImageNet-S lives in its own module (another adapter); a missing mmseg or a
# missing module is no error, but an error inside the module must surface.
if find_spec("mmseg") is not None and find_spec(f"{__name__}.imagenet_s") is not None:
    from . import imagenet_s  # noqa: F401

__all__ = ["DGNRegroupHook", "UnknownNormTypeError", "check_norm_types", "register_all"]
