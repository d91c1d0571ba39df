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
import math
from typing import List, Mapping

from ..conversion.convert import convert_gn_to_dgn
from ..grouping import DGNOptionError, group_bounds
from ..layer import DynamicGroupNorm
from ..regrouping.policy import RegroupPolicy, check_momentum
from ..training.model import dgn_layers
from .norm_check import iter_norm_cfgs

__all__ = ["LAYER_OPTIONS", "check_layer_options", "gn_norm_cfgs_to_dgn", "converting_runner_class"]

#: ``--dgn-options`` keys: DynamicGroupNorm's keyword arguments, read from its signature
#: (the hook's are --dgn-interval/--dgn-stop).
LAYER_OPTIONS = tuple(name for name in inspect.signature(DynamicGroupNorm).parameters
                      if name not in ("num_channels", "affine", "device", "dtype", "bias"))

#: What each option's value must be, where the layer's own checks below need a number to compare.
_KINDS = {"num_groups": "int", "group_size": "int", "seed": "int", "max_iter": "int", "eps": "real",
          "alpha": "real", "percentile": "real", "momentum": "real", "track_channel_stats": "bool"}


def check_layer_options(options: Mapping) -> dict:
    """``--dgn-options`` checked before anything is built: known keys, and each value as the layer
    checks it (those checks that need no channel count; the others run when the model is built)."""
    unknown = sorted(set(options) - set(LAYER_OPTIONS))
    if unknown:
        raise DGNOptionError(f"--dgn-options: unknown DGN option(s) {', '.join(unknown)}; "
                             f"accepted: {', '.join(LAYER_OPTIONS)}")
    for key, value in options.items():
        try:
            _check_value(key, value)
        except (TypeError, ValueError) as error:
            raise DGNOptionError(f"--dgn-options {key}={value!r}: {error}") from None
    return dict(options)


def _check_value(key: str, value) -> None:
    kind = _KINDS.get(key)
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool" and not isinstance(value, bool):
        raise TypeError("expected True or False")
    if kind == "int" and not (number and isinstance(value, int) and value >= (0 if key == "seed" else 1)):
        raise TypeError(f"expected an integer >= {0 if key == 'seed' else 1}")
    if kind == "real" and not (number and math.isfinite(value)):
        raise TypeError("expected a finite number")
    if key == "eps" and value <= 0:
        raise ValueError("eps must be > 0")
    if key == "alpha":
        group_bounds(1.0, value)
    elif key == "momentum":
        check_momentum(value)
    elif key in ("percentile", "cluster_features", "seed", "n_init", "max_iter"):
        RegroupPolicy(**{key: value})


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
