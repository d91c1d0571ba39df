"""Self-supervised ViT checkpoints (MAE, TEC, iBOT / SERE) as MMSegmentation ``VisionTransformer`` weights.

MMSegmentation's ``tools/model_converters/vit2mmseg.py`` renames a timm-style
ViT state dict (``blocks.<i>.norm1`` -> ``layers.<i>.ln1``, ``norm`` -> ``ln1``,
...). What the released checkpoints hold around that state dict differs, and
three differences would leave norm weights behind silently (mmseg's ViT loads
with ``strict=False`` and no logger):

- **where the weights are**: MAE's under ``'model'``; iBOT's, DINO's and
  SERE's full checkpoints under ``'teacher'`` and ``'student'``, with
  ``backbone.`` / ``module.backbone.`` prefixes; TEC's releases are the bare
  state dict. The **teacher** is taken by default: the momentum (EMA) network
  that iBOT / DINO / SERE evaluate and release for downstream tasks.
- **the final norm**: MAE's fine-tuned checkpoints (global pooling) keep it as
  ``fc_norm`` and have no ``norm``: vit2mmseg would leave ``fc_norm`` as an
  unknown key and the model's final ``ln1`` untrained. It is loaded as the
  final norm, as the official ImageNet-S fine-tuning (LUSSeg/ImageNetSegModel)
  does. TEC's converted releases drop both: the final norm is then written
  with LayerNorm's initial values (weight 1, bias 0), which it would have had
  anyway, so that the checkpoint covers every norm of the model.
- **what is not the encoder**: classifier and projection heads (``head.*``),
  MAE's decoder, iBOT's ``masked_embed``: dropped, and named.

:func:`convert_vit_checkpoint` does that and then runs MMSegmentation's own
``convert_vit`` (from the installed package's ``.mim/tools``). ``tools/convert_vit.py``
is its command line.
"""
from __future__ import annotations

import importlib.util
import os
from collections import OrderedDict
from typing import Callable, List, Mapping, Optional, Tuple

from ..errors import ConfigError

__all__ = ["CheckpointFormatError", "pick_state_dict", "encoder_state_dict", "mmseg_vit_converter",
           "convert_vit_checkpoint"]

#: The keys of a timm / MAE ViT encoder (everything else in a checkpoint is dropped, and named).
_ENCODER = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.", "fc_norm.")
#: Prefixes of the encoder's keys in DINO / iBOT / SERE checkpoints (DDP, then the backbone of the head wrapper).
_PREFIXES = ("module.", "backbone.")


class CheckpointFormatError(ConfigError):
    """A checkpoint that holds no ViT encoder in a layout we know."""


def pick_state_dict(checkpoint: Mapping, key: Optional[str] = None) -> Tuple[Mapping, str]:
    """The encoder's state dict in a checkpoint, and where it was: ``key``, else ``'teacher'``, ``'model'``,
    ``'state_dict'``, else the checkpoint itself (``'(top level)'``)."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointFormatError(f"expected a state dict or a dict holding one, got {type(checkpoint).__name__}")
    if key is not None:
        if not isinstance(checkpoint.get(key), Mapping):
            found = ", ".join(sorted(k for k, v in checkpoint.items() if isinstance(v, Mapping))) or "none"
            raise CheckpointFormatError(f"checkpoint key {key!r} holds no state dict (keys holding one: {found})")
        return checkpoint[key], key
    for name in ("teacher", "model", "state_dict"):
        if isinstance(checkpoint.get(name), Mapping):
            return checkpoint[name], name
    return checkpoint, "(top level)"


def _strip(key: str) -> str:
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            key = key[len(prefix):]
    return key


def encoder_state_dict(state: Mapping) -> Tuple["OrderedDict", List[str]]:
    """The timm-style ViT encoder in ``state`` (prefixes stripped, final norm as ``norm``) and notes on what changed."""
    import torch

    notes: List[str] = []
    encoder: "OrderedDict" = OrderedDict()
    dropped = []
    for key, value in state.items():
        name = _strip(str(key))
        if name.startswith(_ENCODER) or name in ("cls_token", "pos_embed"):
            encoder[name] = value
        else:
            dropped.append(name)
    if not any(k.startswith("blocks.") for k in encoder) or "pos_embed" not in encoder:
        raise CheckpointFormatError("no ViT encoder found (no blocks.<i>.* and pos_embed keys after stripping "
                                    f"{'/'.join(_PREFIXES)} prefixes); pick the state dict with --checkpoint-key")
    if dropped:
        shown = sorted({k.split(".")[0] for k in dropped})
        notes.append(f"dropped {len(dropped)} keys that are not the encoder: {', '.join(shown)}")
    has_norm = "norm.weight" in encoder
    has_fc_norm = "fc_norm.weight" in encoder
    if has_fc_norm and not has_norm:
        for suffix in ("weight", "bias"):
            encoder[f"norm.{suffix}"] = encoder.pop(f"fc_norm.{suffix}")
        notes.append("final norm: fc_norm (a fine-tuned checkpoint with global pooling) loaded as the final norm, "
                     "as the official ImageNet-S fine-tuning does")
    elif has_fc_norm:
        for suffix in ("weight", "bias"):
            encoder.pop(f"fc_norm.{suffix}", None)
        notes.append("final norm: norm kept, fc_norm (the pooled features' norm) dropped")
    elif not has_norm:
        dims = encoder["pos_embed"].shape[-1]
        encoder["norm.weight"] = torch.ones(dims)
        encoder["norm.bias"] = torch.zeros(dims)
        notes.append("final norm: none in the checkpoint (TEC's releases drop it); written with LayerNorm's "
                     "initial values (weight 1, bias 0), as the model would start it")
    return encoder, notes


def mmseg_vit_converter() -> Callable[[Mapping], "OrderedDict"]:
    """``convert_vit`` of MMSegmentation's ``tools/model_converters/vit2mmseg.py``, from the installed package."""
    import mmseg

    path = os.path.join(os.path.dirname(mmseg.__file__), ".mim", "tools", "model_converters", "vit2mmseg.py")
    if not os.path.isfile(path):
        raise ConfigError(f"MMSegmentation's ViT converter is not installed at {path} (an mmseg install from "
                          "PyPI ships it under mmseg/.mim/tools)")
    spec = importlib.util.spec_from_file_location("mmseg_vit2mmseg", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.convert_vit


def convert_vit_checkpoint(checkpoint: Mapping, key: Optional[str] = None) -> Tuple["OrderedDict", List[str]]:
    """A MAE / TEC / iBOT / SERE checkpoint as MMSegmentation ``VisionTransformer`` weights, and notes (one line
    each) on what was picked, dropped or filled in."""
    state, where = pick_state_dict(checkpoint, key)
    notes = [f"weights: {where}" + (" (the teacher: the EMA network iBOT / DINO / SERE release for downstream "
                                    "tasks; --checkpoint-key student for the other)" if where == "teacher" else "")]
    encoder, more = encoder_state_dict(state)
    return mmseg_vit_converter()(encoder), notes + more
