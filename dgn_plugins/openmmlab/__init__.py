"""OpenMMLab adapters: registry entries, the regroup hook, ImageNet-S support.

Imported by ``dgn_plugins`` when MMEngine is installed. Everything is
registered in MMEngine's root registries (or, for datasets, transforms and
metrics that only make sense in MMSegmentation, in mmseg's), so both the
``mmdet`` and ``mmseg`` default scopes find it.
"""
from .registry import register_all

register_all()
