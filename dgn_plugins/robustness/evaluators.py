"""What a robustness sweep needs from a toolkit, and how to pick one.

An evaluator scores one model on one cell: ``evaluate(None, 0)`` is clean,
``evaluate("fog", 3)`` is fog at severity 3; it returns the toolkit's metric
dict. :mod:`dgn_plugins.robustness.openmmlab` implements it with MMEngine's
Runner; a Detectron2 evaluator (a ``DatasetEvaluator`` run by
``inference_on_dataset`` over a mapper that corrupts images) plugs in by
implementing the same two members and registering a factory here.
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict, Optional, Protocol

__all__ = ["CellEvaluator", "EVALUATOR_FACTORIES", "register_evaluator", "build_evaluator", "guess_toolkit"]


class CellEvaluator(Protocol):
    #: "detection" or "segmentation": which summary and names the report uses.
    task: str

    def evaluate(self, corruption: Optional[str], severity: int) -> Dict[str, float]:
        ...


#: toolkit name -> "module:factory" (imported on demand) or a callable
#: ``factory(config, checkpoint, **options) -> CellEvaluator``.
EVALUATOR_FACTORIES: Dict[str, object] = {
    "openmmlab": "dgn_plugins.robustness.openmmlab:OpenMMLabEvaluator",
}


def register_evaluator(toolkit: str, factory: Callable[..., CellEvaluator]) -> None:
    """E.g. ``register_evaluator("detectron2", Detectron2Evaluator)`` from the Detectron2 adapter."""
    EVALUATOR_FACTORIES[toolkit] = factory


def guess_toolkit(config: str) -> str:
    """MMEngine configs are Python; Detectron2 configs are YAML (or LazyConfig .py with ``dataloader``)."""
    return "detectron2" if str(config).endswith((".yaml", ".yml")) else "openmmlab"


def build_evaluator(toolkit: str, config: str, checkpoint: Optional[str], **options) -> CellEvaluator:
    factory = EVALUATOR_FACTORIES.get(toolkit)
    if factory is None:
        raise ValueError(f"no robustness evaluator for toolkit {toolkit!r} yet; available: "
                         f"{sorted(EVALUATOR_FACTORIES)} (register one with "
                         "dgn_plugins.robustness.evaluators.register_evaluator)")
    if isinstance(factory, str):
        module, _, name = factory.partition(":")
        factory = getattr(importlib.import_module(module), name)
    return factory(config, checkpoint, **options)
