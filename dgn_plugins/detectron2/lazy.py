"""DGN in Detectron2's LazyConfig (``.py``) configs.

A norm is any ``get_norm`` argument, so a LazyConfig switches to DGN with
:class:`~dgn_plugins.detectron2.DGNNorm` (``L(DGNNorm)(...)`` keeps the
config YAML-serialisable)::

    dgn = L(DGNNorm)(num_groups=32)
    model.backbone.bottom_up.stem.norm = model.backbone.bottom_up.stages.norm = dgn
    model.backbone.norm = model.roi_heads.box_head.conv_norm = model.roi_heads.mask_head.conv_norm = dgn

and asks for regrouping with ``train.dgn_regroup``: a
``L(DGNRegroupHook)(interval=...)`` or a plain ``dict(interval=..., start=...,
stop=...)``. Detectron2's ``tools/lazyconfig_train_net.py`` ignores that key;
:func:`train` here, which our launcher runs, is that script's loop plus the hook.
Unless the entry says ``records_file``, regroup records go to
``train.output_dir/dgn_groups.jsonl``.
"""
from __future__ import annotations

import copy
import logging
import os
from typing import Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from omegaconf import DictConfig, OmegaConf

from ..grouping import DGNOptionError
from ..training.model import name_layers
from ..training.records import RECORDS_FILE
from .checkpoint import check_norm_keys_on_load
from .hook import DGNRegroupHook, insert_regroup_hook

__all__ = ["regroup_hook_from_lazy", "train", "test", "build_model", "ddp_device_kwargs"]

logger = logging.getLogger(__name__)

#: The key under ``cfg.train`` that asks for a DGNRegroupHook.
REGROUP_KEY = "dgn_regroup"


def ddp_device_kwargs(model) -> dict:
    """DDP ``device_ids``: Detectron2's default (the local GPU) except for CPU models, where it must be None."""
    parameter = next(model.parameters(), None)
    if parameter is not None and parameter.device.type == "cpu":
        return {"device_ids": None}
    return {}


def regroup_hook_from_lazy(cfg) -> Optional[DGNRegroupHook]:
    """The hook ``cfg.train.dgn_regroup`` asks for, or None (absent, None, or ``interval=0``)."""
    spec = cfg.train.get(REGROUP_KEY, None) if "train" in cfg else None
    if spec is None:
        return None
    if isinstance(spec, DGNRegroupHook):
        return spec
    if not isinstance(spec, (dict, DictConfig)):
        raise TypeError(f"train.{REGROUP_KEY} must be a dict or L(DGNRegroupHook)(...), got {type(spec).__name__}")
    spec = _with_default_records_file(spec, cfg.train.get("output_dir", None))
    if "_target_" in spec:
        hook = instantiate(spec)
        if not isinstance(hook, DGNRegroupHook):
            raise TypeError(f"train.{REGROUP_KEY} must build a DGNRegroupHook, got {type(hook).__name__}")
        return hook
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    if int(spec.get("interval", 1)) <= 0:
        return None
    return DGNRegroupHook(**spec)


def _with_default_records_file(spec, output_dir: Optional[str]):
    """``spec`` with ``records_file`` in ``output_dir`` unless it names one (or there is no output dir)."""
    if output_dir is None or "records_file" in spec:
        return spec
    # a plain copy: the config keeps what its author wrote (and may be in struct mode)
    spec = OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else dict(spec)
    spec["records_file"] = os.path.join(output_dir, RECORDS_FILE)
    return spec


def build_model(cfg) -> torch.nn.Module:
    """``instantiate(cfg.model)`` on ``train.device``; DGN options a layer cannot meet, and a layer given the
    other layout, name its module path."""
    try:
        model = instantiate(cfg.model)
    except DGNOptionError as error:
        raise DGNOptionError(_explain_infeasible(cfg.model, error)) from None
    name_layers(model)  # a layout error in the first forward names its layer
    model.to(cfg.train.device)
    return model


def _explain_infeasible(model_cfg, error: Exception) -> str:
    """Build ``model_cfg`` again with every ``L(DGNNorm)`` / ``L(TokenDGNNorm)`` turned into a probe, to find the
    failing layers."""
    from detectron2.utils.registry import locate
    from omegaconf import ListConfig

    from ..feasibility import describe_infeasible, infeasible_layers
    from .norm import PROBE_NORMS

    probe, slots = copy.deepcopy(model_cfg), {}

    def swap(node, path: str) -> None:
        if isinstance(node, DictConfig):
            target = node.get("_target_")
            if isinstance(target, str) and target.rpartition(".")[2] in {cls.__name__ for cls in PROBE_NORMS}:
                target = locate(target)
            if target in PROBE_NORMS:
                node["_target_"] = PROBE_NORMS[target]
                slots.setdefault(target.__name__, []).append(path)
            for key in list(node.keys()):
                swap(node[key], f"{path}.{key}")
        elif isinstance(node, ListConfig):
            for index, item in enumerate(node):
                swap(item, f"{path}[{index}]")

    try:
        swap(probe, "model")
        layers = infeasible_layers(instantiate(probe))
    except Exception:  # the probe build is a courtesy: keep the original message
        layers = []
    where = "; ".join(f"the L({name}) options of {', '.join(paths)}" for name, paths in slots.items())
    return describe_infeasible(layers, where) if layers else str(error)


def test(cfg, model):
    """``lazyconfig_train_net.do_test``: evaluate on ``dataloader.test`` if an evaluator is configured."""
    if "evaluator" not in cfg.dataloader:
        return None
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    print_csv_format(results)
    return results


def train(cfg, resume: bool = False, allow_norm_key_mismatch: bool = False):
    """``lazyconfig_train_net.do_train`` with :class:`DGNRegroupHook` before the checkpointer.

    ``train.init_checkpoint`` must fill the norm layers of the parts it loads
    (:mod:`.checkpoint`; ``allow_norm_key_mismatch``: a WARNING instead).
    Returns the results of the last evaluation (None without an evaluator).
    """
    model = build_model(cfg)
    logging.getLogger("detectron2").info("Model:\n{}".format(model))

    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)

    model = create_ddp_model(model, **{**ddp_device_kwargs(model), **cfg.train.ddp})
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optimizer)
    checkpointer = check_norm_keys_on_load(DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer),
                                           "train.init_checkpoint", allow_mismatch=allow_norm_key_mismatch)
    last_results = {}

    def evaluate():
        last_results["value"] = test(cfg, model)
        return last_results["value"]

    regroup_hook = regroup_hook_from_lazy(cfg)
    if regroup_hook is None:
        logger.info(f"No train.{REGROUP_KEY} in the config: DGN layers keep their groupings.")
    writers = default_writers(cfg.train.output_dir, cfg.train.max_iter) if comm.is_main_process() else None
    trainer.register_hooks(
        insert_regroup_hook(
            [
                hooks.IterationTimer(),
                hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
                hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
                hooks.EvalHook(cfg.train.eval_period, evaluate),
                hooks.PeriodicWriter(writers, period=cfg.train.log_period) if writers else None,
            ],
            regroup_hook,
        )
    )
    checkpointer.resume_or_load(cfg.train.init_checkpoint, resume=resume)
    # The checkpoint stores the iteration that just finished.
    start_iter = trainer.iter + 1 if resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return last_results.get("value")
