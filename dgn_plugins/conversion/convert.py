"""Module conversion helpers, in the manner of detectron2's FrozenBatchNorm2d.

``convert_gn_to_dgn`` swaps every ``nn.GroupNorm`` of a model for a
``DynamicGroupNorm`` with the same weights; at GN's default grouping the
outputs are unchanged. ``convert_ln_to_dgn`` does the same for the
``nn.LayerNorm`` of transformers (timm, torchvision, Detectron2 ViTs): a
``TokenDynamicGroupNorm`` that keeps ``weight``/``bias``; with one group
(per token) the outputs are unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from ..grouping import DGNOptionError
from ..layer import DynamicGroupNorm
from ..token_layer import TokenDynamicGroupNorm

__all__ = ["convert_gn_to_dgn", "convert_ln_to_dgn"]


def _copy_affine(source: nn.Module, target: nn.Module) -> None:
    """Give ``target`` the affine parameters of ``source`` (values and ``requires_grad``) and its mode."""
    for name in ("weight", "bias"):
        value = getattr(source, name, None)
        if value is not None:
            with torch.no_grad():
                getattr(target, name).copy_(value)
            getattr(target, name).requires_grad_(value.requires_grad)
    target.train(source.training)


def _convert_children(module: nn.Module, convert, path: str, dgn_kwargs: dict) -> nn.Module:
    """Apply ``convert`` to every child, in place, naming each by its module path (for errors)."""
    for name, child in module.named_children():
        new_child = convert(child, _path=f"{path}.{name}" if path else name, **dgn_kwargs)
        if new_child is not child:
            module.add_module(name, new_child)
    return module


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
    return _convert_children(module, convert_gn_to_dgn, _path, dgn_kwargs)


def convert_ln_to_dgn(module: nn.Module, _path: str = "", **dgn_kwargs) -> nn.Module:
    """Return ``module`` with every ``nn.LayerNorm`` over one dimension replaced by a token DGN layer.

    Recursive and in place on children, as :func:`convert_gn_to_dgn`.
    ``dgn_kwargs`` go to ``TokenDynamicGroupNorm`` (``num_groups`` or
    ``group_size``, ``over``, ``alpha``, ...); ``eps``, ``weight``/``bias``,
    device, dtype, mode and ``requires_grad`` carry over. A LayerNorm over
    several trailing dimensions is no token norm: it is left as it is.
    """
    if (isinstance(module, nn.LayerNorm) and not isinstance(module, TokenDynamicGroupNorm)
            and len(module.normalized_shape) == 1):
        channels = module.normalized_shape[0]
        reference = module.weight
        try:
            converted = TokenDynamicGroupNorm(
                channels,
                eps=module.eps,
                elementwise_affine=module.elementwise_affine,
                bias=getattr(module, "bias", None) is not None or not module.elementwise_affine,
                device=reference.device if reference is not None else None,
                dtype=reference.dtype if reference is not None else None,
                **dgn_kwargs,
            )
        except DGNOptionError as error:
            where = _path or "the module itself"
            raise DGNOptionError(f"convert_ln_to_dgn: layer {where} (LayerNorm({channels})): {error}") from None
        _copy_affine(module, converted)
        converted.layer_name = _path
        return converted
    return _convert_children(module, convert_ln_to_dgn, _path, dgn_kwargs)
