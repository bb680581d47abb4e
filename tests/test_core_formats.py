"""One reader/writer per file format: reports under ``reports/``, artifact metadata, the world.

Every reader answers None for a missing file and raises ``ValueError`` naming the file for one it
cannot read or whose shape is wrong; every writer's file reads back as what was written.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipelines.core import layout, schema
from pipelines.core.ab_decisions import (
    ab_decision_dates,
    ab_experiments,
    read_ab_decision,
    write_ab_decision,
)
from pipelines.core.artifact_meta import (
    artifact_meta_path,
    read_artifact_meta,
    require_artifact_meta,
    write_artifact_meta,
)
from pipelines.core.eval_reports import eval_report_dates, read_eval_report, write_eval_report
from pipelines.core.ope_reports import (
    ope_labels,
    ope_report_dates,
    read_ope_report,
    write_ope_report,
)
from pipelines.core.settings import Settings
from pipelines.core.stats_reports import read_stats_report, stats_report_dates, write_stats_report
from pipelines.data.simulate import build_world, read_world_meta, world_meta, write_world_meta
from pipelines.data.validate import read_validation_report, write_validation_report
from pipelines.ranking.evaluate import read_ranker_report, write_ranker_report

D1, D2 = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
BAD_OBJECTS = ["{broken", "[1, 2]", '"a string"', ""]


@pytest.fixture()
def ws(tmp_path) -> Settings:
    return Settings(home=tmp_path / "home")


def _bad(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- the shared mechanics ---------------------------------------------------------------------
def test_read_json_file_missing_good_and_bad(tmp_path: Path):
    path = tmp_path / "x.json"
    assert schema.read_json_file(path, "thing") is None
    path.write_text('{"a": 1}')
    assert schema.read_json_file(path, "thing") == {"a": 1}
    with pytest.raises(ValueError, match=rf"{path}: thing must be a JSON list, got dict"):
        schema.read_json_file(path, "thing", kind=list)
    path.write_text("{broken")
    with pytest.raises(ValueError, match=rf"{path}: unreadable thing"):
        schema.read_json_file(path, "thing")


def test_dated_json_dates_keep_only_canonical_names(tmp_path: Path):
    assert schema.dated_json_dates(tmp_path / "missing") == []
    for name in ("date=2026-01-02.json", "date=2026-01-01.json", "date=20260103.json",
                 "date=nope.json", "notes.json", ".tmp-date=2026-01-04.json-1234"):  # fmt: skip
        (tmp_path / name).write_text("{}")
    assert schema.dated_json_dates(tmp_path) == [D1, D2]


def test_write_text_atomic_leaves_no_temporary_file(tmp_path: Path):
    path = schema.write_text_atomic("hello", tmp_path / "a" / "b.txt")
    assert path.read_text() == "hello"
    assert [p.name for p in path.parent.iterdir()] == ["b.txt"]


# --- dated reports: eval, stats, validation, ranker ------------------------------------------
DATED: dict[str, tuple[Callable, Callable, Callable]] = {
    "eval": (read_eval_report, write_eval_report, layout.eval_report_path),
    "stats": (read_stats_report, write_stats_report, layout.stats_report_path),
    "validation": (read_validation_report, write_validation_report, layout.validation_report_path),
    "ranker": (read_ranker_report, write_ranker_report, layout.ranker_report_path),
}


@pytest.mark.parametrize("kind", sorted(DATED))
def test_dated_report_round_trip_and_absent_day(ws: Settings, kind: str):
    read, write, path_of = DATED[kind]
    assert read(ws, D1) is None
    report = {"date": "2026-01-02", "metrics": {"mf": {"ndcg@10": 0.25}}, "verdict": "passed"}
    path = write(ws, report)
    assert path == path_of(ws, D2)
    assert path.read_text() == json.dumps(report, indent=2, sort_keys=True) + "\n"
    assert read(ws, "2026-01-02") == report and read(ws, D1) is None


@pytest.mark.parametrize("text", BAD_OBJECTS)
@pytest.mark.parametrize("kind", sorted(DATED))
def test_a_bad_dated_report_is_an_error_naming_the_file(ws: Settings, kind: str, text: str):
    read, _, path_of = DATED[kind]
    path = _bad(path_of(ws, D1), text)
    with pytest.raises(ValueError, match=str(path)):
        read(ws, D1)


def test_eval_and_stats_dates(ws: Settings):
    assert eval_report_dates(ws) == [] and stats_report_dates(ws) == []
    for day in (D2, D1):
        write_eval_report(ws, {"date": day.isoformat()})
    write_stats_report(ws, {"date": D2.isoformat()})
    (layout.eval_reports_dir(ws) / "date=someday.json").write_text("{}")
    assert eval_report_dates(ws) == [D1, D2] and stats_report_dates(ws) == [D2]


# --- OPE reports ------------------------------------------------------------------------------
def _ope(day: dt.date, label: str) -> dict[str, Any]:
    est = {"estimate": np.float32(0.25), "ci_low": np.float64(0.125), "ci_high": 0.5}
    return {"date": day.isoformat(), "policy": label, "estimates": {"snips": est}, "users": 3}


def test_ope_report_keeps_its_bytes_and_reads_back(ws: Settings):
    report = _ope(D1, "bundle-3")
    path = write_ope_report(ws, report)
    assert path == layout.ope_report_path(ws, D1, "bundle-3")
    # the bytes the evaluation always wrote: numpy numbers as floats, no trailing newline
    assert path.read_text() == json.dumps(report, indent=2, sort_keys=True, default=float)
    back = read_ope_report(ws, D1, "bundle-3")
    assert back["estimates"]["snips"] == {"estimate": 0.25, "ci_low": 0.125, "ci_high": 0.5}
    assert read_ope_report(ws, D1, "bundle-4") is None and read_ope_report(ws, D2, "x") is None


def test_ope_dates_and_labels(ws: Settings):
    assert ope_report_dates(ws) == [] and ope_labels(ws, D1) == []
    for label in ("bundle-10", "bundle-1-x", "bundle-1", "bundle-2"):
        write_ope_report(ws, _ope(D2, label))
    write_ope_report(ws, _ope(D1, "bundle-1"))
    (layout.ope_reports_dir(ws) / ".tmp-date=2026-01-03").mkdir()
    assert ope_report_dates(ws) == [D1, D2]
    # by file name, as the reports were always listed
    assert ope_labels(ws, D2) == ["bundle-1-x", "bundle-1", "bundle-10", "bundle-2"]


@pytest.mark.parametrize("text", BAD_OBJECTS)
def test_a_bad_ope_report_is_an_error_naming_the_file(ws: Settings, text: str):
    path = _bad(layout.ope_report_path(ws, D1, "bundle-1"), text)
    with pytest.raises(ValueError, match=str(path)):
        read_ope_report(ws, D1, "bundle-1")


# --- A/B decisions ----------------------------------------------------------------------------
def test_ab_decisions_round_trip_and_listing(ws: Settings):
    assert ab_experiments(ws) == [] and ab_decision_dates(ws, "1-vs-2") == []
    for exp, day in (("1-vs-2", D2), ("1-vs-2", D1), ("1-vs-3", D2)):
        path = write_ab_decision(ws, {"experiment": exp, "date": day.isoformat(), "action": "x"})
        assert path == layout.ab_report_path(ws, exp, day)
    (layout.ab_reports_dir(ws) / "stray.json").write_text("{}")  # not an experiment folder
    assert ab_experiments(ws) == ["1-vs-2", "1-vs-3"]
    assert ab_decision_dates(ws, "1-vs-2") == [D1, D2] and ab_decision_dates(ws, "1-vs-3") == [D2]
    assert read_ab_decision(ws, "1-vs-3", D2) == {
        "experiment": "1-vs-3", "date": D2.isoformat(), "action": "x",
    }  # fmt: skip
    assert read_ab_decision(ws, "1-vs-3", D1) is None


@pytest.mark.parametrize("text", BAD_OBJECTS)
def test_a_bad_ab_decision_is_an_error_naming_the_file(ws: Settings, text: str):
    from pipelines.experiments import ab

    path = _bad(layout.ab_report_path(ws, "1-vs-2", D1), text)
    with pytest.raises(ValueError, match=str(path)):
        read_ab_decision(ws, "1-vs-2", D1)
    with pytest.raises(ValueError, match=str(path)):
        ab.history(ws, "1-vs-2")


# --- artifact metadata ------------------------------------------------------------------------
def test_artifact_meta_round_trip_keeps_the_hashed_bytes(tmp_path: Path):
    folder = tmp_path / "artifact"
    folder.mkdir()
    assert read_artifact_meta(folder) is None
    with pytest.raises(FileNotFoundError, match=str(artifact_meta_path(folder))):
        require_artifact_meta(folder)
    meta = {"version": "two_tower-2026-01-01", "n_items": 3, "window_days": None}
    path = write_artifact_meta(folder, meta)
    assert path == folder / "meta.json"
    assert path.read_text() == json.dumps(meta, indent=2, sort_keys=True)  # artifact hashes
    assert read_artifact_meta(folder) == meta == require_artifact_meta(str(folder))


@pytest.mark.parametrize("text", BAD_OBJECTS)
def test_a_bad_artifact_meta_is_an_error_naming_the_file(tmp_path: Path, text: str):
    path = _bad(tmp_path / "artifact" / "meta.json", text)
    for read in (read_artifact_meta, require_artifact_meta):
        with pytest.raises(ValueError, match=str(path)):
            read(path.parent)


# --- the simulated world ----------------------------------------------------------------------
def test_world_meta_round_trip(ws: Settings):
    assert read_world_meta(ws) is None
    world = build_world("tiny", 3, D1)
    path = write_world_meta(ws, world)
    assert path == layout.world_path(ws)
    assert read_world_meta(ws) == world_meta(world)


@pytest.mark.parametrize("text", [*BAD_OBJECTS, '{"scale": "tiny", "seed": 3}'])
def test_a_bad_world_record_is_an_error_naming_the_file(ws: Settings, text: str):
    from pipelines.data.simulate import load_world

    path = _bad(layout.world_path(ws), text)
    with pytest.raises(ValueError, match=str(path)):
        read_world_meta(ws)
    with pytest.raises(ValueError, match=str(path)):
        load_world(ws)
