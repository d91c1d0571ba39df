"""When to regroup: every ``interval`` steps within ``[start, stop)``.

Kept apart from the hooks so both toolkits (and plain PyTorch loops) share
one definition, and so the schedule's state can go into checkpoints.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

__all__ = ["RegroupSchedule"]


@dataclass
class RegroupSchedule:
    """Regroup after ``s`` finished steps when ``s % interval == 0`` and
    ``start <= s <= stop`` (``stop=None``: no end), like MMEngine's
    ``every_n_train_iters``: steps are counted from the start of training, so
    a resumed run keeps the same calendar.
    """

    interval: int = 1000
    start: int = 0
    stop: Optional[int] = None
    last_regroup_step: int = -1

    def __post_init__(self):
        if self.interval < 1:
            raise ValueError(f"regroup interval must be >= 1, got {self.interval}")
        if self.start < 0:
            raise ValueError(f"regroup start must be >= 0, got {self.start}")
        if self.stop is not None and self.stop < self.start:
            raise ValueError(f"regroup stop ({self.stop}) must not precede start ({self.start})")

    def is_due(self, step: int) -> bool:
        """True if a regroup belongs after ``step`` finished steps (once per step)."""
        if step <= 0 or step < self.start or step == self.last_regroup_step:
            return False
        if self.stop is not None and step > self.stop:
            return False
        return step % self.interval == 0

    def final_step_warning(self, total: int, unit: str = "iterations") -> Optional[str]:
        """A warning if a regroup falls after the last of ``total`` steps, else None.

        Such a regroup changes the normalisation of the model that gets saved
        and evaluated, and no step lets the weights adapt to it.
        """
        if total <= 0 or not self.is_due(total):
            return None
        return (f"DGNRegroupHook: a regroup is due after the last of {total} {unit}, so the saved model "
                f"would use a grouping its weights never trained with; set stop below {total} "
                f"(e.g. stop={max(self.start, total - self.interval)})")

    def mark_done(self, step: int) -> None:
        self.last_regroup_step = step

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.last_regroup_step = int(state.get("last_regroup_step", -1))
