"""Stop a run whose checkpoint would leave normalisation weights behind, naming the keys.

Detectron2's checkpointer loads ``MODEL.WEIGHTS`` / ``train.init_checkpoint``
with ``strict=False``: it logs the keys it could not place among a few hundred
lines of start-up log and trains on. A checkpoint whose norm layers carry other
names than the model's (a LN checkpoint's ``norm1`` where the model has
``gn1``, a renamed backbone) would then train with fresh norm weights in a
pretrained network. :func:`check_norm_keys_on_load` makes a checkpointer stop
instead, after Detectron2's own name matching (``matching_heuristics``, Caffe2
names), with one line naming the keys
(:func:`dgn_plugins.conversion.norm_keys.dropped_norm_keys` says which count: a
partial checkpoint, such as an ImageNet backbone with fresh heads, is fine).
Our launcher applies it; ``--allow-norm-key-mismatch`` makes it a warning.
"""
from __future__ import annotations

import logging

from ..conversion.norm_keys import NormKeyMismatchError, dropped_norm_keys, mismatch_message

__all__ = ["check_norm_keys_on_load", "ADVICE"]

logger = logging.getLogger(__name__)

#: What a refused run can do.
ADVICE = ("Those norm weights would keep their initial values; rename the checkpoint's keys to the model's, or "
          "pass --allow-norm-key-mismatch to load it anyway")


def check_norm_keys_on_load(checkpointer, where: str, allow_mismatch: bool = False):
    """Make ``checkpointer`` (a ``DetectionCheckpointer``) refuse a checkpoint that leaves norm weights behind.

    ``where`` names the setting the path comes from (``MODEL.WEIGHTS``). The
    checkpointer is changed in place (its ``load`` and ``_load_model``), so the
    hooks that hold it (``PeriodicCheckpointer``) keep the same object; returned
    for chaining. With ``allow_mismatch`` the keys are logged as a WARNING.
    """
    load, load_model = checkpointer.load, checkpointer._load_model
    loading = {}

    def checked_load(path, *args, **kwargs):
        loading["path"] = path
        return load(path, *args, **kwargs)

    def checked_load_model(checkpoint):
        incompatible = load_model(checkpoint)
        missing, unexpected = dropped_norm_keys(
            checkpointer.model, incompatible.missing_keys, incompatible.unexpected_keys,
            [shapes[0] for shapes in incompatible.incorrect_shapes])
        if missing:
            message = mismatch_message(loading.get("path", "?"), where, missing, unexpected)
            if not allow_mismatch:
                raise NormKeyMismatchError(f"{message}. {ADVICE}")
            logger.warning(f"{message}; loading it anyway (--allow-norm-key-mismatch): those norm layers keep their "
                           "initial weights")
        return incompatible

    checkpointer.load, checkpointer._load_model = checked_load, checked_load_model
    return checkpointer
