"""The test window of forward evaluation and the gate (``RECLOOP_GATE_TEST_DAYS``).

With ``H`` test days, forward evaluation on day D scores the models trained through ``D − H``
on the pooled positives of days ``D − H + 1 .. D`` — days none of them saw. ``H = 1`` is the
daily loop's "models of D − 1 on D's positives". A longer window is for thin logs: one day of
an imported history can hold a handful of users, too few to judge a model on.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ForwardWindow:
    """Test day ``day`` with ``days`` test days: ``first``..``day`` is the window, the models
    scored on it are the ones trained through ``trained_through`` (= ``first − 1``)."""

    day: dt.date
    days: int

    @property
    def first(self) -> dt.date:
        """The window's first day, ``day − days + 1``."""
        return self.day - dt.timedelta(days=self.days - 1)

    @property
    def trained_through(self) -> dt.date:
        """The last day the evaluated models may have seen, ``day − days``."""
        return self.day - dt.timedelta(days=self.days)

    def describe(self) -> str:
        """``"1998-03-15"`` for one day, ``"1998-03-02..1998-03-15"`` for more."""
        return self.day.isoformat() if self.days == 1 else f"{self.first}..{self.day}"

    def record(self) -> dict[str, Any]:
        """The report fields: ``trained_through``, ``test_days`` and ``test_window``
        (``[first, last]`` as ISO dates)."""
        return {
            "trained_through": self.trained_through.isoformat(),
            "test_days": self.days,
            "test_window": [self.first.isoformat(), self.day.isoformat()],
        }


def forward_window(day: dt.date, days: int) -> ForwardWindow:
    """The window of ``days`` test days ending on ``day``; ``ValueError`` when ``days < 1``."""
    if days < 1:
        raise ValueError(f"test days must be a positive number of days, got {days}")
    return ForwardWindow(day, int(days))
