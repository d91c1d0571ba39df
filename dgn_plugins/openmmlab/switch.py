"""``tools/train.py --dgn``: run a GN config as DGN without writing a config file.

MMEngine ignores ``custom_imports`` given through ``--cfg-options`` and a list
of hook dicts cannot be written there, so the switch does in the launcher what
a shipped DGN config (``configs/mmdet/*dgn*.py``) does in a file:

- every ``*norm_cfg`` of type ``GN`` becomes ``DGN`` (its ``num_groups`` kept,
  so GN checkpoints load with GN's grouping), plus the layer options given;
- ``nn.GroupNorm`` layers a model builds itself, outside any ``norm_cfg``, are
  converted by :func:`~dgn_plugins.convert_gn_to_dgn` right after the build
  (before the model is wrapped and the optimizer made);
- ``DGNRegroupHook`` is added, on the study's schedule unless told otherwise
  (every 10% of training, none in its last 10%, so the end of training runs
  on the final grouping; bench/RESULTS.md).
"""
from __future__ import annotations

import inspect
from typing import List, Mapping

from ..conversion.convert import convert_gn_to_dgn
from ..grouping import DGNOptionError
from ..layer import DynamicGroupNorm
from ..training.model import dgn_layers
from .norm_check import iter_norm_cfgs

__all__ = ["LAYER_OPTIONS", "check_layer_options", "gn_norm_cfgs_to_dgn", "converting_runner_class"]

#: ``--dgn-options`` keys: DynamicGroupNorm's keyword arguments, read from its signature
#: (the hook's are --dgn-interval/--dgn-stop).
LAYER_OPTIONS = tuple(name for name in inspect.signature(DynamicGroupNorm).parameters
                      if name not in ("num_channels", "affine", "device", "dtype", "bias"))

def check_layer_options(options: Mapping) -> dict:
    unknown = sorted(set(options) - set(LAYER_OPTIONS))
    if unknown:
        raise DGNOptionError(f"--dgn-options: unknown DGN option(s) {', '.join(unknown)}; "
                             f"accepted: {', '.join(LAYER_OPTIONS)}")
    return dict(options)


def gn_norm_cfgs_to_dgn(model_cfg, options: Mapping) -> List[str]:
    """Make every GN ``*norm_cfg`` under ``model_cfg`` a DGN one, in place; returns their paths."""
    changed = []
    for path, norm_cfg in iter_norm_cfgs(model_cfg):
        if norm_cfg.get("type") == "GN":
            norm_cfg["type"] = "DGN"
            norm_cfg.update(options)
            changed.append(f"model.{path}")
    return changed


def converting_runner_class(base, options: Mapping, converted: List[str]):
    """``base`` (a Runner class) whose ``build_model`` also converts the ``nn.GroupNorm`` it finds.

    Paths of the converted layers are appended to ``converted``. The model is
    converted before ``Runner.__init__`` wraps it (DDP) and before the
    optimizer is built from its parameters.
    """

    def build_model(self, model):
        built = base.build_model(self, model)
        before = {name for name, _ in dgn_layers(built)}
        convert_gn_to_dgn(built, **options)
        converted.extend(name for name, _ in dgn_layers(built) if name not in before)
        return built

    return type(f"DGN{base.__name__}", (base,), {"build_model": build_model})
