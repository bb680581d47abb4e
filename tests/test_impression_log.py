"""The serving logs' flush: rows become one parquet table per UTC event date."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from pipelines.core import schema
from serving.logging import REQUESTS, ImpressionLog, _day_tables, impression_rows, request_row


def rows_across_midnight() -> list[dict]:
    late = pd.Timestamp("2026-12-01 23:59:59.999", tz="UTC")
    early = pd.Timestamp("2026-12-02 00:00:00.001", tz="UTC")
    out: list[dict] = []
    for r in range(6):
        ts = late if r % 2 else early
        out += impression_rows(f"r{r}", ts, f"u{r}", ["a", "b"], [0.5, 0.25], "champion", "7")
    return out


def conformed(rows: list[dict], table_schema) -> list:
    """What the pandas path (``schema.conform`` a date's rows) gives."""
    frame = pd.DataFrame(rows)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return [
        (day, part.index.tolist(), schema.conform(part.reset_index(drop=True), table_schema))
        for day, part in frame.groupby(frame["ts"].dt.date, sort=True)
    ]


def test_rows_split_by_utc_date_in_order_equal_to_the_pandas_path():
    rows = rows_across_midnight()
    got = _day_tables(rows, schema.INTERACTIONS)
    assert [str(day) for day, _, _ in got] == ["2026-12-01", "2026-12-02"]
    assert got[0][1] == [2, 3, 6, 7, 10, 11] and got[1][1] == [0, 1, 4, 5, 8, 9]
    want = conformed(rows, schema.INTERACTIONS)
    for (day, at, table), (wday, wat, wtable) in zip(got, want, strict=True):
        assert day == wday and at == wat and table.equals(wtable)
        assert table.schema == schema.INTERACTIONS
    reqs = [
        request_row(f"q{i}", pd.Timestamp("2026-12-02 10:00", tz="UTC"), "u", None, None, 503, 1.5)
        for i in range(3)
    ]
    ((day, at, table),) = _day_tables(reqs, REQUESTS)
    assert at == [0, 1, 2] and table.equals(conformed(reqs, REQUESTS)[0][2])
    assert table.column("arm").null_count == 3


def test_rows_pyarrow_cannot_take_go_through_conform():
    rows = rows_across_midnight()
    for r in rows:
        r["ts"] = r["ts"].isoformat()  # text timestamps: pandas parses them
    got = _day_tables(rows, schema.INTERACTIONS)
    assert [str(day) for day, _, _ in got] == ["2026-12-01", "2026-12-02"]
    assert got[0][2].equals(_day_tables(rows_across_midnight(), schema.INTERACTIONS)[0][2])


def test_flush_writes_one_file_per_date(tmp_path: Path):
    log = ImpressionLog(tmp_path, flush_rows=100)
    log.add(rows_across_midnight())
    files = log.flush()
    assert sorted(p.parent.name for p in files) == ["date=2026-12-01", "date=2026-12-02"]
    back = pd.concat(pq.read_table(p).to_pandas() for p in files)
    assert len(back) == 12 and set(back["event_id"]) == {
        r["event_id"] for r in rows_across_midnight()
    }
    assert log.rows_written == 12 and log.files_written == 2
