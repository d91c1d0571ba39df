"""Register DGN (and TokenDGN, where the core has it) and the hook in MMEngine's root registries.

Root registration lets the ``mmdet``, ``mmseg`` and ``mmpretrain`` default
scopes find ``type='DGN'`` and ``type='DGNRegroupHook'``: child registries
fall back to the root, never to siblings. ``force=True`` keeps re-imports (e.g. a config's
``custom_imports`` after ``import dgn_plugins.openmmlab``) harmless.
"""
from mmengine.registry import HOOKS, MODELS

import dgn_plugins

from ..layer import DynamicGroupNorm
from .hook import DGNRegroupHook


def register_all() -> None:
    MODELS.register_module("DGN", module=DynamicGroupNorm, force=True)
    token = getattr(dgn_plugins, "TokenDynamicGroupNorm", None)  # the transformer layer, once the core has it
    if token is not None:
        MODELS.register_module("TokenDGN", module=token, force=True)
    HOOKS.register_module("DGNRegroupHook", module=DGNRegroupHook, force=True)
