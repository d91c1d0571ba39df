"""When to regroup: every ``interval`` steps within ``[start, stop]``.

Kept apart from the hooks so both toolkits (and plain PyTorch loops) share
one definition, and so the schedule's state can go into checkpoints. Each of
``interval``, ``start`` and ``stop`` is a number of steps (an ``int``) or a
share of the run (a ``float`` in (0, 1), e.g. ``interval=0.1, stop=0.9``: ten
regroups' worth of spacing, none in the last tenth), which is how the study in
bench/RESULTS.md states its settings; :meth:`RegroupSchedule.resolve` turns
shares into steps once the run's length is known.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, replace
from typing import Optional, Union

from ..errors import ConfigError

Steps = Union[int, float]


class ScheduleError(ValueError, ConfigError):
    """A regroup schedule that cannot be met (the hook's ``interval``/``start``/``stop``, or a run too
    short for it); the launchers report it as one line."""


def _is_share(value) -> bool:
    return isinstance(value, float)

__all__ = ["RegroupSchedule", "ScheduleError", "steps_argument", "interval_argument"]


def steps_argument(text: str) -> Steps:
    """An argparse ``type`` for a schedule value: a number of steps (``500``) or a share of the run (``0.1``)."""
    try:
        value = int(text)
    except ValueError:
        return _share(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text}: a number of steps is >= 0")
    return value


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of steps (an integer >= 0) "
                                          "or a share of the run in (0, 1)") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text}: a share of the run lies in (0, 1); iterations are an integer")
    return value


def interval_argument(text: str) -> Steps:
    """:func:`steps_argument` for an interval: at least 1 step, or a share of the run."""
    value = steps_argument(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"{text}: regroup every N >= 1 steps, or every share of the run in (0, 1)")
    return value


@dataclass
class RegroupSchedule:
    """Regroup after ``s`` finished steps when ``s % interval == 0`` and
    ``start <= s <= stop`` (``stop=None``: no end), like MMEngine's
    ``every_n_train_iters``: steps are counted from the start of training, so
    a resumed run keeps the same calendar.
    """

    interval: Steps = 1000
    start: Steps = 0
    stop: Optional[Steps] = None
    last_regroup_step: int = -1

    def __post_init__(self):
        for name in ("interval", "start", "stop"):
            value = getattr(self, name)
            if _is_share(value) and not 0.0 < value < 1.0 and not (name != "interval" and value == 0.0):
                raise ScheduleError(f"regroup {name} given as a share of the run must lie in (0, 1), got {value} "
                                 f"(a number of steps is an int)")
        if self.interval < 1 and not _is_share(self.interval):
            raise ScheduleError(f"regroup interval must be >= 1, got {self.interval}")
        if self.start < 0:
            raise ScheduleError(f"regroup start must be >= 0, got {self.start}")
        if self.stop is not None and _is_share(self.start) == _is_share(self.stop) and self.stop < self.start:
            raise ScheduleError(f"regroup stop ({self.stop}) must not precede start ({self.start})")

    @property
    def has_shares(self) -> bool:
        """True while some of ``interval``/``start``/``stop`` are shares of a run not yet resolved."""
        return any(_is_share(v) for v in (self.interval, self.start, self.stop))

    def resolve(self, total: int) -> "RegroupSchedule":
        """This schedule in steps for a run of ``total`` steps (shares rounded, ``stop`` down; an interval >= 1)."""
        if not self.has_shares:
            return self
        if total <= 0:
            raise ScheduleError(f"a regroup schedule given as shares of the run ({self}) needs the run's length; "
                                f"got {total} steps (does the run train at all? its max_iters / max_epochs)")

        def steps(value, rounding=round):
            return rounding(value * total) if _is_share(value) else value

        # stop rounds down: the run's last share stays free of regroups even when short
        # (stop=0.9 of 3 steps is 2, not 3, which would regroup after the last step); the
        # tolerance keeps products like 0.29 * 100 = 28.999999999999996 at 29.
        interval = max(1, steps(self.interval))
        return replace(self, interval=interval, start=steps(self.start),
                       stop=None if self.stop is None else steps(self.stop, lambda x: math.floor(x + 1e-9)))

    def describe(self) -> str:
        """``interval``/``start``/``stop`` as given, for log text."""
        def show(value):
            return f"{value:.0%} of the run" if _is_share(value) else str(value)

        stop = f", stop {show(self.stop)}" if self.stop is not None else ""
        return f"every {show(self.interval)}, start {show(self.start)}{stop}"

    def is_due(self, step: int) -> bool:
        """True if a regroup belongs after ``step`` finished steps (once per step)."""
        if self.has_shares:
            raise RuntimeError(f"regroup schedule {self.describe()} is in shares of the run: "
                               f"resolve(total_steps) it first")
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
