"""``DynamicGroupNorm``: GroupNorm whose groups change during training.

What every DGN layer shares, whatever its input layout, is :class:`DynamicGrouping`:
the options, the grouping buffers, the running statistics, the regroup and the
checkpoint checks. ``DynamicGroupNorm`` (channels first) and
:class:`~dgn_plugins.token_layer.TokenDynamicGroupNorm` (channels last) add a
layout and a forward to it.

``DynamicGroupNorm`` subclasses ``nn.GroupNorm`` so that toolkits treat it as GN (init rules,
weight-decay rules, ``is_norm`` checks, ``gn``/``norm`` checkpoint keys), and
keeps its grouping in persistent buffers whose shapes depend only on C:

- ``group_id`` [C] int64: the group of each channel;
- ``channel_mean_ema``, ``channel_var_ema`` [C]: running (EMA over training
  iterations) per-channel statistics, the input of the regroup rule; float32
  (float64 in a float64 layer), whatever ``.half()`` / ``.bfloat16()`` do to
  the parameters, like the group statistics of the forward;
- ``num_stat_updates``, ``num_regroups``: scalar counters (the first seeds the
  EMA, the second the k-means restarts, so a resumed run regroups the same way).

At construction the grouping is GN's, so a GN checkpoint loads and gives
identical outputs.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from . import compat, ops  # noqa: F401  (ops registers the dgn:: operators)
from .errors import ConfigError
from .functional import assignment_matrix, compute_dtype, dynamic_group_norm_with_stats, group_norm_by_assignment
from .grouping import (
    DGNOptionError,
    Grouping,
    check_group_ids,
    default_group_ids,
    group_bounds,
    infeasible_advice,
    resolve_num_groups,
)
from .regrouping.policy import CLUSTER_FEATURES, RegroupPolicy, check_momentum
from .regrouping.rule import RegroupReport, plan_regroup, standardize

__all__ = ["DynamicGrouping", "DynamicGroupNorm", "CLUSTER_FEATURES", "LayoutError", "wrong_layout"]


class LayoutError(ValueError, ConfigError):
    """A DGN layer given the other layout (tokens to ``DGN``, channels first to ``TokenDGN``): a norm type to change
    in the config, so the launchers print it as one line (exit status 2); a ``ValueError`` for everyone else."""


def wrong_layout(layer: nn.Module, input: Tensor, expected: str, other: str, looks_like_other: bool) -> str:
    """One line: the layer (module path once named, see ``name_layers``), the shape it got, the layout it expects."""
    name = getattr(layer, "layer_name", "")
    where = f"layer {name} ({type(layer).__name__}({layer.num_channels}))" if name else \
        f"{type(layer).__name__}({layer.num_channels}) (module path unknown until dgn_plugins.name_layers(model))"
    hint = f"; the input looks like the other layout: use {other} there" if looks_like_other else ""
    return f"{where} got input of shape {tuple(input.shape)}, expects {expected}{hint}"


class DynamicGrouping(nn.Module):
    """What every DGN layer holds, whatever its input layout: options, grouping, statistics, regroup.

    Not a layer by itself: a subclass also derives from the torch norm it
    generalises (``nn.GroupNorm``, ``nn.LayerNorm``), builds its parameters
    there, calls :meth:`_init_grouping` and defines the forward. The training
    level (controller, ``regroup_model``, distributed sync, records, freeze)
    sees only this class.
    """

    # TorchScript scripts the forward only
    __jit_unused_properties__ = ["grouping", "percentile", "cluster_features", "seed", "n_init", "max_iter"]
    #: Set by :func:`dgn_plugins.training.model.name_layers` (module path), for error messages.
    layer_name = ""

    def _init_grouping(self, num_channels: int, grouping, policy: RegroupPolicy, group_size: Optional[int],
                       alpha: float, momentum: float, track_channel_stats: bool, device, dtype) -> None:
        """Attributes and buffers, from what :meth:`_options` checked (after the parent's ``__init__``)."""
        num_groups, default_size, bounds, group_id = grouping
        self.num_channels = num_channels
        self.num_groups = num_groups
        self.group_size = group_size
        self.default_group_size = default_size
        self.alpha = alpha
        self.bounds = bounds
        self.policy = policy  # this layer's regroup settings; a model-level policy may override them
        self.momentum = momentum
        self.track_channel_stats = track_channel_stats

        self.register_buffer("group_id", group_id.to(device))
        # Like the group statistics: float32, float64 for a float64 layer, never half precision
        # (a 0.1-momentum EMA in bfloat16 stalls). _apply keeps it so through .half() / .to(dtype).
        stats_dtype = compute_dtype(dtype if dtype is not None else torch.get_default_dtype())
        self.register_buffer("channel_mean_ema", torch.zeros(num_channels, device=device, dtype=stats_dtype))
        self.register_buffer("channel_var_ema", torch.ones(num_channels, device=device, dtype=stats_dtype))
        self.register_buffer("num_stat_updates", torch.tensor(0, dtype=torch.long, device=device))
        self.register_buffer("num_regroups", torch.tensor(0, dtype=torch.long, device=device))
        # Derived from group_id; recomputed whenever the grouping changes.
        self.register_buffer("group_count", torch.bincount(group_id, minlength=num_groups).to(device), persistent=False)

    @classmethod
    def _options(cls, num_channels, num_groups, group_size, alpha, percentile, cluster_features, seed, n_init,
                 max_iter, momentum):
        """``(grouping, policy)``, every option checked before any parameter is built."""
        grouping = cls._grouping(num_channels, num_groups, group_size, alpha)
        policy = RegroupPolicy.full(percentile, cluster_features, seed, n_init, max_iter)  # validates
        check_momentum(momentum)
        return grouping, policy

    def _running_stats(self):
        """The operator's running-statistics arguments in training, else None."""
        buffers = self._buffers
        if self.training and self.track_channel_stats:
            return buffers["channel_mean_ema"], buffers["channel_var_ema"], buffers["num_stat_updates"], self.momentum
        return None

    @staticmethod
    def _grouping(num_channels: int, num_groups: int, group_size: Optional[int], alpha: float):
        """``(K, default group size, bounds, GN's group ids)``; DGNOptionError naming the option if infeasible."""
        try:
            num_groups, default_size = resolve_num_groups(num_channels, num_groups, group_size)
            bounds = group_bounds(default_size, alpha)
            group_id = default_group_ids(num_channels, num_groups, bounds)  # raises if infeasible
        except ValueError as error:  # say which option to change, not only C/K/L/H
            by = "group_size" if group_size is not None else "num_groups"
            advice = ""
            if "cannot split" in str(error):
                advice = "; " + infeasible_advice(num_channels, num_groups, default_size, alpha, by)
            raise DGNOptionError(
                f"DGN layer with C={num_channels} channels ({by}={group_size if group_size is not None else num_groups}, "
                f"alpha={alpha}): {error}{advice}"
            ) from None
        return num_groups, default_size, bounds, group_id

    @classmethod
    def check_options(cls, **options) -> dict:
        """Check layer keyword arguments without building a layer; returns them.

        For norm factories (``DGNNorm``, ``norm_cfg``) that should fail when
        configured, not at the first layer deep inside a model builder. Unknown
        names raise ``TypeError``; values the layer would refuse ``ValueError``
        (:class:`~dgn_plugins.grouping.DGNOptionError` for the grouping, checked
        on two groups' worth of channels).
        """
        parameters = inspect.signature(cls.__init__).parameters
        inspect.signature(cls).bind(1, **options)  # TypeError on unknown or duplicate names

        def get(name):
            return options.get(name, parameters[name].default)

        num_groups, group_size = get("num_groups"), get("group_size")
        cls._grouping(2 * (group_size or num_groups), num_groups, group_size, get("alpha"))
        RegroupPolicy.full(**{name: get(name) for name in ("percentile", "cluster_features", "seed", "n_init",
                                                             "max_iter")})
        check_momentum(get("momentum"))
        return dict(options)

    def _apply(self, fn, recurse=True):
        # .half() / .bfloat16() leave the running statistics in float32 (.double() makes them float64).
        super()._apply(fn, recurse)
        for name in ("channel_mean_ema", "channel_var_ema"):
            buffer = getattr(self, name)
            if buffer.dtype != compute_dtype(buffer.dtype):
                setattr(self, name, buffer.to(compute_dtype(buffer.dtype)))
        return self

    # ------------------------------------------------------------------ policy
    # Read-only views of the layer's policy, under the constructor's names.
    percentile = property(lambda self: self.policy.percentile)
    cluster_features = property(lambda self: self.policy.cluster_features)
    seed = property(lambda self: self.policy.seed)
    n_init = property(lambda self: self.policy.n_init)
    max_iter = property(lambda self: self.policy.max_iter)

    # ----------------------------------------------------------------- grouping
    @property
    def grouping(self) -> Grouping:
        """The grouping as sizes / offsets / channels sorted by group."""
        return Grouping.from_group_ids(self.group_id, self.num_groups)

    def reset_grouping(self) -> None:
        """Back to GN's contiguous grouping."""
        self.set_group_ids(default_group_ids(self.num_channels, self.num_groups))

    @torch.no_grad()
    def set_group_ids(self, group_id) -> None:
        """Validate and swap in a new grouping at once (never half-updated)."""
        group_id = torch.as_tensor(group_id)
        check_group_ids(group_id, self.num_channels, self.num_groups, self.bounds)
        group_id = group_id.to(device=self.group_id.device, dtype=torch.long)
        group_count = torch.bincount(group_id, minlength=self.num_groups)
        self.group_id.copy_(group_id)
        self.group_count.copy_(group_count)

    def cluster_feature_matrix(self, cluster_features: Optional[Sequence[str]] = None) -> np.ndarray:
        """Standardised [C, d] k-means features from the running statistics (default: the policy's)."""
        stats = {
            "mean": self.channel_mean_ema.double().cpu().numpy(),
            "var": self.channel_var_ema.double().cpu().numpy(),
        }
        stats["std"] = np.sqrt(np.maximum(stats["var"], 0.0))
        features = self.cluster_features if cluster_features is None else cluster_features
        return standardize(np.stack([stats[f] for f in features], axis=1))

    def regroup(self, percentile: Optional[float] = None, seed: Optional[int] = None, name: str = "",
                policy: Optional[RegroupPolicy] = None) -> RegroupReport:
        """Apply the DGN rule once (see :mod:`dgn_plugins.regrouping.rule`).

        ``policy`` overrides the fields of the layer's policy it sets,
        ``percentile`` then overrides that; ``seed`` is the solver's seed for
        this regroup (default: the policy's seed plus ``num_regroups``).
        Degenerate or non-finite statistics, or a solver failure, leave the
        grouping unchanged and return a report whose ``skipped`` says why.
        """
        policy = self.policy.overridden_by(policy).overridden_by(RegroupPolicy(percentile=percentile))
        if seed is None:  # a new k-means seed per regroup, reproducible on resume
            seed = policy.seed + int(self.num_regroups)
        reason = self._unusable_statistics()
        if reason is not None:
            warnings.warn(f"DGN regroup skipped{' for ' + name if name else ''}: {reason}", RuntimeWarning, stacklevel=2)
            return RegroupReport(name=name, num_groups=self.num_groups, skipped=reason)
        try:
            plan = plan_regroup(
                self.channel_mean_ema.double().cpu().numpy(),
                self.cluster_feature_matrix(policy.cluster_features),
                self.group_id.cpu().numpy(),
                self.num_groups,
                self.bounds,
                policy.percentile,
                seed=seed,
                n_init=policy.n_init,
                max_iter=policy.max_iter,
                name=name,
                cluster_features=policy.cluster_features,
            )
            self.set_group_ids(torch.from_numpy(plan.group_id))
        except Exception as error:  # keep the previous grouping, say why
            reason = f"regroup failed, grouping unchanged: {type(error).__name__}: {error}"
            warnings.warn(f"DGN {name}: {reason}", RuntimeWarning, stacklevel=2)
            return RegroupReport(name=name, num_groups=self.num_groups, skipped=reason)
        self.num_regroups.add_(1)
        return plan.report

    def _unusable_statistics(self) -> Optional[str]:
        if int(self.num_stat_updates) == 0:
            return "no running channel statistics yet (run training iterations first)"
        if not (torch.isfinite(self.channel_mean_ema).all() and torch.isfinite(self.channel_var_ema).all()):
            return "non-finite running channel statistics"
        if self.num_groups < 2:
            return "a single group has nothing to regroup"
        return None

    # ------------------------------------------------------------- checkpoints
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        # A plain nn.GroupNorm state dict has no grouping buffers: it means GN's
        # grouping and fresh statistics, not missing keys.
        key = prefix + "group_id"
        if key not in state_dict:
            defaults = {
                "group_id": default_group_ids(self.num_channels, self.num_groups),
                "channel_mean_ema": torch.zeros_like(self.channel_mean_ema),
                "channel_var_ema": torch.ones_like(self.channel_var_ema),
                "num_stat_updates": torch.zeros_like(self.num_stat_updates),
                "num_regroups": torch.zeros_like(self.num_regroups),
            }
            for name, value in defaults.items():
                state_dict.setdefault(prefix + name, value)
        else:
            try:
                check_group_ids(state_dict[key], self.num_channels, self.num_groups, self.bounds, what=f"checkpoint buffer '{key}'")
            except ValueError as error:
                raise ValueError(f"corrupt DGN grouping in checkpoint: {error}") from None
            for name in ("channel_mean_ema", "channel_var_ema"):
                value = state_dict.get(prefix + name)
                if value is not None and tuple(value.shape) != (self.num_channels,):
                    raise ValueError(
                        f"corrupt DGN statistics in checkpoint: '{prefix + name}' has shape {tuple(value.shape)}, "
                        f"expected ({self.num_channels},)"
                    )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        with torch.no_grad():
            self.group_count.copy_(torch.bincount(self.group_id.long(), minlength=self.num_groups))

    def _grouping_repr(self) -> str:
        return (f"sizes=[{self.bounds.size_min}, {self.bounds.size_max}], percentile={self.percentile}, "
                f"momentum={self.momentum}")


class DynamicGroupNorm(DynamicGrouping, nn.GroupNorm):
    r"""Group normalization with data-driven, periodically regrouped channels.

    Args:
        num_channels: C, the number of channels of the input (N, C, \*).
        num_groups: K, used when ``group_size`` is not given.
        eps, affine: as in ``nn.GroupNorm``.
        group_size: the poster's default group size g; then K = floor(C / g).
        alpha: group sizes stay in [floor((1-alpha) g), floor((1+alpha) g)].
        percentile: p in [0, 1]; groups whose intra-group variance of channel
            means exceeds the p-th percentile are dissolved at a regroup.
        momentum: EMA factor of the running channel statistics.
        track_channel_stats: collect running statistics in training mode.
        cluster_features: which running statistics k-means clusters on
            (standardised), a subset of ``("mean", "var", "std")``. The
            default, the channel means alone, is the poster's rule: the
            statistic that decides which groups dissolve is the one the
            dissolved channels are re-clustered by (exactly: a 1-D problem).
            Adding ``"var"``/``"std"`` also separates channels by spread, at
            the price of weighting a noisy statistic as much as the mean.
        seed, n_init, max_iter: the k-means solver's settings (``n_init="auto"``:
            more starts for smaller problems, see ``size_constrained_kmeans``).

    ``percentile``, ``cluster_features``, ``seed``, ``n_init`` and ``max_iter``
    form the layer's :class:`~dgn_plugins.regrouping.policy.RegroupPolicy`
    (``layer.policy``); a policy given to :func:`~dgn_plugins.regroup_model`
    overrides it at a regroup without changing the layer.

    Shape:
        - Input: :math:`(N, C, *)` where :math:`C=\text{num\_channels}`
        - Output: :math:`(N, C, *)` (same shape as input)

    Examples::

        >>> input = torch.randn(20, 64, 10, 10)
        >>> # GN's grouping at the start: identical to nn.GroupNorm(8, 64)
        >>> m = DynamicGroupNorm(64, num_groups=8)
        >>> # group size 8 (K = 8), sizes kept in [4, 12], half the groups may dissolve
        >>> m = DynamicGroupNorm(64, group_size=8, alpha=0.5, percentile=0.5)
        >>> output = m(input)  # training mode: also updates the running channel statistics
        >>> report = m.regroup()  # the poster's rule, once
    """

    _abbr_ = "gn"  # mmcv's infer_abbr: checkpoint keys like ``gn1``

    def __init__(
        self,
        num_channels: int,
        num_groups: int = 32,
        eps: float = 1e-5,
        affine: bool = True,
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
        grouping, policy = self._options(num_channels, num_groups, group_size, alpha, percentile, cluster_features,
                                         seed, n_init, max_iter, momentum)
        # GroupNorm's divisibility check would reject ragged groupings: pass it
        # a trivially valid K and set the real one after.
        compat.init_group_norm(self, 1, num_channels, eps, affine, device=device, dtype=dtype, bias=bias)
        self._init_grouping(num_channels, grouping, policy, group_size, alpha, momentum, track_channel_stats, device,
                            dtype)

    def reset_parameters(self) -> None:
        # nn.GroupNorm's own, as in torch >= 2.12 (older ones assume a bias whenever affine)
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    # ------------------------------------------------------------------ forward
    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles the portable formulation
            return group_norm_by_assignment(input, assignment_matrix(self.group_id, self.num_groups), self.weight,
                                            self.bias, self.eps)
        return self._forward(input)

    @torch.jit.unused
    def _forward(self, input: Tensor) -> Tensor:
        if input.dim() < 2 or input.shape[1] != self.num_channels:
            raise LayoutError(wrong_layout(self, input, f"channels first (N, {self.num_channels}, *)",
                                          "TokenDGN / TokenDynamicGroupNorm",
                                          input.dim() > 0 and input.shape[-1] == self.num_channels))
        # Parameters and buffers straight from their dicts: nn.Module.__getattr__ would cost a few
        # microseconds per layer and step. In training the same call updates the running statistics;
        # the [N, C] statistics are not asked for (the layer returns only y: making them costs a small
        # layer's call more than its normalisation does).
        buffers, parameters = self._buffers, self._parameters
        return dynamic_group_norm_with_stats(input, buffers["group_id"], self.num_groups, parameters["weight"],
                                             parameters["bias"], self.eps, buffers["group_count"],
                                             self._running_stats(), channel_stats=False)[0]

    def extra_repr(self) -> str:
        return (
            f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, {self._grouping_repr()}"
        )
