"""The progress helper: a bar on a terminal, nothing anywhere else."""

from __future__ import annotations

import io
import sys

import pytest

from pipelines.core.progress import progress, shown


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal and keeps what was drawn."""

    def isatty(self) -> bool:
        return True


def test_quiet_when_stderr_is_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    assert not shown()
    bar = progress(range(5), desc="ingest", unit="day")
    assert bar.disable
    assert list(bar) == [0, 1, 2, 3, 4]
    with progress(total=2, desc="features", unit="table") as manual:
        manual.update(2)
    assert pipe.getvalue() == ""


def test_drawn_on_a_terminal_unless_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    tty = _Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    assert shown() and not shown(enabled=False)
    assert list(progress(["a", "b"], desc="backfill", unit="day", leave=True)) == ["a", "b"]
    drawn = tty.getvalue()
    assert "backfill" in drawn and "2/2" in drawn and "day" in drawn
    before = len(tty.getvalue())
    assert list(progress([1, 2], desc="off", enabled=False)) == [1, 2]
    assert len(tty.getvalue()) == before
