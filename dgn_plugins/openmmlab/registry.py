"""Register DGN and its hook in MMEngine's root registries.

Root registration lets both the ``mmdet`` and ``mmseg`` default scopes find
``type='DGN'`` and ``type='DGNRegroupHook'``: child registries fall back to
the root, never to siblings. ``force=True`` keeps re-imports (e.g. a config's
``custom_imports`` after ``import dgn_plugins.openmmlab``) harmless.
"""
from mmengine.registry import HOOKS, MODELS

from ..layer import DynamicGroupNorm
from .hook import DGNRegroupHook


def register_all() -> None:
    MODELS.register_module("DGN", module=DynamicGroupNorm, force=True)
    HOOKS.register_module("DGNRegroupHook", module=DGNRegroupHook, force=True)
