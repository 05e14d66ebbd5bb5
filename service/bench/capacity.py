"""The rates a capacity search tries, and when it stops: no I/O, so its rule is testable.

Up 1.5x a step while rates hold (halving first while none has), then halving the gap
between the best rate held and the lowest missed until they are within `CLOSE_ENOUGH`:
steps of 1.5x alone would report a capacity up to a third below the real one.
"""

from __future__ import annotations

from dataclasses import dataclass

STEP_UP = 1.5
CLOSE_ENOUGH = 1.1
"""The search ends once the lowest rate missed is at most this times the best held."""


@dataclass(slots=True)
class RateSearch:
    """`rate` is the next to try; `record` each step's outcome until it returns None."""

    rate: float
    min_rate: float
    held: float | None = None
    missed: float | None = None
    stopped: str = "max steps reached"

    def record(self, ok: bool, why_missed: str = "") -> float | None:
        """Note whether `rate` held (`why_missed` says why not); the next rate, or None when
        the search is over (`stopped` says why)."""
        if ok:
            self.held = self.rate
        else:
            if self.missed is None:
                self.stopped = why_missed
            self.missed = self.rate
        if self.held is None:
            if self.rate / 2 < self.min_rate:
                return None
            self.rate /= 2
        elif self.missed is None:
            self.rate *= STEP_UP
        elif self.missed <= self.held * CLOSE_ENOUGH:
            self.stopped += f"; {self.held:,.0f}/s held, {self.missed:,.0f}/s missed"
            return None
        else:
            self.rate = (self.held + self.missed) / 2
        return self.rate
