"""Module conversion helpers, in the manner of detectron2's FrozenBatchNorm2d.

``convert_gn_to_dgn`` swaps every ``nn.GroupNorm`` of a model for a
``DynamicGroupNorm`` with the same weights; at GN's default grouping the
outputs are unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from ..grouping import DGNOptionError
from ..layer import DynamicGroupNorm

__all__ = ["convert_gn_to_dgn"]


def _copy_affine(source: nn.Module, target: nn.Module) -> None:
    """Give ``target`` the affine parameters of ``source`` (values and ``requires_grad``) and its mode."""
    if source.affine:
        with torch.no_grad():
            target.weight.copy_(source.weight)
            target.bias.copy_(source.bias)
        target.weight.requires_grad_(source.weight.requires_grad)
        target.bias.requires_grad_(source.bias.requires_grad)
    target.train(source.training)


def convert_gn_to_dgn(module: nn.Module, _path: str = "", **dgn_kwargs) -> nn.Module:
    """Return ``module`` with every ``nn.GroupNorm`` replaced by a DGN layer.

    Works recursively and in place on children; if ``module`` itself is a
    GroupNorm a new layer is returned. ``dgn_kwargs`` go to
    ``DynamicGroupNorm`` (``alpha``, ``percentile``, ...). Weights, device,
    dtype, training mode and ``requires_grad`` carry over. Options a layer
    cannot meet raise :class:`~dgn_plugins.grouping.DGNOptionError` naming its
    module path.
    """
    if isinstance(module, nn.GroupNorm) and not isinstance(module, DynamicGroupNorm):
        kwargs = dict(dgn_kwargs)
        if kwargs.get("group_size") is None:
            kwargs.setdefault("num_groups", module.num_groups)
        reference = module.weight if module.affine else None
        try:
            converted = DynamicGroupNorm(
                module.num_channels,
                eps=module.eps,
                affine=module.affine,
                device=reference.device if reference is not None else None,
                dtype=reference.dtype if reference is not None else None,
                **kwargs,
            )
        except DGNOptionError as error:
            where = _path or "the module itself"
            raise DGNOptionError(f"convert_gn_to_dgn: layer {where} (GroupNorm({module.num_groups}, "
                                 f"{module.num_channels})): {error}") from None
        _copy_affine(module, converted)
        return converted
    for name, child in module.named_children():
        new_child = convert_gn_to_dgn(child, _path=f"{_path}.{name}" if _path else name, **dgn_kwargs)
        if new_child is not child:
            module.add_module(name, new_child)
    return module
