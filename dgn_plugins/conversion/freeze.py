"""Inference conversion, in the manner of detectron2's ``FrozenBatchNorm2d.convert_frozen_batchnorm``.

A trained DGN layer no longer needs its training machinery (running channel
statistics, regrouping, bounds). ``freeze`` swaps each one for the cheapest
module with the same output:

- a plain ``nn.GroupNorm`` when the grouping is GN's (aligned contiguous
  blocks of equal size, whatever the group labels): deployment then needs
  nothing from this package;
- otherwise a ``FrozenDynamicGroupNorm``: a fixed grouping, the fast paths in
  eager mode, and standard operators under TorchScript, tracing,
  ``torch.export`` and ONNX export.

A token layer (``TokenDynamicGroupNorm``) becomes a plain ``nn.LayerNorm``
when it has one group and normalises per token, else a
``FrozenTokenDynamicGroupNorm``: the same fixed grouping in its domain.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..functional import assignment_matrix, dynamic_group_norm, dynamic_group_norm_with_stats, group_norm_by_assignment
from ..layer import DynamicGroupNorm, LayoutError, wrong_layout
from ..token_layer import TokenDynamicGroupNorm, check_tokens, from_channels_first, to_channels_first
from .convert import _copy_affine

__all__ = ["FrozenDynamicGroupNorm", "FrozenTokenDynamicGroupNorm", "freeze"]


class FrozenDynamicGroupNorm(nn.Module):
    """Group normalization over a fixed, arbitrary grouping; no statistics, no regrouping.

    ``weight`` and ``bias`` stay parameters (state-dict keys as in GN); the
    grouping is the ``group_id`` buffer. The one-hot ``assignment`` [C, K]
    used for export is derived from it.

    Shape:
        - Input: :math:`(N, C, *)` where :math:`C` is ``group_id.numel()``
        - Output: :math:`(N, C, *)` (same shape as input)

    Examples::

        >>> frozen = FrozenDynamicGroupNorm.from_layer(trained_dgn_layer)
        >>> model = freeze(model)  # every DGN layer: nn.GroupNorm if GN's grouping, else this
    """

    def __init__(self, group_id: Tensor, num_groups: int, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        group_id = torch.as_tensor(group_id).to(device=device, dtype=torch.long)
        self.num_channels = int(group_id.numel())
        self.num_groups = int(num_groups)
        self.eps = float(eps)
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(self.num_channels, device=device, dtype=dtype))
            self.bias = nn.Parameter(torch.zeros(self.num_channels, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("group_id", group_id)
        self.register_buffer("group_count", torch.bincount(group_id, minlength=self.num_groups), persistent=False)
        self.register_buffer("assignment", assignment_matrix(group_id, self.num_groups), persistent=False)

    @classmethod
    def from_layer(cls, layer: DynamicGroupNorm) -> "FrozenDynamicGroupNorm":
        reference = layer.weight if layer.affine else layer.group_id
        frozen = cls(layer.group_id.detach().clone(), layer.num_groups, layer.eps, layer.affine,
                     device=layer.group_id.device, dtype=reference.dtype if layer.affine else None)
        _copy_affine(layer, frozen)
        _keep_name(layer, frozen)
        return frozen

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return group_norm_by_assignment(input, self.assignment, self.weight, self.bias, self.eps)
        return self._python_forward(input)

    @torch.jit.unused
    def _python_forward(self, input: Tensor) -> Tensor:
        if input.dim() < 2 or input.shape[1] != self.num_channels:  # as DynamicGroupNorm's
            raise LayoutError(wrong_layout(self, input, f"channels first (N, {self.num_channels}, *)",
                                           "TokenDGN / TokenDynamicGroupNorm",
                                           input.dim() > 0 and input.shape[-1] == self.num_channels))
        return dynamic_group_norm(input, self.group_id, self.num_groups, self.weight, self.bias, self.eps,
                                  self.group_count)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        with torch.no_grad():  # derived buffers follow a loaded grouping
            self.group_count = torch.bincount(self.group_id, minlength=self.num_groups)
            self.assignment = assignment_matrix(self.group_id, self.num_groups)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, grouping=fixed"


class FrozenTokenDynamicGroupNorm(FrozenDynamicGroupNorm):
    """A frozen token layer: a fixed grouping over channels-last tokens, per token or per sample (``over``)."""

    _abbr_ = "ln"

    def __init__(self, group_id: Tensor, num_groups: int, over: str = "token", eps: float = 1e-5,
                 affine: bool = True, device=None, dtype=None) -> None:
        super().__init__(group_id, num_groups, eps, affine, device=device, dtype=dtype)
        self.over = over

    @classmethod
    def from_layer(cls, layer: TokenDynamicGroupNorm) -> "FrozenTokenDynamicGroupNorm":
        reference = layer.weight if layer.affine else layer.group_id
        frozen = cls(layer.group_id.detach().clone(), layer.num_groups, layer.over, layer.eps, layer.affine,
                     device=layer.group_id.device, dtype=reference.dtype if layer.affine else None)
        _copy_affine(layer, frozen)
        _keep_name(layer, frozen)
        return frozen

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            rows = input.reshape(-1, self.num_channels) if self.over == "token" else \
                input.reshape(input.shape[0], -1, self.num_channels).transpose(1, 2)
            y = group_norm_by_assignment(rows, self.assignment, self.weight, self.bias, self.eps)
            return y.reshape(input.shape) if self.over == "token" else y.transpose(1, 2).reshape(input.shape)
        return self._python_forward(input)

    @torch.jit.unused
    def _python_forward(self, input: Tensor) -> Tensor:
        check_tokens(self, input, self.over)
        y = dynamic_group_norm_with_stats(to_channels_first(input, self.over), self.group_id, self.num_groups,
                                          self.weight, self.bias, self.eps, self.group_count, channel_stats=False)[0]
        return from_channels_first(y, input, self.over)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", over={self.over!r}"


def _keep_name(layer, frozen) -> None:
    """The module path a layer learned (``name_layers``), for the frozen layer's layout errors."""
    if getattr(layer, "layer_name", ""):
        frozen.layer_name = layer.layer_name


