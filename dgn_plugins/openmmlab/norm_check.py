"""Name the unknown norm type, which mmcv's own error does not.

``mmcv.cnn.build_norm_layer`` reports a misspelled ``norm_cfg`` type as
"Cannot find None in registry": it formats the lookup result, not the key.
Rather than patch a function that mmdet and mmseg bound by name at import,
:func:`check_norm_types` validates every ``*norm_cfg`` of a config against the
registry before anything is built (``tools/train.py`` calls it), and
:func:`build_norm_layer` is a drop-in for code that builds norms itself.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Iterator, List, Mapping, Optional, Sequence, Tuple

from mmengine.registry import MODELS
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from ..errors import ConfigError

__all__ = ["UnknownNormTypeError", "iter_norm_cfgs", "check_norm_types", "registered_norm_types"]

_NORM_BASES = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)


class UnknownNormTypeError(KeyError, ConfigError):
    """A ``norm_cfg`` type that no registry in scope knows."""

    def __str__(self) -> str:  # KeyError would print the message repr-quoted
        return str(self.args[0]) if self.args else ""


def iter_norm_cfgs(cfg, path: str = "") -> Iterator[Tuple[str, Mapping]]:
    """``(dotted path, cfg)`` for every dict under a key ending in ``norm_cfg``."""
    if isinstance(cfg, Mapping):
        for key, value in cfg.items():
            where = f"{path}.{key}" if path else str(key)
            if str(key).endswith("norm_cfg") and isinstance(value, Mapping) and "type" in value:
                yield where, value
            else:
                yield from iter_norm_cfgs(value, where)
    elif isinstance(cfg, (list, tuple)):
        for index, value in enumerate(cfg):
            yield from iter_norm_cfgs(value, f"{path}[{index}]")


def _registries(scope: Optional[str]):
    with MODELS.switch_scope_and_registry(scope) as registry:
        chain = []
        while registry is not None:
            chain.append(registry)
            registry = registry.parent
        return chain


def _lookup(norm_type: str, scope: Optional[str]):
    with MODELS.switch_scope_and_registry(scope) as registry:
        return registry.get(norm_type), registry.scope


def registered_norm_types(scope: Optional[str] = None) -> List[str]:
    """Names of registered normalisation layers visible from ``scope``."""
    names = set()
    for registry in _registries(scope):
        for name, obj in registry.module_dict.items():
            if inspect.isclass(obj) and issubclass(obj, _NORM_BASES):
                names.add(name)
    return sorted(names)


def _unknown_type_message(norm_type: str, places: Sequence[str], scope_name: str, scope: Optional[str]) -> str:
    known = registered_norm_types(scope)
    close = [n for n in known if n.lower() == norm_type.lower()]
    close += [n for n in difflib.get_close_matches(norm_type, known, n=3, cutoff=0.5) if n not in close]
    if not close:  # maybe a norm layer registered under another name
        others = [n for r in _registries(scope) for n in r.module_dict if n not in known]
        close = difflib.get_close_matches(norm_type, others, n=3, cutoff=0.6)
    where = f" in {places[0]}" + (f" (and {len(places) - 1} more places)" if len(places) > 1 else "") if places else ""
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    dgn = "" if "DGN" in known else " ('DGN' is registered by `import dgn_plugins.openmmlab`.)"
    return (
        f"Unknown norm type {norm_type!r}{where}: not registered in MODELS under scope {scope_name!r}."
        f"{hint} Registered norm layers: {', '.join(known)}.{dgn}"
    )


def check_norm_types(cfg, scope: Optional[str] = None) -> None:
    """Raise :class:`UnknownNormTypeError` naming the first unknown norm type.

    ``scope`` is the default scope the model will be built in (``'mmdet'``,
    ``'mmseg'``; ``None``: the current one). Class objects as ``type`` pass.
    """
    unknown = {}
    scope_name = None
    for path, norm_cfg in iter_norm_cfgs(cfg):
        norm_type = norm_cfg["type"]
        if not isinstance(norm_type, str):
            continue
        found, scope_name = _lookup(norm_type, scope)
        if found is None:
            unknown.setdefault(norm_type, []).append(path)
    if unknown:
        norm_type, places = next(iter(unknown.items()))
        raise UnknownNormTypeError(_unknown_type_message(norm_type, places, scope_name, scope))


#: The registry names of the DGN layers (channels first, tokens).
DGN_NORM_TYPES = ("DGN", "TokenDGN")


def dgn_norm_cfg_paths(cfg, types=DGN_NORM_TYPES) -> List[str]:
    """Dotted paths of the ``*norm_cfg`` dicts whose type is DGN (or another of ``types``)."""
    return [path for path, norm_cfg in iter_norm_cfgs(cfg) if norm_cfg.get("type") in types]


def explain_infeasible_dgn(model_cfg, scope: Optional[str], error: Exception) -> str:
    """``error`` (a DGN layer's options cannot be met) with the module paths of the failing layers.

    Builds the model again with the probes of :mod:`dgn_plugins.feasibility`
    registered as ``DGN`` and ``TokenDGN`` (then puts the layers back), so the
    same builders give the same channel counts; falls back to ``error`` if that
    build fails too.
    """
    from ..feasibility import ProbeGroupNorm, ProbeTokenNorm, describe_infeasible, infeasible_layers
    from .registry import register_all

    probes = {"DGN": ProbeGroupNorm, "TokenDGN": ProbeTokenNorm}
    paths = dgn_norm_cfg_paths(model_cfg)
    where = ", ".join(f"model.{p}" for p in paths) or "the DGN norm_cfg"
    try:
        for name, probe in probes.items():
            MODELS.register_module(name, module=probe, force=True)
        with MODELS.switch_scope_and_registry(scope) as registry:
            model = registry.build(model_cfg)
    except Exception:  # the probe build is a courtesy: keep the original message
        return f"{error} (set in {where})"
    finally:
        register_all()
    layers = infeasible_layers(model)
    if not layers:
        return str(error)
    # The norm_cfgs whose type and options are those of the first failing layer (shared configs name several).
    norm_cfgs = dict(iter_norm_cfgs(model_cfg))
    probe = type(model.get_submodule(layers[0][0]))
    norm_type = next(name for name, cls in probes.items() if cls is probe)
    failing = dict(probe.defaults, **layers[0][2])
    matching = [p for p in paths if norm_cfgs[p].get("type") == norm_type
                and failing == dict(probe.defaults, **{k: v for k, v in norm_cfgs[p].items()
                                                      if k not in ("type", "requires_grad")})]
    return describe_infeasible(layers, ", ".join(f"model.{p}" for p in matching) or where)
