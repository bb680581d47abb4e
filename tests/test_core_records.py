"""The one reader/writer of each shared file: gate decisions, loop days, validated partitions."""

from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest

from pipelines.core import layout, schema
from pipelines.core.gate_decisions import (
    gate_decision_dates,
    read_gate_decision,
    write_gate_decision,
)
from pipelines.core.loop_days import read_loop_days, save_loop_day
from pipelines.core.settings import Settings
from pipelines.core.validated import validated_dates, validated_files

D1, D2, D3 = dt.date(2026, 1, 1), dt.date(2026, 1, 2), dt.date(2026, 1, 3)


@pytest.fixture()
def ws(tmp_path) -> Settings:
    return Settings(home=tmp_path / "home")


# --- gate decisions ---------------------------------------------------------------------------
def test_gate_decision_round_trip_and_absent_day(ws: Settings):
    assert read_gate_decision(ws, D1) is None and gate_decision_dates(ws) == []
    record = {"date": "2026-01-02", "candidate_version": "3", "action": "challenger"}
    path = write_gate_decision(ws, record)
    assert path == layout.gate_report_path(ws, D2)
    assert read_gate_decision(ws, "2026-01-02") == record
    assert read_gate_decision(ws, D1) is None
    assert gate_decision_dates(ws) == [D2]


def test_gate_decision_dates_ignore_other_names(ws: Settings):
    write_gate_decision(ws, {"date": "2026-01-03"})
    write_gate_decision(ws, {"date": "2026-01-01"})
    folder = layout.gate_reports_dir(ws)
    for name in ("date=not-a-date.json", "date=20260102.json", "notes.json", ".tmp-x.json"):
        (folder / name).write_text("{}")
    assert gate_decision_dates(ws) == [D1, D3]


@pytest.mark.parametrize("text", ["{broken", "[1, 2]", '"a string"'])
def test_a_bad_gate_decision_is_an_error_naming_the_file(ws: Settings, text: str):
    path = layout.gate_report_path(ws, D1)
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(ValueError, match=str(path)):
        read_gate_decision(ws, D1)


# --- loop days --------------------------------------------------------------------------------
def test_loop_days_save_replaces_the_record_of_its_date(ws: Settings):
    assert read_loop_days(ws) == []
    save_loop_day(ws, {"date": "2026-01-02", "phases": ["logs"]})
    save_loop_day(ws, {"date": "2026-01-01", "phases": ["logs"]})
    save_loop_day(ws, {"date": "2026-01-02", "phases": ["logs", "dag"]})
    assert read_loop_days(ws) == [
        {"date": "2026-01-01", "phases": ["logs"]},
        {"date": "2026-01-02", "phases": ["logs", "dag"]},
    ]
    on_disk = json.loads(layout.loop_days_path(ws).read_text())
    assert [r["date"] for r in on_disk] == ["2026-01-01", "2026-01-02"]


@pytest.mark.parametrize(
    "text", ["{broken", '{"not": "a list"}', '[{"date": "2026-01-01"}, {"phases": []}]', "[3]"]
)
def test_a_bad_days_file_is_an_error_and_is_never_overwritten(ws: Settings, text: str):
    path = layout.loop_days_path(ws)
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with pytest.raises(ValueError, match="move it aside"):
        read_loop_days(ws)
    with pytest.raises(ValueError, match=str(path)):
        save_loop_day(ws, {"date": "2026-01-01"})
    assert path.read_text() == text


# --- validated partitions ---------------------------------------------------------------------
def _validated(ws: Settings, day: dt.date, names: tuple[str, ...] = ("part-0.parquet",)) -> None:
    folder = layout.validated_partition(ws, day)
    folder.mkdir(parents=True)
    for name in names:
        pd.DataFrame({"x": [1]}).to_parquet(folder / name)


def test_validated_dates_and_files_by_inclusive_range(ws: Settings):
    assert validated_dates(ws) == [] and validated_files(ws) == []
    _validated(ws, D1)
    _validated(ws, D2, ("part-1.parquet", "part-0.parquet"))
    _validated(ws, D3)
    (ws.validated_dir / ".tmp-date=2026-01-04").mkdir()  # a publish in progress
    (ws.validated_dir / "date=2026-01-05").mkdir()  # complete but empty: a date, no files
    assert validated_dates(ws) == [D1, D2, D3, dt.date(2026, 1, 5)]
    assert validated_dates(ws, D2, D3) == [D2, D3]
    assert validated_dates(ws, last="2026-01-02") == [D1, D2]
    files = validated_files(ws, first=D2)
    assert [f.relative_to(ws.validated_dir).as_posix() for f in files] == [
        "date=2026-01-02/part-0.parquet",
        "date=2026-01-02/part-1.parquet",
        "date=2026-01-03/part-0.parquet",
    ]
    assert validated_files(ws, D1, D1) == [layout.validated_partition(ws, D1) / "part-0.parquet"]
    assert schema.partition_dates(ws.validated_dir) == validated_dates(ws)
