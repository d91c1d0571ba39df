"""How ``NORM: "DGN"`` becomes ``DynamicGroupNorm`` layers in Detectron2.

``detectron2.layers.get_norm(norm, channels)`` maps a string through a dict
literal built inside the function (no registry, no module-level mapping to
extend), or calls ``norm(channels)`` when ``norm`` is callable. ResNet, FPN,
the box/mask/semantic/RetinaNet heads all bind ``get_norm`` at import time.

The config is resolved rather than ``get_norm`` patched (why: docs/design.md):
just before building, a copy of the config gets, for every ``*NORM`` key set
to ``"DGN"``, a :class:`DGNNorm` callable made from ``MODEL.DGN``, which every
builder hands to ``get_norm``'s documented callable path.

The price: the model must be built through :func:`build_model` here (or
:class:`~dgn_plugins.detectron2.DGNTrainer`, or
``DefaultPredictor(resolve_dgn_norms(cfg))``) rather than
``detectron2.modeling.build_model`` on the raw config, which would meet the
unknown string ``"DGN"`` and raise ``KeyError: 'DGN'``.
"""
from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.modeling import build_model as _build_detectron2_model
from torch import nn

from ..errors import ConfigError
from ..feasibility import ProbeGroupNorm, ProbeTokenNorm
from ..grouping import DGNOptionError
from ..layer import DynamicGroupNorm
from ..token_layer import TokenDynamicGroupNorm
from ..training.model import name_layers
from .config import dgn_layer_options

__all__ = ["DGN", "DGNNorm", "TokenDGNNorm", "UnknownNormError", "accepted_norms", "resolve_dgn_norms", "dgn_norm_keys", "build_model"]

#: The config value that selects DGN, next to Detectron2's "BN", "GN", ...
DGN = "DGN"


class DGNNorm:
    """A ``get_norm``-style callable: ``DGNNorm(**options)(channels)`` -> ``DynamicGroupNorm``.

    Stores ``DynamicGroupNorm``'s keyword arguments as given (as
    ``functools.partial`` would), checked at once. A plain, picklable class
    rather than a partial or a lambda, so LazyConfigs can hold it as
    ``L(DGNNorm)(num_groups=32)`` (saved as YAML, not cloudpickle) and
    resolved yacs configs can be deep-copied and compared. Instances are
    truthy and differ from ``""``, which is how Detectron2's builders drop
    conv biases under a norm.

    Example::

        >>> norm = DGNNorm(num_groups=32, percentile=0.5)
        >>> get_norm(norm, 256)
        DynamicGroupNorm(32, 256, ...)
    """

    #: The layer it builds.
    layer = DynamicGroupNorm

    def __init__(self, num_groups: int = 32, **options) -> None:
        # Check the options now, not at the first layer deep inside a builder.
        self.options = self.layer.check_options(num_groups=num_groups, **options)

    def __call__(self, channels: int) -> nn.Module:
        return self.layer(channels, **self.options)

    def __eq__(self, other) -> bool:
        return type(other) is type(self) and self.options == other.options

    def __hash__(self) -> int:
        return hash((type(self).__name__, *sorted((k, repr(v)) for k, v in self.options.items())))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(" + ", ".join(f"{k}={v!r}" for k, v in self.options.items()) + ")"


class TokenDGNNorm(DGNNorm):
    """A ``norm_layer`` for transformers (Detectron2's ``ViT``): ``TokenDGNNorm(**options)(dim)`` ->
    ``TokenDynamicGroupNorm``, channels last, as ``partial(nn.LayerNorm, eps=1e-6)`` is.

    In a LazyConfig: ``model.backbone.net.norm_layer = L(TokenDGNNorm)(num_groups=32, eps=1e-6)``
    (``configs/detectron2/mask_rcnn_vitdet_b_dgn_lazy.py``). The layers are named as the
    LayerNorms they replace (``norm1``, ``norm2``), so LN checkpoints load.
    """

    layer = TokenDynamicGroupNorm


def dgn_norm_keys(cfg: CfgNode, prefix: str = "") -> list:
    """Full names of the ``*NORM`` keys of ``cfg`` set to ``"DGN"``, e.g. ``MODEL.FPN.NORM``."""
    keys = []
    for key, value in cfg.items():
        name = prefix + key
        if isinstance(value, CfgNode):
            keys += dgn_norm_keys(value, name + ".")
        elif key.endswith("NORM") and value == DGN:
            keys.append(name)
    return keys


def resolve_dgn_norms(cfg: CfgNode) -> CfgNode:
    """A copy of ``cfg`` whose ``"DGN"`` norms are :class:`DGNNorm` callables.

    Walks the whole config, so the builtin keys (``MODEL.RESNETS.NORM``,
    ``MODEL.FPN.NORM``, ``MODEL.ROI_BOX_HEAD.NORM``, ``MODEL.ROI_MASK_HEAD.NORM``,
    ``MODEL.SEM_SEG_HEAD.NORM``, ``MODEL.RETINANET.NORM``) and those of
    projects alike are covered. The copy is for building only: keep ``cfg``
    for dumping and checkpoints.
    """
    keys = dgn_norm_keys(cfg)
    resolved = cfg.clone()
    if not keys:
        return resolved
    norm = DGNNorm(**dgn_layer_options(cfg))
    was_frozen = resolved.is_frozen()
    resolved.defrost()
    for name in keys:
        *path, leaf = name.split(".")
        node = resolved
        for part in path:
            node = node[part]
        # Item assignment: CfgNode.__setattr__ accepts only YAML types.
        node[leaf] = norm
    if was_frozen:
        resolved.freeze()
    return resolved


