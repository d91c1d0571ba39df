"""Model-level operations: find DGN layers, regroup them all."""
from __future__ import annotations

from typing import List, Optional, Tuple

from torch import nn

from ..conversion.freeze import FrozenDynamicGroupNorm
from ..layer import DynamicGrouping
from ..regrouping.policy import RegroupPolicy
from ..regrouping.rule import RegroupReport
from .distributed import average_channel_stats, broadcast_groupings

__all__ = ["dgn_layers", "name_layers", "is_trainable", "regroup_model", "follow_groupings"]


def _clean_name(name: str) -> str:
    # DDP / MMEngine wrappers prefix every name with "module."
    return name[len("module."):] if name.startswith("module.") else name


def dgn_layers(model: nn.Module) -> List[Tuple[str, DynamicGrouping]]:
    """``(name, layer)`` for every DGN layer in ``model``: channels first or tokens (any ``DynamicGrouping``)."""
    return [(_clean_name(n), m) for n, m in model.named_modules() if isinstance(m, DynamicGrouping)]


def name_layers(model: nn.Module) -> int:
    """Tell every DGN layer its module path (``layer_name``), so that its errors name it; returns how many.

    A layer cannot see where it sits in a model; the controller, the hooks and
    the launchers call this once the model exists. Frozen layers (``freeze``)
    are named too: they keep DGN's layout check.
    """
    layers = [(_clean_name(n), m) for n, m in model.named_modules()
              if isinstance(m, (DynamicGrouping, FrozenDynamicGroupNorm))]
    for name, layer in layers:
        layer.layer_name = name
    return len(layers)


def is_trainable(layer: DynamicGrouping) -> bool:
    """Regroup only layers that learn: training mode, parameters not frozen.

    This is how frozen stages (eval mode + ``requires_grad=False``) and
    ``norm_cfg=dict(..., requires_grad=False)`` are skipped.
    """
    if not layer.training:
        return False
    params = list(layer.parameters(recurse=False))
    return all(p.requires_grad for p in params) if params else True


def regroup_model(
    model: nn.Module,
    *,
    only_trainable: bool = True,
    percentile: Optional[float] = None,
    policy: Optional[RegroupPolicy] = None,
    sync: bool = True,
) -> List[RegroupReport]:
    """Regroup every (trainable) DGN layer of ``model``; one report per layer.

    ``policy`` overrides, for every layer, the fields of the layer's own
    policy it sets; ``percentile`` is a shortcut for ``policy.percentile``.

    With ``torch.distributed`` initialised and ``sync``, ranks first average
    their running statistics and end with rank 0's groupings, so all ranks
    hold identical groupings afterwards.
    """
    layers = [
        (name, layer)
        for name, layer in dgn_layers(model)
        if not only_trainable or is_trainable(layer)
    ]
    if sync:
        average_channel_stats(layer for _, layer in layers)
    reports = [layer.regroup(percentile=percentile, name=name, policy=policy) for name, layer in layers]
    if sync:
        broadcast_groupings(layer for _, layer in layers)
    return reports


def follow_groupings(target, source) -> int:
    """Give ``target``'s DGN layers the groupings of ``source``'s (matched by name).

    An averaged copy of the model (``EMAHook``) must normalise with the same
    groups as the model it averages; mmengine copies integer buffers only when
    ``update_buffers=False`` and then only at its next update. Returns the
    number of layers that changed.
    """
    source_layers = dict(dgn_layers(source))
    changed = 0
    for name, layer in dgn_layers(target):
        origin = source_layers.get(name)
        if origin is None or layer.num_channels != origin.num_channels:
            continue
        if not layer.group_id.equal(origin.group_id.to(layer.group_id.device)):
            layer.set_group_ids(origin.group_id)
            changed += 1
        layer.num_regroups.copy_(origin.num_regroups)
    return changed
