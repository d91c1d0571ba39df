"""What a robustness sweep needs from a toolkit, and how to pick one.

An evaluator scores one model on one cell: ``evaluate(None, 0)`` is clean,
``evaluate("fog", 3)`` is fog at severity 3; it returns the toolkit's metric
dict. :mod:`dgn_plugins.evaluation.robustness.openmmlab` implements it with MMEngine's
Runner, :mod:`dgn_plugins.evaluation.robustness.detectron2` with ``inference_on_dataset``
over a mapper that corrupts images. Either module is imported only when its
toolkit is asked for, so each works without the other installed; another
toolkit plugs in by implementing the same two members and adding its factory to
``EVALUATOR_FACTORIES``.
"""
from __future__ import annotations

import importlib
from typing import Dict, Optional, Protocol

__all__ = ["CellEvaluator", "EVALUATOR_FACTORIES", "build_evaluator", "guess_toolkit"]


class CellEvaluator(Protocol):
    #: "detection" or "segmentation": which summary and names the report uses.
    task: str

    def evaluate(self, corruption: Optional[str], severity: int) -> Dict[str, float]:
        ...


#: toolkit name -> "module:factory" (imported on demand) or a callable
#: ``factory(config, checkpoint, **options) -> CellEvaluator``.
EVALUATOR_FACTORIES: Dict[str, object] = {
    "openmmlab": "dgn_plugins.evaluation.robustness.openmmlab:OpenMMLabEvaluator",
    "detectron2": "dgn_plugins.evaluation.robustness.detectron2:Detectron2Evaluator",
}


def guess_toolkit(config: str) -> str:
    """MMEngine configs are Python; Detectron2 configs are YAML (or LazyConfig .py with ``dataloader``)."""
    return "detectron2" if str(config).endswith((".yaml", ".yml")) else "openmmlab"


def build_evaluator(toolkit: str, config: str, checkpoint: Optional[str], **options) -> CellEvaluator:
    factory = EVALUATOR_FACTORIES.get(toolkit)
    if factory is None:
        raise ValueError(f"no robustness evaluator for toolkit {toolkit!r} yet; available: "
                         f"{sorted(EVALUATOR_FACTORIES)} (add one to "
                         "dgn_plugins.evaluation.robustness.evaluators.EVALUATOR_FACTORIES)")
    if isinstance(factory, str):
        module, _, name = factory.partition(":")
        try:
            factory = getattr(importlib.import_module(module), name)
        except ImportError as err:  # the toolkit is not installed: say which package is missing
            raise ValueError(f"the {toolkit!r} robustness evaluator cannot be loaded: {err}") from err
    return factory(config, checkpoint, **options)