class UnknownNormError(KeyError, ConfigError):
    """A ``*NORM`` config value ``get_norm`` does not know; the message names the key and the accepted values."""

    def __str__(self) -> str:  # KeyError would print the message repr-quoted
        return str(self.args[0]) if self.args else ""


#: ``get_norm``'s names at Detectron2 02b5c4e, used when they cannot be read from the function.
_GET_NORM_NAMES = ("BN", "SyncBN", "FrozenBN", "GN", "nnSyncBN", "naiveSyncBN", "naiveSyncBN_N", "LN")

#: ``MODEL.DGN`` keys of the layer options an infeasibility message names.
_OPTION_KEYS = {"alpha": "MODEL.DGN.ALPHA", "num_groups": "MODEL.DGN.NUM_GROUPS", "group_size": "MODEL.DGN.GROUP_SIZE"}


def accepted_norms() -> list:
    """The strings ``get_norm`` accepts (read from its dict literal's constant keys), ``""`` and ``"DGN"``."""
    from detectron2.layers import get_norm

    names = next((c for c in get_norm.__code__.co_consts
                  if isinstance(c, tuple) and "GN" in c and all(isinstance(n, str) for n in c)), _GET_NORM_NAMES)
    return ["", *names, DGN]


def _norm_keys_with_value(cfg: CfgNode, value, prefix: str = "") -> list:
    keys = []
    for key, item in cfg.items():
        if isinstance(item, CfgNode):
            keys += _norm_keys_with_value(item, value, prefix + key + ".")
        elif key.endswith("NORM") and item == value:
            keys.append(prefix + key)
    return keys


def _unknown_norm_message(keys: list, value: str) -> str:
    import difflib

    known = accepted_norms()
    close = [n for n in known if n and n.lower() == value.lower()]
    close = close or difflib.get_close_matches(value, [n for n in known if n], n=1, cutoff=0.4)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return (f"{', '.join(keys)} = {value!r} is not a norm Detectron2 knows.{hint} "
            f"Accepted: {', '.join(repr(n) for n in known)}.")


def _explain_infeasible(cfg: CfgNode, error: Exception) -> str:
    """``error`` with the module paths of the layers whose ``MODEL.DGN`` options cannot be met.

    Builds the model again with a probe norm in place of DGN (see
    :mod:`dgn_plugins.feasibility`); falls back to ``error`` if that fails.
    """
    from ..feasibility import describe_infeasible, infeasible_layers

    keys = dgn_norm_keys(cfg)
    options = dgn_layer_options(cfg)
    probe = cfg.clone()
    probe.defrost()
    for name in keys:
        *path, leaf = name.split(".")
        node = probe
        for part in path:
            node = node[part]
        node[leaf] = ProbeNorm(**options)
    try:
        layers = infeasible_layers(_build_detectron2_model(probe))
    except Exception:  # the probe build is a courtesy: keep the original message
        layers = []
    message = describe_infeasible(layers, f"MODEL.DGN for {', '.join(keys)}") if layers else str(error)
    for option, key in _OPTION_KEYS.items():  # the layer speaks of its arguments, the user sets config keys
        message = message.replace(f"raise {option} ", f"raise {key} ").replace(f"a {option} ", f"a {key} ")
    return message


class ProbeNorm:
    """``DGNNorm``'s signature, building the layer's probe (:mod:`dgn_plugins.feasibility`)."""

    probe = ProbeGroupNorm

    def __init__(self, num_groups: int = 32, **options) -> None:
        self.options = dict(options, num_groups=num_groups)

    def __call__(self, channels: int) -> nn.Module:
        return self.probe(channels, **self.options)


class TokenProbeNorm(ProbeNorm):
    """``TokenDGNNorm``'s signature, building :class:`~dgn_plugins.feasibility.ProbeTokenNorm` layers."""

    probe = ProbeTokenNorm


#: The probe factory of each norm factory.
PROBE_NORMS = {DGNNorm: ProbeNorm, TokenDGNNorm: TokenProbeNorm}


def build_model(cfg: CfgNode) -> nn.Module:
    """``detectron2.modeling.build_model`` for configs that may say ``NORM: "DGN"``.

    Errors name the setting to change: an unknown ``*NORM`` value raises
    :class:`UnknownNormError` (the keys and the accepted values; Detectron2's
    own is a bare ``KeyError: 'DNG'``), ``MODEL.DGN`` options a layer cannot
    meet a :class:`~dgn_plugins.grouping.DGNOptionError` with its module path.
    """
    try:
        model = _build_detectron2_model(resolve_dgn_norms(cfg))
    except DGNOptionError as error:
        raise DGNOptionError(_explain_infeasible(cfg, error)) from None
    except KeyError as error:
        value = error.args[0] if len(error.args) == 1 else None
        keys = _norm_keys_with_value(cfg, value) if isinstance(value, str) else []
        if not keys:
            raise
        raise UnknownNormError(_unknown_norm_message(keys, value)) from None
    name_layers(model)  # a layout error in the first forward names its layer
    return model
