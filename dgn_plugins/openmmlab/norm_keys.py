"""Refuse a checkpoint whose norm keys do not match the model, naming them.

mmseg's ViT loads its ``init_cfg=dict(type='Pretrained')`` checkpoint with
``strict=False, logger=None``: a checkpoint with ``ln1``/``ln2`` keys loaded
into a model whose norms are named ``gn1``/``gn2`` (mmcv names a norm layer
after its class's ``_abbr_``) keeps the fresh norm weights without a word.
Before training, the launcher (``tools/train.py``) reads every local checkpoint the
run will load (``load_from``, and each module's ``Pretrained`` ``init_cfg``) and
compares the keys of normalisation layers with the module the checkpoint goes
into (:mod:`dgn_plugins.conversion.norm_keys`); a mismatch stops the run with one
line naming the keys, unless ``--allow-norm-key-mismatch`` makes it a warning.
DGN's grouping buffers are not compared: a GN/LN checkpoint without them
means GN's grouping, by design.
"""
from __future__ import annotations

import os
from typing import Iterator, List, Mapping, Optional, Tuple

from torch import nn

from ..conversion.norm_keys import NormKeyMismatchError, mismatch_message, norm_key_mismatch

__all__ = ["NormKeyMismatchError", "norm_key_mismatch", "checkpoints_to_load", "check_checkpoint_norm_keys",
           "norm_key_problems"]

#: What a refused run can do, in every message.
ADVICE = ("Those norm weights would be dropped silently; convert the checkpoint's keys (MAE / TEC / iBOT ViTs: "
          "tools/convert_vit.py) or use a norm type whose "
          "layers carry the checkpoint's names (LN checkpoints: TokenDGN, named ln1/ln2 like LN); "
          "tools/train.py --allow-norm-key-mismatch loads it anyway")


def _init_cfgs(init_cfg) -> Iterator[Mapping]:
    if isinstance(init_cfg, Mapping):
        yield init_cfg
    elif isinstance(init_cfg, (list, tuple)):
        for item in init_cfg:
            yield from _init_cfgs(item)


def checkpoints_to_load(model: nn.Module, load_from: Optional[str],
                        init_cfgs: bool = True) -> List[Tuple[str, nn.Module, str, str]]:
    """``(where, module, path, prefix)`` of every local checkpoint file the run loads into the model
    (``init_cfgs=False``: ``load_from`` only, as when resuming overwrites the pretrained weights).

    URLs and ``open-mmlab://`` names are skipped: they are downloaded by the
    toolkit, and nothing here downloads.
    """
    model = getattr(model, "module", model)  # (MM)DistributedDataParallel
    found = []
    if load_from and os.path.isfile(str(load_from)):
        found.append(("load_from", model, str(load_from), ""))
    for name, child in model.named_modules() if init_cfgs else ():
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


def norm_key_problems(model: nn.Module, load_from: Optional[str], init_cfgs: bool = True) -> Tuple[int, List[str]]:
    """``(checkpoints checked, one line per checkpoint whose norm keys do not match the model, naming them)``."""
    from ..data.safe_load import load_torch_file
    from .checkpoint import mmengine_checkpoint_globals

    checked, problems = 0, []
    for where, module, path, prefix in checkpoints_to_load(model, load_from, init_cfgs):
        state_dict = _strip(_state_dict(load_torch_file(path, mmengine_checkpoint_globals())), prefix)
        missing, unexpected = norm_key_mismatch(module, state_dict)
        checked += 1
        if missing or unexpected:
            problems.append(mismatch_message(path, where, missing, unexpected))
    return checked, problems


def check_checkpoint_norm_keys(model: nn.Module, load_from: Optional[str]) -> int:
    """Raise :class:`NormKeyMismatchError` (one line) if a checkpoint's norm keys do not match; returns how many
    checkpoints were checked."""
    checked, problems = norm_key_problems(model, load_from)
    if problems:
        raise NormKeyMismatchError(f"{problems[0]}. {ADVICE}")
    return checked
