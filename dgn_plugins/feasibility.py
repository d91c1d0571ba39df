"""Which layers of a model cannot meet their DGN options, by module path.

A DGN layer built by a toolkit (``build_norm_layer``, Detectron2's
``get_norm``) does not know where in the model it will sit, so its error can
name C, K and the option, not the layer. On that error the toolkit glue builds
the same model again with a probe standing in for each DGN layer
(:class:`ProbeGroupNorm` for ``DynamicGroupNorm``, :class:`ProbeTokenNorm` for
``TokenDynamicGroupNorm``): it records the error instead of raising, and once
the model exists :func:`infeasible_layers` reads every failing layer's module path.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from torch import nn

from .layer import DynamicGroupNorm
from .token_layer import TokenDynamicGroupNorm

__all__ = ["ProbeGroupNorm", "ProbeTokenNorm", "PROBES", "infeasible_layers", "describe_infeasible"]


def _problem(layer_class, num_channels: int, options: dict) -> Optional[str]:
    """The error building ``layer_class(num_channels, **options)`` raises, or None."""
    try:
        layer_class(num_channels, **options)
    except ValueError as error:
        return str(error)
    return None


class ProbeGroupNorm(nn.GroupNorm):
    """DGN's signature; builds a one-group GN and keeps DGN's error, if any, in ``problem``."""

    _abbr_ = "gn"  # the checkpoint-key abbreviation mmcv infers, as DynamicGroupNorm's
    #: The layer it stands in for, and that layer's defaults of the options ``options`` always holds.
    layer = DynamicGroupNorm
    defaults = dict(num_groups=32, eps=1e-5, affine=True)

    def __init__(self, num_channels: int, num_groups: int = 32, eps: float = 1e-5, affine: bool = True, **options):
        super().__init__(1, num_channels, eps, affine)
        self.options = dict(options, num_groups=num_groups, eps=eps, affine=affine)
        self.problem = _problem(self.layer, num_channels, self.options)


class ProbeTokenNorm(nn.LayerNorm):
    """``TokenDynamicGroupNorm``'s signature; builds a LayerNorm and keeps the token layer's error in ``problem``."""

    _abbr_ = "ln"  # as TokenDynamicGroupNorm's
    layer = TokenDynamicGroupNorm
    defaults = dict(num_groups=32, over="token", eps=1e-5, elementwise_affine=True)

    def __init__(self, num_channels: int, num_groups: int = 32, over: str = "token", eps: float = 1e-5,
                 elementwise_affine: bool = True, **options):
        super().__init__(num_channels, eps, elementwise_affine)
        self.options = dict(options, num_groups=num_groups, over=over, eps=eps, elementwise_affine=elementwise_affine)
        self.problem = _problem(self.layer, num_channels, self.options)


#: Each DGN layer class and its probe.
PROBES = {DynamicGroupNorm: ProbeGroupNorm, TokenDynamicGroupNorm: ProbeTokenNorm}


def infeasible_layers(model: nn.Module) -> List[Tuple[str, str, dict]]:
    """``(module path, error, options)`` of every probe layer whose options cannot be met."""
    return [(name, m.problem, m.options) for name, m in model.named_modules()
            if isinstance(m, tuple(PROBES.values())) and m.problem]


def describe_infeasible(layers: List[Tuple[str, str, dict]], where: str) -> str:
    """One line: how many layers, the first one's path and error, ``where`` to change the options."""
    path, problem, _ = layers[0]
    others = ""
    if len(layers) > 1:
        shown = ", ".join(p for p, _, _ in layers[1:4])
        others = f"; also {len(layers) - 1} more: {shown}" + (", ..." if len(layers) > 4 else "")
    return f"layer {path}: {problem} (set in {where}){others}"
