"""Refuse a checkpoint whose norm keys do not match the model, naming them.

mmseg's ViT loads its ``init_cfg=dict(type='Pretrained')`` checkpoint with
``strict=False, logger=None``: a checkpoint with ``ln1``/``ln2`` keys loaded
into a model whose norms are named ``gn1``/``gn2`` (mmcv names a norm layer
after its class's ``_abbr_``) keeps the fresh norm weights without a word.
Before training, the launcher reads every local checkpoint the run will load
(``load_from``, and each module's ``Pretrained`` ``init_cfg``) and compares
the keys of normalisation layers with the module the checkpoint goes into.
DGN's grouping buffers are not compared: a GN/LN checkpoint without them
means GN's grouping, by design.
"""
from __future__ import annotations

import os
import re
from typing import Iterator, List, Mapping, Optional, Tuple

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from ..conversion.freeze import FrozenDynamicGroupNorm
from ..errors import ConfigError

__all__ = ["NormKeyMismatchError", "norm_key_mismatch", "checkpoints_to_load", "check_checkpoint_norm_keys"]

_NORM_TYPES = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm, FrozenDynamicGroupNorm)
_GROUPING_BUFFERS = ("group_id", "channel_mean_ema", "channel_var_ema", "num_stat_updates", "num_regroups",
                     "num_batches_tracked")
#: A checkpoint key whose module is named like a norm layer: ``ln1.weight``, ``layers.0.norm2.bias``, ``bn.running_mean``.
_NORM_NAME = re.compile(r"(^|\.)(ln|gn|bn|norm|layer_norm|layernorm|group_norm|batch_norm|fc_norm)(\d*|_\w+)"
                        r"\.(weight|bias|running_mean|running_var)$")


class NormKeyMismatchError(ConfigError):
    """A checkpoint's normalisation keys do not match the model's."""


def _model_norm_keys(module: nn.Module) -> List[str]:
    keys = []
    for name, child in module.named_modules():
        if not isinstance(child, _NORM_TYPES):
            continue
        prefix = f"{name}." if name else ""
        for key in child.state_dict(keep_vars=True):
            if "." not in key and key not in _GROUPING_BUFFERS:
                keys.append(prefix + key)
    return keys


def norm_key_mismatch(module: nn.Module, state_dict: Mapping) -> Tuple[List[str], List[str]]:
    """``(missing, unexpected)``: the model's norm keys the checkpoint lacks, its norm-like keys the model lacks."""
    model_keys = set(module.state_dict())
    missing = [k for k in _model_norm_keys(module) if k not in state_dict]
    unexpected = [k for k in state_dict if isinstance(k, str) and _NORM_NAME.search(k) and k not in model_keys]
    return missing, unexpected


def _init_cfgs(init_cfg) -> Iterator[Mapping]:
    if isinstance(init_cfg, Mapping):
        yield init_cfg
    elif isinstance(init_cfg, (list, tuple)):
        for item in init_cfg:
            yield from _init_cfgs(item)


def checkpoints_to_load(model: nn.Module, load_from: Optional[str]) -> List[Tuple[str, nn.Module, str, str]]:
    """``(where, module, path, prefix)`` of every local checkpoint file the run loads into the model.

    URLs and ``open-mmlab://`` names are skipped: they are downloaded by the
    toolkit, and nothing here downloads.
    """
    model = getattr(model, "module", model)  # (MM)DistributedDataParallel
    found = []
    if load_from and os.path.isfile(str(load_from)):
        found.append(("load_from", model, str(load_from), ""))
    for name, child in model.named_modules():
        for cfg in _init_cfgs(getattr(child, "init_cfg", None)):
            checkpoint = cfg.get("checkpoint")
            if cfg.get("type") == "Pretrained" and checkpoint and os.path.isfile(str(checkpoint)):
                where = f"{name or 'model'}.init_cfg"
                found.append((where, child, str(checkpoint), str(cfg.get("prefix") or "")))
    return found


def _state_dict(checkpoint) -> Mapping:
    """The weights of a checkpoint as the toolkits unwrap it: ``state_dict`` or ``model`` entry, else itself."""
    if isinstance(checkpoint, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(checkpoint.get(key), Mapping):
                return checkpoint[key]
    return checkpoint


def _strip(state_dict: Mapping, prefix: str) -> Mapping:
    if not prefix:
        return {k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k: v
                for k, v in state_dict.items()}
    prefix = prefix if prefix.endswith(".") else prefix + "."
    return {k[len(prefix):]: v for k, v in state_dict.items() if isinstance(k, str) and k.startswith(prefix)}


def _shown(keys: List[str]) -> str:
    return ", ".join(keys[:4]) + (f", ... ({len(keys)} in all)" if len(keys) > 4 else "")


def check_checkpoint_norm_keys(model: nn.Module, load_from: Optional[str]) -> int:
    """Raise :class:`NormKeyMismatchError` (one line) if a checkpoint's norm keys do not match; returns how many
    checkpoints were checked."""
    from ..data.safe_load import load_torch_file
    from .checkpoint import mmengine_checkpoint_globals

    checked = 0
    for where, module, path, prefix in checkpoints_to_load(model, load_from):
        state_dict = _strip(_state_dict(load_torch_file(path, mmengine_checkpoint_globals())), prefix)
        missing, unexpected = norm_key_mismatch(module, state_dict)
        checked += 1
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"the model's {_shown(missing)} not in the checkpoint")
            if unexpected:
                parts.append(f"the checkpoint's {_shown(unexpected)} not in the model")
            raise NormKeyMismatchError(
                f"checkpoint {path} ({where}) does not match the model's normalisation layers: {'; '.join(parts)}. "
                "Those norm weights would be dropped silently; convert the checkpoint's keys or use a norm type "
                "whose layers carry the checkpoint's names (LN checkpoints: TokenDGN, named ln1/ln2 like LN)")
    return checked
