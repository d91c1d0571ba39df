"""``TokenDynamicGroupNorm``: DGN for channels-last tokens, as in transformers.

A ViT's norm sees ``(B, L, C)`` tokens (any ``(..., C)``; ``(B, C)`` pooled
features). The grouping, options, buffers, running statistics, regroup and
checkpoint handling are :class:`~dgn_plugins.layer.DynamicGrouping`'s, the
same code as ``DynamicGroupNorm``'s; only the normalisation domain differs,
and both domains are views onto the one ``dgn::group_norm`` operator
(``(N, C, *)`` per sample over each group's channels):

- ``over="token"``: the tokens as ``(M, C)`` rows, ``M`` = every leading
  dimension: each token is a sample with one element per channel, so it is
  normalised over its group's channels (a grouped LayerNorm; one group *is*
  ``nn.LayerNorm``). The running channel statistics cover batch x tokens.
- ``over="sequence"``: ``(B, L, C)`` as the transposed view ``(B, C, L)``:
  each sample over its group's channels x all tokens; with GN's grouping,
  ``F.group_norm`` of the transposed tokens (timm's ``GroupNorm1``).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .functional import assignment_matrix, dynamic_group_norm_with_stats, group_norm_by_assignment
from .layer import DynamicGrouping, LayoutError, wrong_layout

__all__ = ["TokenDynamicGroupNorm", "DOMAINS", "to_channels_first", "from_channels_first", "check_tokens"]

#: The normalisation domains of the token layer (see the module docstring).
DOMAINS = ("token", "sequence")


def check_over(over: str) -> str:
    if over not in DOMAINS:
        raise ValueError(f"over must be one of {', '.join(repr(d) for d in DOMAINS)}, got {over!r}")
    return over


def check_tokens(layer: nn.Module, input: Tensor, over: str) -> None:
    """:class:`~dgn_plugins.layer.LayoutError` (a ValueError), one line, unless ``input`` is channels-last tokens
    of the layer's width."""
    channels = layer.num_channels
    least = 1 if over == "token" else 2  # the sequence domain needs a sample dimension
    if input.dim() < least or input.shape[-1] != channels:
        expected = (f"channels-last tokens (..., {channels})" if over == "token"
                    else f"channels-last tokens (B, *, {channels})")
        raise LayoutError(wrong_layout(layer, input, expected, "DGN / DynamicGroupNorm",
                                      input.dim() >= 2 and input.shape[1] == channels))


def to_channels_first(input: Tensor, over: str) -> Tensor:
    """The operator's ``(N, C, *)`` view of tokens: ``(M, C)`` rows, or ``(B, C, L)`` samples."""
    channels = input.shape[-1]
    if over == "token":
        return input.reshape(-1, channels)
    return input.reshape(input.shape[0], -1, channels).transpose(1, 2)


def from_channels_first(output: Tensor, input: Tensor, over: str) -> Tensor:
    """Back to the tokens' shape (a view where the layout allows it)."""
    if over == "token":
        return output.reshape(input.shape)
    return output.transpose(1, 2).reshape(input.shape)


class TokenDynamicGroupNorm(DynamicGrouping, nn.LayerNorm):
    r"""DGN over channels-last tokens: a grouped LayerNorm (``over="token"``) or a GN of the sequence.

    Args:
        num_channels: C, the last dimension of the input (..., C).
        num_groups, group_size, alpha, percentile, momentum, track_channel_stats,
        cluster_features, seed, n_init, max_iter: as in
            :class:`~dgn_plugins.DynamicGroupNorm` (the same code).
        over: ``"token"`` (each token over its group's channels) or
            ``"sequence"`` (each sample over its group's channels x all tokens).
        eps, elementwise_affine, bias: as in ``nn.LayerNorm`` (ViTs use eps=1e-6).

    It subclasses ``nn.LayerNorm`` (``weight``, ``bias`` of shape (C,);
    toolkits treat it as LN, and ``_abbr_ = 'ln'`` gives mmcv's ``ln1``/``ln2``
    names, so LN checkpoints load). With one group and ``over="token"`` it
    computes ``nn.LayerNorm(C)``.

    Shape:
        - Input: :math:`(*, C)` (``over="sequence"``: :math:`(B, *, C)`)
        - Output: same shape as input

    Examples::

        >>> tokens = torch.randn(8, 197, 768)
        >>> m = TokenDynamicGroupNorm(768, num_groups=1, eps=1e-6)     # nn.LayerNorm(768, eps=1e-6)
        >>> m = TokenDynamicGroupNorm(768, num_groups=32)               # grouped LN, regrouped by DGN's rule
        >>> m = TokenDynamicGroupNorm(768, num_groups=32, over="sequence")
        >>> out = m(tokens)
    """

    _abbr_ = "ln"  # mmcv's infer_abbr: layers named ln1 / ln2, as LN checkpoints have them

    def __init__(
        self,
        num_channels: int,
        num_groups: int = 32,
        over: str = "token",
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        *,
        group_size: Optional[int] = None,
        alpha: float = 0.5,
        percentile: float = 0.75,
        momentum: float = 0.1,
        track_channel_stats: bool = True,
        cluster_features: Sequence[str] = ("mean",),
        seed: int = 0,
        n_init: Union[int, str] = "auto",
        max_iter: int = 300,
        device=None,
        dtype=None,
        bias: bool = True,
    ) -> None:
        check_over(over)
        grouping, policy = self._options(num_channels, num_groups, group_size, alpha, percentile, cluster_features,
                                         seed, n_init, max_iter, momentum)
        nn.LayerNorm.__init__(self, num_channels, eps, elementwise_affine, bias=bias, device=device, dtype=dtype)
        self.over = over
        self.affine = elementwise_affine  # the shared code's (and nn.GroupNorm's) name for it
        self._init_grouping(num_channels, grouping, policy, group_size, alpha, momentum, track_channel_stats, device,
                            dtype)

    @classmethod
    def check_options(cls, **options) -> dict:
        check_over(options.get("over", "token"))
        return super().check_options(**options)

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles the portable formulation
            rows = input.reshape(-1, self.num_channels) if self.over == "token" else \
                input.reshape(input.shape[0], -1, self.num_channels).transpose(1, 2)
            y = group_norm_by_assignment(rows, assignment_matrix(self.group_id, self.num_groups), self.weight,
                                         self.bias, self.eps)
            return y.reshape(input.shape) if self.over == "token" else y.transpose(1, 2).reshape(input.shape)
        return self._forward(input)

    @torch.jit.unused
    def _forward(self, input: Tensor) -> Tensor:
        check_tokens(self, input, self.over)
        buffers, parameters = self._buffers, self._parameters
        # No [N, C] statistics: for rows of one value per channel they would be a copy of the input.
        y = dynamic_group_norm_with_stats(to_channels_first(input, self.over), buffers["group_id"], self.num_groups,
                                          parameters["weight"], parameters["bias"], self.eps, buffers["group_count"],
                                          self._running_stats(), channel_stats=False)[0]
        return from_channels_first(y, input, self.over)

    def extra_repr(self) -> str:
        return (f"{self.num_groups}, {self.num_channels}, over={self.over!r}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, {self._grouping_repr()}")
