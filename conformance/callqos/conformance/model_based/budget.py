"""How long the model-based checker runs: `--budget SECONDS` of histories (default 20 s, so the whole
suite stays within a minute on a small machine), or `--histories N` whatever the time, plus time to
shrink a failure (a quarter of the budget, at least 15 s)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

DEFAULT_SECONDS = 20.0
MIN_SHRINK_SECONDS = 15.0
STEPS = 30  # operations per history


class Budgeted(Protocol):
    budget_seconds: float
    histories: int


@dataclass(frozen=True)
class Budget:
    seconds: float  # generating and running histories
    histories: int  # 0: as many as fit in `seconds`
    shrink_seconds: float

    @classmethod
    def of(cls, session: Budgeted) -> Budget:
        seconds = session.budget_seconds or DEFAULT_SECONDS
        return cls(seconds, session.histories, max(MIN_SHRINK_SECONDS, seconds / 4))

    @property
    def total_seconds(self) -> float:
        """An upper bound for the check's deadline (histories, their teardown, shrinking)."""
        run = self.seconds if not self.histories else max(self.seconds, self.histories * 5.0)
        return run + self.shrink_seconds + 30.0
