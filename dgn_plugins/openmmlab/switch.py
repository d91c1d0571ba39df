"""``tools/train.py --dgn``: run a GN config as DGN without writing a config file.

MMEngine ignores ``custom_imports`` given through ``--cfg-options`` and a list
of hook dicts cannot be written there, so the switch does in the launcher what
a shipped DGN config (``configs/mmdet/*dgn*.py``) does in a file:

- every ``*norm_cfg`` of type ``GN`` becomes ``DGN`` (its ``num_groups`` kept,
  so GN checkpoints load with GN's grouping), plus the layer options given;
- ``nn.GroupNorm`` layers a model builds itself, outside any ``norm_cfg``, are
  converted by :func:`~dgn_plugins.convert_gn_to_dgn` right after the build
  (before the model is wrapped and the optimizer made);
- ``DGNRegroupHook`` is added, with ``stop`` before the last learning-rate
  step (a ``MultiStepLR``/``StepLR`` milestone), else at 90% of training, so
  the end of training runs on the final grouping.
"""
from __future__ import annotations

import inspect
from typing import List, Mapping, Optional, Tuple

from ..grouping import DGNOptionError
from ..inference.convert import convert_gn_to_dgn
from ..layer import DynamicGroupNorm
from ..regrouping.model import dgn_layers
from .norm_check import iter_norm_cfgs

__all__ = ["LAYER_OPTIONS", "check_layer_options", "gn_norm_cfgs_to_dgn", "converting_runner_class",
           "last_lr_step", "default_stop"]

#: ``--dgn-options`` keys: DynamicGroupNorm's keyword arguments, read from its signature
#: (the hook's are --dgn-interval/--dgn-stop).
LAYER_OPTIONS = tuple(name for name in inspect.signature(DynamicGroupNorm).parameters
                      if name not in ("num_channels", "affine", "device", "dtype", "bias"))

_STEP_SCHEDULERS = ("MultiStepLR", "MultiStepParamScheduler", "StepLR", "StepParamScheduler")


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


def last_lr_step(param_scheduler, iters_per_epoch: int) -> Optional[Tuple[int, str]]:
    """``(iteration, description)`` of the last step-scheduler milestone; None without one."""
    schedulers = param_scheduler if isinstance(param_scheduler, (list, tuple)) else [param_scheduler]
    best = None
    for scheduler in schedulers:
        if not isinstance(scheduler, Mapping) or scheduler.get("type") not in _STEP_SCHEDULERS:
            continue
        if "milestones" in scheduler:
            steps = list(scheduler["milestones"])
        else:  # StepLR: every step_size until end
            size, end = scheduler.get("step_size"), scheduler.get("end")
            steps = list(range(size, end, size)) if size and end and end < 10**9 else []
        if not steps:
            continue
        by_epoch = scheduler.get("by_epoch", True) and not scheduler.get("convert_to_iter_based", False)
        iteration = max(steps) * (iters_per_epoch if by_epoch else 1)
        unit = f"epoch {max(steps)}" if by_epoch else f"iteration {max(steps)}"
        if best is None or iteration > best[0]:
            best = (iteration, f"the last LR step ({scheduler['type']} at {unit})")
    return best


def default_stop(param_scheduler, max_iters: int, iters_per_epoch: int) -> Tuple[int, str]:
    """``stop`` for the hook and why: before the last LR step, else at 90% of ``max_iters``."""
    step = last_lr_step(param_scheduler, iters_per_epoch)
    if step is not None and 0 < step[0] <= max_iters:
        return step[0] - 1, f"before {step[1]}"
    return max(int(0.9 * max_iters), 0), f"at 90% of the {max_iters} iterations (no step LR schedule)"
