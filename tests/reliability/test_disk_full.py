"""Issue 17, case 8: the disk fills while the service flushes its impression log.

The fault is injected where it happens: the parquet writer raises ``OSError(ENOSPC)`` after
having written part of its temporary file. What a user checks: memory stays bounded (the buffer
never holds more than its cap, and every row it had to let go is counted), a request never
writes to disk (``add`` returns without touching the writer), no ``.tmp`` file is left behind,
and once the disk has room again the kept rows are written: rows written + rows dropped = rows
logged.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from serving.logging import ImpressionLog, impression_rows

TS = pd.Timestamp("2025-03-04T10:00:00Z")


def slate(k: int) -> list[dict]:
    """The 5 impression rows of request ``k``."""
    items = [f"i{j}" for j in range(5)]
    return impression_rows(f"r{k}", TS, f"u{k}", items, [0.2] * 5, "champion", "bundle-1")


class FullDisk:
    """``pyarrow.parquet.write_table`` on a full disk: part of the file, then ENOSPC."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, table, where, *args, **kwargs) -> None:
        self.calls += 1
        Path(where).write_bytes(b"PAR1\x00partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(where))


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".tmp")]


def test_full_disk_bounded_counted_no_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "impressions"
    log = ImpressionLog(root, flush_rows=10, max_pending_rows=50)
    full = FullDisk()
    monkeypatch.setattr(pq, "write_table", full)
    for k in range(40):  # 200 rows while the disk is full; the app's task flushes meanwhile
        log.add(slate(k))
        if k % 4 == 3:
            assert log.flush() == []
    assert full.calls == 10  # only the background flushes tried to write
    assert log.pending <= 50  # bounded memory
    assert log.dropped == 200 - log.pending  # every row let go is counted
    assert log.errors == 10
    assert leftovers(root) == []  # no partial file left behind

    monkeypatch.undo()  # the disk has room again
    written = log.flush()
    assert written and log.pending == 0
    rows = sum(pq.read_metadata(p).num_rows for p in written)
    assert rows == log.rows_written == 50
    assert log.rows_written + log.dropped == 200
    assert leftovers(root) == []


def test_add_never_writes_on_the_request_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = ImpressionLog(tmp_path / "impressions", flush_rows=2, max_pending_rows=40)
    full = FullDisk()
    monkeypatch.setattr(pq, "write_table", full)
    for k in range(100):  # far over any flush threshold, and nobody flushes
        log.add(slate(k))
    assert full.calls == 0  # a request never waits on the disk
    assert log.pending == 40 and log.dropped == 500 - 40