def _layer_norm_from(layer: TokenDynamicGroupNorm) -> nn.LayerNorm:
    reference = layer.weight if layer.affine else None
    norm = nn.LayerNorm(layer.num_channels, layer.eps, layer.affine, bias=layer.bias is not None or not layer.affine,
                        device=layer.group_id.device, dtype=reference.dtype if reference is not None else None)
    _copy_affine(layer, norm)
    return norm


def _group_norm_from(layer: DynamicGroupNorm) -> nn.GroupNorm:
    reference = layer.weight if layer.affine else None
    norm = nn.GroupNorm(layer.num_groups, layer.num_channels, layer.eps, layer.affine,
                        device=layer.group_id.device, dtype=reference.dtype if reference is not None else None)
    _copy_affine(layer, norm)
    return norm


def freeze(module: nn.Module) -> nn.Module:
    """Return ``module`` with every DGN layer (channels first or tokens) replaced for inference.

    Recursive and in place on children; if ``module`` itself is a DGN layer
    the replacement is returned. Grouping GN's -> ``nn.GroupNorm``; any other
    grouping -> ``FrozenDynamicGroupNorm``; a token layer with one group per token ->
    ``nn.LayerNorm``, else ``FrozenTokenDynamicGroupNorm``. Outputs are unchanged (up to float
    rounding); weights, device, dtype, mode and ``requires_grad`` carry over.
    """
    if isinstance(module, TokenDynamicGroupNorm):
        if module.num_groups == 1 and module.over == "token":
            return _layer_norm_from(module)
        return FrozenTokenDynamicGroupNorm.from_layer(module)
    if isinstance(module, DynamicGroupNorm):
        if module.grouping.is_contiguous_equal():
            return _group_norm_from(module)
        return FrozenDynamicGroupNorm.from_layer(module)
    for name, child in module.named_children():
        frozen = freeze(child)
        if frozen is not child:
            module.add_module(name, frozen)
    return module
