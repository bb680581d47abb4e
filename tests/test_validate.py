"""The validation gate: each kind of bad row is quarantined with its reason, every good row is kept,
partition-level faults fail with a message naming the file and the expectation, failed reruns
leave previous outputs alone, reruns are byte-identical, and the CLI exits 2 on failure."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.data.validate import (
    ValidationError,
    ValidationResult,
    parse_reason,
    validate_partition,
)

DAY = dt.date(2024, 3, 10)
DAY_START = pd.Timestamp(DAY, tz="UTC")

NOT_NULL = "expect_column_values_to_not_be_null({})"
NON_BLANK = "parse({} as non-blank string)"
IN_SET = "expect_column_values_to_be_in_set(event)"
RATING = "expect_column_values_to_be_between(value where event == 'rating')"
COUNT = "expect_column_values_to_be_between(value where event != 'rating')"
PROPENSITY = "expect_column_values_to_be_between(propensity)"
POSITION = "expect_column_values_to_be_between(position)"
TS_IN_DAY = "expect_column_values_to_be_between(ts)"
UNIQUE = "expect_column_values_to_be_unique(event_id)"


def good_rows(n: int, day: dt.date = DAY, prefix: str = "e") -> pd.DataFrame:
    """``n`` valid interactions of ``day`` following ``schema.INTERACTIONS``."""
    rng = np.random.default_rng(0)
    events = np.array(["impression", "click", "purchase", "rating"])[np.arange(n) % 4]
    return pd.DataFrame(
        {
            "event_id": [f"{prefix}{i}" for i in range(n)],
            "ts": pd.Timestamp(day, tz="UTC") + pd.to_timedelta(np.arange(n) * 60, unit="s"),
            "user_id": [f"u{i % 17}" for i in range(n)],
            "item_id": [f"i{i % 23}" for i in range(n)],
            "event": events,
            "value": np.where(events == "rating", 1.0 + np.arange(n) % 5, 1.0),
            "request_id": [f"r{i // 5}" for i in range(n)],
            "position": (np.arange(n) % 5).astype("int32"),
            "arm": "A",
            "model_version": "pop-0",
            "propensity": rng.uniform(0.05, 1.0, n),
        }
    )


def write_raw(settings: Settings, df: pd.DataFrame, day: dt.date = DAY) -> Path:
    return schema.write_partition_atomic(df, settings.interactions_dir, day)


# (case, row of a 500-row typed partition, new values of that row, expected reasons; None = kept)
TYPED_CASES: list[tuple[str, int, dict[str, object], list[str] | None]] = [
    ("null event_id", 10, {"event_id": None}, [NOT_NULL.format("event_id")]),
    ("null ts", 11, {"ts": pd.NaT}, [NOT_NULL.format("ts")]),
    ("null user_id", 12, {"user_id": None}, [NOT_NULL.format("user_id")]),
    ("null event", 14, {"event": None}, [NOT_NULL.format("event")]),
    ("null value", 15, {"value": np.nan}, [NOT_NULL.format("value")]),
    ("blank user_id", 16, {"user_id": ""}, [NON_BLANK.format("user_id")]),
    ("blank event_id", 17, {"event_id": ""}, [NON_BLANK.format("event_id")]),
    ("event not in enum", 18, {"event": "view"}, [IN_SET]),
    ("rating above 5", 19, {"event": "rating", "value": 6.0}, [RATING]),
    ("rating below 0.5", 20, {"event": "rating", "value": 0.0}, [RATING]),
    ("negative count", 21, {"event": "click", "value": -1.0}, [COUNT]),
    ("infinite value", 22, {"event": "purchase", "value": np.inf}, [parse_reason("value")]),
    ("propensity 0", 23, {"propensity": 0.0}, [PROPENSITY]),
    ("propensity above 1", 24, {"propensity": 1.5}, [PROPENSITY]),
    ("negative position", 25, {"position": -1}, [POSITION]),
    ("ts next day", 26, {"ts": DAY_START + pd.Timedelta(days=1)}, [TS_IN_DAY]),
    ("ts day before", 27, {"ts": DAY_START - pd.Timedelta(seconds=1)}, [TS_IN_DAY]),
    ("duplicate event_id", 28, {"event_id": "e3"}, [UNIQUE]),
    ("two faults", 29, {"event": "view", "propensity": 2.0}, [IN_SET, PROPENSITY]),
    ("propensity null is fine", 30, {"propensity": np.nan}, None),
    ("propensity exactly 1", 31, {"propensity": 1.0}, None),
    ("last microsecond", 32, {"ts": DAY_START + pd.Timedelta(days=1, microseconds=-1)}, None),
    ("rating 5 kept", 33, {"event": "rating", "value": 5.0}, None),
    ("unknown user kept", 34, {"user_id": "u-new"}, None),
    ("unknown item kept", 35, {"item_id": "i-new"}, None),
]


def apply_cases(df: pd.DataFrame, cases: list[tuple[str, int, dict[str, object], object]]) -> None:
    for _, row, values, _ in cases:
        for col, value in values.items():
            df.loc[row, col] = value


# An all-text partition (e.g. a CSV import gone wrong): strings that must parse, and ones that don't.
TEXT_DAY = DAY + dt.timedelta(days=1)
TEXT_CASES: list[tuple[str, int, dict[str, object], list[str] | None]] = [
    ("unparseable ts", 5, {"ts": "yesterday"}, [parse_reason("ts")]),
    ("unparseable value", 6, {"value": "abc"}, [parse_reason("value")]),
    ("fractional position", 7, {"position": "1.5"}, [parse_reason("position")]),
    ("unparseable propensity", 8, {"propensity": "high"}, [parse_reason("propensity")]),
    ("null item_id", 9, {"item_id": None}, [NOT_NULL.format("item_id")]),
    ("ts with offset", 10, {"ts": f"{TEXT_DAY}T05:00:00+02:00"}, None),
    ("ts naive with space", 11, {"ts": f"{TEXT_DAY} 23:59:59"}, None),
    ("ts offset into next day", 12, {"ts": f"{TEXT_DAY}T23:30:00-01:00"}, [TS_IN_DAY]),
]


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Validate one typed and one all-text partition (one GX run each) for the table tests."""
    settings = Settings.from_env({"RECLOOP_HOME": str(tmp_path_factory.mktemp("gate"))})
    settings.ensure_dirs()
    typed = good_rows(500)
    typed["event_id"] = typed["event_id"].astype(object)
    apply_cases(typed, TYPED_CASES)
    write_raw(settings, typed)
    schema.write_table_atomic(
        pd.DataFrame({"user_id": [f"u{i}" for i in range(17)], "age": 30}),
        settings.data_dir / "users.parquet",
    )
    schema.write_table_atomic(
        pd.DataFrame({"item_id": [f"i{i}" for i in range(23)], "price": 1.0}),
        settings.data_dir / "items.parquet",
    )
    typed_result = validate_partition(settings, DAY)

    text = good_rows(60, TEXT_DAY, prefix="t")
    text["ts"] = text["ts"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    for col in ("value", "position", "propensity"):
        text[col] = text[col].astype(str)
    text["user_id"] = np.arange(60) % 7  # integer ids are kept as their decimal text
    text = text.astype(object)
    apply_cases(text, TEXT_CASES)
    write_raw(settings, text, TEXT_DAY)
    text_result = validate_partition(Settings(home=settings.home, max_bad_row_share=0.2), TEXT_DAY)
    return {
        "settings": settings,
        "typed": typed,
        "typed_result": typed_result,
        "typed_quarantine": pd.read_parquet(typed_result.quarantine_path),
        "typed_validated": pd.read_parquet(typed_result.validated_path),
        "text": text,
        "text_result": text_result,
        "text_quarantine": pd.read_parquet(text_result.quarantine_path),
        "text_validated": pd.read_parquet(text_result.validated_path),
    }


def reasons_of(quarantine: pd.DataFrame, row: int) -> list[str] | None:
    hit = quarantine[quarantine["row"] == row]
    assert len(hit) <= 1
    return None if hit.empty else hit["reason"].iloc[0].split("; ")


@pytest.mark.parametrize(
    "name,row,expected", [(c[0], c[1], c[3]) for c in TYPED_CASES], ids=[c[0] for c in TYPED_CASES]
)
def test_typed_row_case(gate: dict, name: str, row: int, expected: list[str] | None) -> None:
    assert reasons_of(gate["typed_quarantine"], row) == expected
    source = gate["typed"].loc[row]
    kept = gate["typed_validated"]
    if expected is None:
        match = kept[
            (kept["event_id"] == source["event_id"]) & (kept["user_id"] == source["user_id"])
        ]
        assert len(match) == 1, f"good row {row} ({name}) was not kept"


@pytest.mark.parametrize(
    "name,row,expected", [(c[0], c[1], c[3]) for c in TEXT_CASES], ids=[c[0] for c in TEXT_CASES]
)
def test_text_row_case(gate: dict, name: str, row: int, expected: list[str] | None) -> None:
    assert reasons_of(gate["text_quarantine"], row) == expected
    if expected is None:
        assert f"t{row}" in set(gate["text_validated"]["event_id"])


def test_every_good_row_is_kept_and_conformed(gate: dict) -> None:
    typed, result = gate["typed"], gate["typed_result"]
    bad_rows = {row for _, row, _, exp in TYPED_CASES if exp is not None}
    expected = typed.drop(index=sorted(bad_rows)).reset_index(drop=True)
    kept = gate["typed_validated"]
    assert result.rows_total == 500
    assert result.rows_good == len(kept) == len(expected)
    assert result.rows_quarantined == len(bad_rows) == len(gate["typed_quarantine"])
    assert list(kept["event_id"]) == list(expected["event_id"])
    assert kept["event_id"].is_unique
    assert list(kept["value"]) == list(expected["value"])
    table = pq.read_table(result.validated_path)
    assert table.schema.equals(schema.INTERACTIONS)
    assert table.num_rows == result.rows_good
    assert table.column("propensity").null_count == 1  # the "propensity null is fine" row


def test_duplicate_keeps_the_first(gate: dict) -> None:
    kept = gate["typed_validated"]
    firsts = kept[kept["event_id"] == "e3"]
    assert len(firsts) == 1
    assert firsts["user_id"].iloc[0] == "u3"  # row 3's, not row 28's


def test_text_partition_parses_and_keeps_raw_text(gate: dict) -> None:
    kept, quarantine = gate["text_validated"], gate["text_quarantine"]
    assert set(kept["user_id"]) <= {str(i) for i in range(7)}
    assert str(kept["ts"].dtype) == "datetime64[us, UTC]"
    row10 = kept[kept["event_id"] == "t10"]["ts"].iloc[0]
    assert row10 == pd.Timestamp(f"{TEXT_DAY}T03:00:00", tz="UTC")
    # Columns with unparseable values keep the original text; the rest stay typed.
    assert quarantine.loc[quarantine["row"] == 5, "ts"].iloc[0] == "yesterday"
    assert quarantine.loc[quarantine["row"] == 6, "value"].iloc[0] == "abc"
    assert quarantine.loc[quarantine["row"] == 7, "position"].iloc[0] == "1.5"
    assert set(quarantine["file"]) == {f"data/interactions/date={TEXT_DAY}/part-0.parquet"}
    assert gate["text_result"].rows_quarantined == len(quarantine) == 6


def test_unknown_ids_counted_not_quarantined(gate: dict) -> None:
    result = gate["typed_result"]
    assert result.unknown_users == 1 and result.unknown_user_rows == 1
    assert result.unknown_items == 1 and result.unknown_item_rows == 1
    # The text partition's integer user ids are unknown to users.parquet (u0..u16): all counted.
    text = gate["text_result"]
    assert text.unknown_users == 7 and text.unknown_user_rows == text.rows_good


def test_report_and_data_docs(gate: dict) -> None:
    result: ValidationResult = gate["typed_result"]
    report = json.loads(result.report_path.read_text())
    assert report["verdict"] == "passed"
    assert report["rows"] == {
        "total": 500,
        "good": result.rows_good,
        "quarantined": result.rows_quarantined,
    }
    assert report["quarantined_by_reason"][IN_SET] == 2
    by_check = {e["check"]: e for e in report["expectations"]}
    assert by_check[IN_SET]["unexpected_count"] == 2 and not by_check[IN_SET]["success"]
    assert by_check[UNIQUE]["unexpected_count"] == 2  # GX flags both copies; the first is kept
    assert report["unknown_ids"] == {"users": 1, "user_rows": 1, "items": 1, "item_rows": 1}
    assert report["volume"]["ratio"] is None
    docs = gate["settings"].reports_dir / "data_docs"
    assert (docs / "index.html").exists()
    pages = list((docs / "validations").rglob("*.html"))
    assert any(f"date={DAY}" in str(p) for p in pages)


def test_missing_reference_files_give_none(settings: Settings) -> None:
    write_raw(settings, good_rows(50))
    result = validate_partition(settings, DAY)
    assert result.unknown_users is None and result.unknown_items is None
    assert result.rows_good == 50 and result.rows_quarantined == 0
    assert pd.read_parquet(result.quarantine_path).empty


# --- partition-level faults ------------------------------------------------------------------


def test_missing_partition(settings: Settings) -> None:
    with pytest.raises(ValidationError, match="partition_exists") as err:
        validate_partition(settings, DAY)
    assert f"date={DAY}" in str(err.value)
    report = json.loads((settings.reports_dir / "validation" / f"date={DAY}.json").read_text())
    assert report["verdict"] == "failed" and report["failed_expectation"] == "partition_exists"


def test_corrupt_parquet(settings: Settings) -> None:
    folder = schema.partition_dir(settings.interactions_dir, DAY)
    folder.mkdir(parents=True)
    (folder / "part-0.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ValidationError, match="parquet_readable") as err:
        validate_partition(settings, DAY)
    assert str(folder / "part-0.parquet") in str(err.value)


def test_missing_required_column(settings: Settings) -> None:
    write_raw(settings, good_rows(20).drop(columns=["user_id"]))
    with pytest.raises(ValidationError, match="required_columns_present") as err:
        validate_partition(settings, DAY)
    assert "user_id" in str(err.value) and "part-0.parquet" in str(err.value)


def test_missing_optional_columns_are_fine(settings: Settings) -> None:
    write_raw(settings, good_rows(20).drop(columns=["propensity", "arm", "request_id"]))
    result = validate_partition(settings, DAY)
    assert result.rows_good == 20
    assert pd.read_parquet(result.validated_path)["propensity"].isna().all()


def test_empty_partition(settings: Settings) -> None:
    write_raw(settings, good_rows(5).iloc[:0])
    with pytest.raises(ValidationError, match="partition_not_empty"):
        validate_partition(settings, DAY)


def test_too_many_bad_rows(settings: Settings) -> None:
    df = good_rows(100)
    df.loc[[3, 40, 41, 42, 43, 44, 45, 46], "event"] = "view"  # 8% > 5%
    write_raw(settings, df)
    with pytest.raises(ValidationError) as err:
        validate_partition(settings, DAY)
    msg = str(err.value)
    assert "max_bad_row_share" in msg and IN_SET in msg and "part-0.parquet" in msg
    assert "row 3 " in msg and len(err.value.examples) == 5
    assert not schema.partition_dir(settings.validated_dir, DAY).exists()
    assert not schema.partition_dir(settings.quarantine_dir, DAY).exists()


def write_history(settings: Settings, rows: int, days: int) -> None:
    for k in range(1, days + 1):
        day = DAY - dt.timedelta(days=k)
        schema.write_partition_atomic(
            schema.conform(good_rows(rows, day)), settings.validated_dir, day
        )


def test_volume_collapse(settings: Settings) -> None:
    write_history(settings, rows=200, days=3)
    write_raw(settings, good_rows(30))  # 30 < 0.2 * 200
    with pytest.raises(ValidationError, match="expect_table_row_count_to_be_between") as err:
        validate_partition(settings, DAY)
    assert "volume collapse" in str(err.value) and "part-0.parquet" in str(err.value)


def test_volume_needs_three_days_of_history(settings: Settings) -> None:
    write_history(settings, rows=200, days=2)
    write_raw(settings, good_rows(30))
    result = validate_partition(settings, DAY)
    assert result.trailing_days == 2 and result.volume_ratio == pytest.approx(30 / 200)


def test_volume_ok(settings: Settings) -> None:
    write_history(settings, rows=200, days=4)
    write_raw(settings, good_rows(41))  # 41 >= 0.2 * 200
    result = validate_partition(settings, DAY)
    assert result.trailing_days == 4 and result.volume_ratio == pytest.approx(41 / 200)


# --- reruns ----------------------------------------------------------------------------------


def output_bytes(result: ValidationResult) -> tuple[bytes, bytes, bytes]:
    return (
        result.validated_path.read_bytes(),
        result.quarantine_path.read_bytes(),
        result.report_path.read_bytes(),
    )


def test_rerun_is_identical(settings: Settings) -> None:
    df = good_rows(120)
    df.loc[7, "event"] = "view"
    df.loc[9, "event_id"] = "e1"
    write_raw(settings, df)
    first = output_bytes(validate_partition(settings, DAY))
    second = validate_partition(settings, DAY)
    assert output_bytes(second) == first
    assert second.rows_quarantined == 2


def test_failed_rerun_keeps_previous_outputs(settings: Settings) -> None:
    write_raw(settings, good_rows(100))
    result = validate_partition(settings, DAY)
    before = output_bytes(result)[:2]
    broken = good_rows(100)
    broken.loc[:20, "value"] = -5.0
    write_raw(settings, broken)
    with pytest.raises(ValidationError, match="max_bad_row_share"):
        validate_partition(settings, DAY)
    assert output_bytes(result)[:2] == before
    assert [p.name for p in result.validated_path.parent.parent.iterdir()] == [f"date={DAY}"]
    report = json.loads(result.report_path.read_text())
    assert report["verdict"] == "failed"


# --- the command -----------------------------------------------------------------------------


def test_cli_exit_codes(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "--date", str(DAY)]) == 2
    assert "partition_exists" in capsys.readouterr().err
    df = good_rows(50)
    df.loc[4, "propensity"] = 0.0
    write_raw(settings, df)
    assert main(["validate", "--date", str(DAY)]) == 0
    out = capsys.readouterr().out
    assert "50 rows, 49 good, 1 quarantined" in out and PROPENSITY in out


def test_several_files_extra_columns_and_mixed_types(settings: Settings) -> None:
    first = good_rows(40)
    second = good_rows(30, prefix="f")
    second["session"] = "s1"  # not in the contract: kept in quarantine, dropped from validated
    second["value"] = second["value"].astype(str)
    second.loc[7, "value"] = "n/a"
    folder = write_raw(settings, first)
    schema.write_table_atomic(second, folder / "part-1.parquet")
    result = validate_partition(settings, DAY)
    assert (result.rows_total, result.rows_good, result.rows_quarantined) == (70, 69, 1)
    q = pd.read_parquet(result.quarantine_path)
    assert q["file"].tolist() == [f"data/interactions/date={DAY}/part-1.parquet"]
    assert q["row"].tolist() == [7] and q["value"].tolist() == ["n/a"]
    assert q["session"].tolist() == ["s1"] and q["reason"].tolist() == [parse_reason("value")]
    kept = pq.read_table(result.validated_path)
    assert kept.schema.equals(schema.INTERACTIONS)
    assert kept.column("event_id").to_pylist()[:41] == [f"e{i}" for i in range(40)] + ["f0"]


def test_failure_examples_cover_each_reason(settings: Settings) -> None:
    df = good_rows(60)
    df.loc[[1, 2, 3, 4, 5, 6], "event"] = "view"
    df.loc[50, "propensity"] = 0.0
    write_raw(settings, df)
    with pytest.raises(ValidationError) as err:
        validate_partition(settings, DAY)
    examples = err.value.examples
    assert len(examples) == 5
    assert any(PROPENSITY in e for e in examples) and any(IN_SET in e for e in examples)
    assert "row 50 " in str(err.value)


# --- imported history ------------------------------------------------------------------------

IMPORT_VOLUMES = [200, 200, 200, 30]  # the last day collapses: 30 < 0.2 x 200


def import_history(settings: Settings, tmp_path: Path) -> list[dt.date]:
    """Import a CSV with ``IMPORT_VOLUMES`` rows on consecutive days ending on ``DAY``; the days."""
    from pipelines.data import ingest

    days = [
        DAY - dt.timedelta(days=len(IMPORT_VOLUMES) - 1 - k) for k in range(len(IMPORT_VOLUMES))
    ]
    lines = ["user,item,when"]
    for day, n in zip(days, IMPORT_VOLUMES, strict=True):
        start = pd.Timestamp(day, tz="UTC")
        lines += [f"u{i % 13},i{i % 29},{(start + pd.Timedelta(seconds=60 * i)).isoformat()}"
                  for i in range(n)]  # fmt: skip
    src = tmp_path / "history.csv"
    src.write_text("\n".join(lines) + "\n")
    ingest.import_table(settings, src, {"user_id": "user", "item_id": "item", "ts": "when"})
    return days


def test_imported_volume_collapse_warns_where_live_fails(settings: Settings, tmp_path) -> None:
    days = import_history(settings, tmp_path)
    for day in days[:-1]:
        assert validate_partition(settings, day).warnings == ()
    result = validate_partition(settings, DAY)
    assert result.passed and result.rows_good == 30 and result.volume_rule == "imported"
    assert result.volume_ratio == pytest.approx(30 / 200)
    assert len(result.warnings) == 1 and "volume collapse in imported history" in result.warnings[0]
    report = json.loads(result.report_path.read_text())
    volume = report["volume"]
    assert volume["rule"] == "imported" and volume["statistic"] == "median"
    assert volume["trailing_median"] == 200 and volume["warn_rows"] == 40
    assert volume["import"]["source"] == "table" and report["warnings"] == [volume["warning"]]
    assert "history.csv" in volume["warning"]

    # The same 30 rows written as a live log (the partition is no longer the imported one): fails.
    write_raw(settings, good_rows(30))
    with pytest.raises(ValidationError, match="RECLOOP_MIN_VOLUME_RATIO") as err:
        validate_partition(settings, DAY)
    assert "volume collapse: 30 rows < 0.2 x 200.0" in str(err.value)
    report = json.loads(result.report_path.read_text())
    assert report["verdict"] == "failed" and report["volume"]["rule"] == "live"


def test_live_volume_collapse_names_the_setting(settings: Settings) -> None:
    write_history(settings, rows=200, days=3)
    write_raw(settings, good_rows(30))
    with pytest.raises(ValidationError, match="RECLOOP_MIN_VOLUME_RATIO=0.2"):
        validate_partition(settings, DAY)
    report = json.loads((settings.reports_dir / "validation" / f"date={DAY}.json").read_text())
    assert report["volume"]["rule"] == "live" and report["volume"]["warning"] is None
    assert report["volume"]["ratio"] == pytest.approx(30 / 200) and report["warnings"] == []


def test_imported_min_volume_ratio_fails_imported_days(
    settings: Settings, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    days = import_history(settings, tmp_path)
    monkeypatch.setenv("RECLOOP_IMPORTED_MIN_VOLUME_RATIO", "0.25")
    strict = Settings.from_env()
    for day in days[:-1]:
        validate_partition(strict, day)
    with pytest.raises(ValidationError, match="RECLOOP_IMPORTED_MIN_VOLUME_RATIO") as err:
        validate_partition(strict, DAY)
    assert "30 rows < 0.25 x 200.0 (median" in str(err.value)


def test_batch_without_data_docs_then_build(settings: Settings) -> None:
    from pipelines.data.validate import build_data_docs

    write_raw(settings, good_rows(20))
    result = validate_partition(settings, DAY, data_docs=False)
    assert result.passed
    docs = settings.reports_dir / "data_docs"
    assert not list(docs.rglob("*.html"))
    assert build_data_docs(settings) == docs / "index.html" and (docs / "index.html").exists()
    assert any(f"date={DAY}" in str(p) for p in (docs / "validations").rglob("*.html"))
