"""mmcv's FLOPs counter counts DGN layers as the GroupNorm they generalize.

``mmcv.cnn.get_model_complexity_info`` looks layers up by exact type in
``get_modules_mapping()``, so a subclass-free layer such as ``DynamicGroupNorm``
counted 0 FLOPs. Its cost per element is GN's (normalize, then the affine map),
so it gets GN's counter hook.
"""
from mmcv.cnn.utils import flops_counter

from ..conversion.freeze import FrozenDynamicGroupNorm, FrozenTokenDynamicGroupNorm
from ..layer import DynamicGroupNorm
from ..token_layer import TokenDynamicGroupNorm

DGN_TYPES = (DynamicGroupNorm, FrozenDynamicGroupNorm, TokenDynamicGroupNorm, FrozenTokenDynamicGroupNorm)


def register_flops_counter() -> None:
    """Add the DGN layers to mmcv's module-to-hook mapping (idempotent)."""
    original = flops_counter.get_modules_mapping
    if getattr(original, "counts_dgn", False):
        return

    def get_modules_mapping() -> dict:
        mapping = original()
        for layer_type in DGN_TYPES:
            mapping.setdefault(layer_type, flops_counter.norm_flops_counter_hook)
        return mapping

    get_modules_mapping.counts_dgn = True
    get_modules_mapping.__doc__ = original.__doc__
    flops_counter.get_modules_mapping = get_modules_mapping
