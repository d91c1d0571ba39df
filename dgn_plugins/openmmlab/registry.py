"""Register DGN in MMEngine's root registries.

Root registration lets both the ``mmdet`` and ``mmseg`` default scopes find
``type='DGN'``: child registries fall back to the root, never to siblings.
"""
from mmengine.registry import MODELS

from ..layer import DynamicGroupNorm


def register_all() -> None:
    MODELS.register_module("DGN", module=DynamicGroupNorm, force=True)
