"""OpenMMLab adapters: registry entries (and, later, hooks and datasets)."""
from .registry import register_all

register_all()
