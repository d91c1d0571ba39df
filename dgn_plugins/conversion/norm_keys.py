"""Which normalisation weights a checkpoint and a model do not share, named.

Loading a checkpoint with ``strict=False`` (mmseg's ViT ``init_cfg``, MMEngine's
``load_from``, Detectron2's checkpointer) keeps a model's fresh norm weights
wherever the names differ: a LN checkpoint's ``ln1``/``ln2`` keys loaded into
a model whose norms are named ``gn1``/``gn2`` (mmcv names a norm layer after its
class's ``_abbr_``) leave every norm at its initial value. The launchers
(``dgn_plugins.openmmlab.launcher``, ``dgn_plugins.detectron2.launcher``) use
these functions to stop such a run with one line naming the keys.

DGN's grouping buffers are never asked of a checkpoint: a GN/LN checkpoint
without them means GN's grouping, by design.
"""
from __future__ import annotations

import re
from typing import Iterable, List, Mapping, Sequence, Tuple

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from ..errors import ConfigError
from .freeze import FrozenDynamicGroupNorm

__all__ = ["NormKeyMismatchError", "model_norm_keys", "norm_key_mismatch", "dropped_norm_keys", "mismatch_message",
           "is_norm_like_key"]

_NORM_TYPES = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm, FrozenDynamicGroupNorm)
_GROUPING_BUFFERS = ("group_id", "channel_mean_ema", "channel_var_ema", "num_stat_updates", "num_regroups",
                     "num_batches_tracked")
#: A checkpoint key whose module is named like a norm layer: ``ln1.weight``, ``layers.0.norm2.bias``, ``bn.running_mean``.
_NORM_NAME = re.compile(r"(^|\.)(ln|gn|bn|norm|layer_norm|layernorm|group_norm|batch_norm|fc_norm)(\d*|_\w+)"
                        r"\.(weight|bias|running_mean|running_var)$")


class NormKeyMismatchError(ConfigError):
    """A checkpoint's normalisation keys do not match the model's."""


def is_norm_like_key(key) -> bool:
    """A checkpoint key named like a norm layer's weight, bias or running statistic."""
    return isinstance(key, str) and bool(_NORM_NAME.search(key))


def model_norm_keys(module: nn.Module) -> List[str]:
    """The model's norm weights, biases and running statistics (not DGN's grouping buffers)."""
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
    missing = [k for k in model_norm_keys(module) if k not in state_dict]
    unexpected = [k for k in state_dict if is_norm_like_key(k) and k not in model_keys]
    return missing, unexpected


def dropped_norm_keys(model: nn.Module, missing: Iterable[str], unexpected: Iterable[str],
                      incorrect_shapes: Iterable[str] = ()) -> Tuple[List[str], List[str]]:
    """``(missing, unexpected)`` norm keys of a ``strict=False`` load that left a loaded part's norms unloaded.

    For checkpoints that cover part of the model (Detectron2's ``MODEL.WEIGHTS``
    is often an ImageNet backbone, its heads fresh): a model norm key counts when
    the checkpoint loaded the module the norm sits in (a sibling key under the
    norm's parent, e.g. ``blocks.0.attn.qkv.weight`` for ``blocks.0.norm1.weight``,
    ``conv1.weight`` for ``conv1.norm.weight``) but not the norm itself, or
    when a norm key's shape did not match. ``unexpected`` norm-like keys are named
    with them, and only then: alone (BN statistics a GN model has no place for, an
    MAE encoder's final norm that ViTDet does not have) they are what every model
    of that kind drops, and the loader logs them.
    """
    missing, unexpected = set(missing), list(unexpected)
    incorrect = set(incorrect_shapes)
    state = model.state_dict()
    # DGN layers accept a checkpoint without their grouping buffers (GN's grouping), so those are never missing:
    # they say nothing about what the checkpoint covers.
    loaded = {k for k in state if k not in missing and k not in incorrect
              and k.rpartition(".")[2] not in _GROUPING_BUFFERS}
    norms = model_norm_keys(model)
    dropped = []
    for key in norms:
        if key in incorrect:
            dropped.append(key)
        elif key in missing:
            parent = key.rsplit(".", 2)[0] + "." if key.count(".") >= 2 else ""
            module_prefix = key.rsplit(".", 1)[0] + "."
            if any(k.startswith(parent) and not k.startswith(module_prefix) for k in loaded):
                dropped.append(key)
    if not dropped:
        return [], []
    return dropped, [k for k in unexpected if is_norm_like_key(k)]


def _shown(keys: Sequence[str]) -> str:
    return ", ".join(keys[:4]) + (f", ... ({len(keys)} in all)" if len(keys) > 4 else "")


def mismatch_message(path: str, where: str, missing: Sequence[str], unexpected: Sequence[str]) -> str:
    """One line: the checkpoint, where it is loaded, the keys on each side (an error adds what to do)."""
    parts = []
    if missing:
        parts.append(f"the model's {_shown(missing)} not in the checkpoint")
    if unexpected:
        parts.append(f"the checkpoint's {_shown(unexpected)} not in the model")
    return f"checkpoint {path} ({where}) does not match the model's normalisation layers: {'; '.join(parts)}"
