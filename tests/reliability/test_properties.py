"""Issue 17, property tests: hypothesis over the validation gate and the importers.

The gate (:func:`pipelines.data.validate.validate_partition`) gets raw partitions of one to three
parquet files whose columns come in the types real writers produce (strings, dictionary-encoded
strings, integers, floats, UTC / naive / other-zone timestamps, ISO text, all-null columns,
optional columns left out, an extra column), holding three kinds of rows:

- **good** rows, made well-formed by construction (unique event ids);
- **bad** rows: a good row with one column broken (null or blank ids, an unknown event, NaN / inf /
  negative / out-of-range values, fractional or out-of-int32 positions, propensity 0 or > 1,
  timestamps outside the day or unparseable, an event id repeating an earlier good row's);
- **any** rows: arbitrary values (huge strings, any float, any integer, any timestamp).

Properties: the gate never crashes (it returns, or raises its own ``ValidationError`` for a file
missing a required column, writing nothing); every validated row satisfies the log contract
(:func:`contract_violations`, written here from ``pipelines/core/schema.py``'s table); nothing is
lost (validated + quarantined = input rows, each input row in exactly one of them); every good
row is validated with its values; every bad row is quarantined.

The importers (:mod:`pipelines.data.ingest`: a generic CSV table with a column and event
mapping, MovieLens ``u.data``) get source files of good and broken lines. Properties: they import
or fail with a ``ValueError`` naming the file, never another exception; imported + dropped =
source rows; the partitions follow the contract's types; every good line is imported once with
its values; and (table importer) the gate then validates every good line.

Examples are bounded (:data:`GATE_EXAMPLES` and friends) and derandomized: the module runs in
under ~30 s.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.data import ingest
from pipelines.data.validate import REQUIRED_COLUMNS, ValidationError, validate_partition

GATE_EXAMPLES = 40
TABLE_EXAMPLES = 12
MOVIELENS_EXAMPLES = 25
DAY = dt.date(2024, 3, 10)
DAY_START = dt.datetime(2024, 3, 10, tzinfo=dt.UTC)
NEXT_DAY = DAY_START + dt.timedelta(days=1)
US = dt.timedelta(microseconds=1)
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
ID_BASE = 1_000_000  # good rows' event ids: decimal text of ID_BASE + i (also as integers)

PROPS = hsettings(
    max_examples=GATE_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],  # no shrinking: the messages name the rows
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture],
)  # fmt: skip


@pytest.fixture(scope="module")
def home() -> Iterator[Path]:
    """One workspace for every example (its folders are emptied before each); no fsync."""
    old = os.environ.get("RECLOOP_FSYNC")
    os.environ["RECLOOP_FSYNC"] = "0"
    folder = Path(tempfile.mkdtemp(prefix="recloop-props-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
    if old is None:
        os.environ.pop("RECLOOP_FSYNC", None)
    else:
        os.environ["RECLOOP_FSYNC"] = old


def fresh(home: Path) -> Settings:
    """Settings over ``home`` with its data, reports and quarantine emptied; bad rows never fail
    a partition here (``max_bad_row_share`` 1): the properties are about rows."""
    settings = Settings(home=home, max_bad_row_share=1.0)
    for folder in (settings.data_dir, settings.quarantine_dir, settings.reports_dir / "validation"):
        shutil.rmtree(folder, ignore_errors=True)
    settings.ensure_dirs()
    return settings


# --- the log contract, as schema.py's table states it --------------------------------------


def contract_violations(table: pa.Table, day: dt.date) -> list[str]:
    """What in ``table`` breaks the ``interactions`` contract for partition ``day``: types,
    non-null columns, non-blank ids, events, value ranges, position, propensity, ts inside the
    day, unique event ids. Empty when it holds."""
    if not table.schema.equals(schema.INTERACTIONS):
        return [f"schema {table.schema} is not the contract's"]
    out = []
    for f in schema.INTERACTIONS:
        if not f.nullable and table.column(f.name).null_count:
            out.append(f"nulls in {f.name}")
    df = table.to_pandas()
    if out or df.empty:
        return out
    for c in ("event_id", "user_id", "item_id"):
        if (df[c].str.strip() == "").any():
            out.append(f"blank {c}")
    if not df["event"].isin(schema.EVENTS).all():
        out.append(f"events {set(df['event']) - set(schema.EVENTS)}")
    value = df["value"].to_numpy()
    rating = (df["event"] == "rating").to_numpy()
    lo, hi = schema.RATING_RANGE
    if not np.isfinite(value).all():
        out.append("non-finite value")
    elif ((value < lo) | (value > hi))[rating].any() or (value < 0)[~rating].any():
        out.append("value out of range")
    prop = df["propensity"].dropna().to_numpy()
    if not (np.isfinite(prop) & (prop > 0) & (prop <= 1)).all():
        out.append("propensity outside (0, 1]")
    if (df["position"].dropna() < 0).any():
        out.append("negative position")
    start = pd.Timestamp(day, tz="UTC")
    if not df["ts"].between(start, start + pd.Timedelta(days=1), inclusive="left").all():
        out.append("ts outside the day")
    if not df["event_id"].is_unique:
        out.append("duplicate event_id")
    return out


# --- raw partitions: columns in the types writers produce ----------------------------------

REPRS: dict[str, list[str]] = {
    "event_id": ["text", "int"],
    "ts": ["ts_utc", "ts_naive", "ts_zone", "text"],
    "user_id": ["text", "int", "float", "dict"],
    "item_id": ["text", "int"],
    "event": ["text", "dict"],
    "value": ["float", "text"],
    "request_id": ["text", "null", "absent"],
    "position": ["int", "float", "text", "null", "absent"],
    "arm": ["dict", "text", "absent"],
    "model_version": ["text", "absent"],
    "propensity": ["float", "text", "null", "absent"],
}
"""How each column may be written (``absent``: left out, ``null``: an all-null column)."""
ARROW = {"text": pa.string(), "dict": pa.dictionary(pa.int32(), pa.string()),
         "int": pa.int64(), "float": pa.float64(), "null": pa.null(),
         "ts_utc": pa.timestamp("us", tz="UTC"), "ts_naive": pa.timestamp("us"),
         "ts_zone": pa.timestamp("us", tz="Asia/Kolkata")}  # fmt: skip
WHITESPACE = [" ", "\t", "\n", "  \t ", "\u00a0", "\u3000", "\u2003 "]
BAD_TEXT_TS = ["yesterday", "", "2024-13-01T00:00:00", "2024-03-10T25:00:00", "10/03/2024",
               "2024-03-09T23:59:59.999999Z", "2024-03-11T00:00:00Z", "2024-03-10T23:30:00-01:00",
               "NaT", "1710028800"]  # fmt: skip
BAD_TS = [DAY_START - US, NEXT_DAY, NEXT_DAY + dt.timedelta(hours=5),
          dt.datetime(1970, 1, 1, tzinfo=dt.UTC), dt.datetime(2200, 1, 1, tzinfo=dt.UTC),
          dt.datetime(1, 1, 1, tzinfo=dt.UTC), dt.datetime(9999, 12, 31, tzinfo=dt.UTC)]  # fmt: skip


@dataclass
class Row:
    """One logical row: ``values`` (column → Python value, None = null) and what it is:
    ``good``, ``bad`` (``broken``: the column broken) or ``any``."""

    values: dict[str, Any]
    kind: str
    broken: str = ""


@st.composite
def good_values(draw: st.DrawFn, i: int, reprs: dict[str, str]) -> dict[str, Any]:
    """A well-formed row (event id ``ID_BASE + i``) writable in ``reprs``."""
    event = draw(st.sampled_from(schema.EVENTS))
    if event == "rating":
        value = draw(st.sampled_from([0.5, 1.0, 2.5, 4.0, 5.0]) | st.floats(0.5, 5.0))
    else:
        value = draw(st.sampled_from([0.0, 1.0, 3.0]) | st.floats(0.0, 1e9))
    offset = draw(st.integers(0, 86_400 * 10**6 - 1))
    opt_text = st.none() | st.text(min_size=1, max_size=12)

    def optional(col: str, strat: st.SearchStrategy) -> Any:
        return None if reprs[col] in ("null", "absent") else draw(strat)

    return {
        "event_id": str(ID_BASE + i),
        "ts": DAY_START + dt.timedelta(microseconds=offset),
        "user_id": str(draw(st.integers(0, 50))),
        "item_id": str(draw(st.integers(0, 10**12))),
        "event": event,
        "value": value,
        "request_id": optional("request_id", opt_text),
        "position": optional("position", st.none() | st.integers(0, 2**31 - 1)),
        "arm": optional("arm", st.none() | st.sampled_from(["champion", "challenger", "A"])),
        "model_version": optional("model_version", opt_text),
        "propensity": optional("propensity", st.none() | st.floats(1e-9, 1.0)),
    }


def bad_choices(col: str, rep: str, event: str) -> list[Any]:
    """Values that break column ``col`` written as ``rep`` (for a row of ``event``); [] when
    that representation cannot hold a wrong value of it."""
    if col in ("event_id", "user_id", "item_id"):
        return [None] + (WHITESPACE + [""] if rep in ("text", "dict") else [])
    if col == "event":
        return [None, "view", "Click", "", "impression ", "\u0000"]
    if col == "ts":
        return [None] + (BAD_TEXT_TS if rep == "text" else BAD_TS)
    if col == "value":
        hi = 5.01 if event == "rating" else -1e-9
        nums = [math.nan, math.inf, -math.inf, -1.0, hi, 0.49 if event == "rating" else -5.0]
        return nums if rep == "float" else ["abc", "", "nan", "inf", "1e400", "-1", "1,5", "0x10"]
    if col == "position":
        return {"int": [-1, 2**31, -(2**31) - 1, 2**40], "float": [1.5, math.inf, -1.0, 2.0**31],
                "text": ["1.5", "x", "-1", "1e20", "2147483648"]}.get(rep, [])  # fmt: skip
    if col == "propensity":
        return {"float": [0.0, -0.1, 1.0000001, math.inf, 2.0],
                "text": ["0", "high", "inf", "1.5", "nan", ""]}.get(rep, [])  # fmt: skip
    return []


@st.composite
def any_value(draw: st.DrawFn, col: str, rep: str) -> Any:
    """An arbitrary value writable in ``rep`` (event ids outside the good rows' range)."""
    if rep == "null" or rep == "absent":
        return None
    if rep in ("text", "dict"):
        text = st.text(max_size=20) | st.just("x" * 100_000) | st.sampled_from(WHITESPACE)
        value = draw(st.none() | text)
        return "x" + value if col == "event_id" and value else value
    if rep == "int":
        return draw(st.none() | st.integers(-(2**63), -1 if col == "event_id" else 2**63 - 1))
    if rep == "float":
        return draw(st.none() | st.floats(allow_nan=True, allow_infinity=True))
    return draw(st.none() | st.datetimes(timezones=st.just(dt.UTC)))


@st.composite
def partitions(draw: st.DrawFn) -> tuple[list[pa.Table], list[Row]]:
    """One to three raw files of one day's partition and the rows they hold, in order."""
    n_files = draw(st.integers(1, 3))
    files, rows = [], []
    for _ in range(n_files):
        reprs = {c: draw(st.sampled_from(r)) for c, r in REPRS.items()}
        file_rows = []
        for _ in range(draw(st.integers(1, 12))):
            i = len(rows) + len(file_rows)
            values = draw(good_values(i, reprs))
            kind = draw(st.sampled_from(["good", "good", "bad", "any"]))
            row = Row(values, kind)
            if kind == "bad":
                earlier = [r for r in rows + file_rows if r.kind == "good"]
                cols = [c for c in REPRS if bad_choices(c, reprs[c], values["event"])]
                col = draw(st.sampled_from(cols + (["dup"] if earlier else [])))
                if col == "dup":
                    values["event_id"] = draw(st.sampled_from(earlier)).values["event_id"]
                else:
                    values[col] = draw(
                        st.sampled_from(bad_choices(col, reprs[col], values["event"]))
                    )
                row.broken = col
            elif kind == "any":
                for col in draw(st.sets(st.sampled_from(list(REPRS)), min_size=1)):
                    values[col] = draw(any_value(col, reprs[col]))
            file_rows.append(row)
        files.append(write_table(file_rows, reprs, draw))
        rows += file_rows
    extra = draw(st.booleans())
    if extra:  # a column the contract does not have: kept in the quarantine as text
        files[0] = files[0].append_column("note", pa.array(["n"] * files[0].num_rows))
    return files, rows


def encode(value: Any, rep: str, draw: st.DrawFn) -> Any:
    """A logical value as column type ``rep`` holds it (ISO text in one of several spellings)."""
    if value is None:
        return None
    if rep == "int":
        return int(value) if isinstance(value, str) else value
    if rep == "float" and isinstance(value, str):
        return float(value)
    if rep == "text" and isinstance(value, dt.datetime):
        spell = draw(st.sampled_from(["iso", "z", "zone", "naive-space", "date-t"]))
        if spell == "zone":
            return value.astimezone(dt.timezone(dt.timedelta(hours=5, minutes=30))).isoformat()
        if spell == "naive-space":
            return value.astimezone(dt.UTC).replace(tzinfo=None).isoformat(sep=" ")
        if spell == "z":
            return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        return value.astimezone(dt.UTC).isoformat()
    if rep == "text" and isinstance(value, float):
        return repr(value)
    if rep == "text" and isinstance(value, int):
        return str(value)
    if rep == "ts_naive" and isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def write_table(rows: list[Row], reprs: dict[str, str], draw: st.DrawFn) -> pa.Table:
    """The rows as one raw file, each column in its ``reprs`` type."""
    arrays, names = [], []
    for col, rep in reprs.items():
        if rep == "absent":
            continue
        values = [encode(r.values[col], rep, draw) for r in rows]
        if rep == "null":
            values = [None] * len(rows)
        arrays.append(pa.array(values, type=ARROW[rep], from_pandas=False))
        names.append(col)
    return pa.Table.from_arrays(arrays, names=names)


def write_partition(settings: Settings, files: list[pa.Table]) -> Path:
    folder = settings.interactions_dir / f"date={DAY.isoformat()}"
    folder.mkdir(parents=True)
    for k, table in enumerate(files):
        pq.write_table(table, folder / f"part-{k}.parquet")
    return folder


def same(got: Any, want: Any) -> bool:
    """A validated value equals the logical one (null ↔ None/NaN/NaT)."""
    if want is None:
        return got is None or pd.isna(got)
    if isinstance(want, dt.datetime):
        return pd.Timestamp(got) == pd.Timestamp(want)
    return got == want


@PROPS
@given(part=partitions())
def test_gate_validates_contract_rows_only_and_loses_none(home: Path, part) -> None:
    files, rows = part
    settings = fresh(home)
    write_partition(settings, files)
    result = validate_partition(settings, DAY, data_docs=False)  # never raises here

    validated = pq.read_table(result.validated_path)
    assert contract_violations(validated, DAY) == []
    quarantine = pq.read_table(result.quarantine_path).to_pandas()
    assert result.rows_total == len(rows)
    assert validated.num_rows + len(quarantine) == len(rows) == result.rows_good + len(quarantine)
    starts = np.cumsum([0] + [t.num_rows for t in files])
    q_index = [int(starts[int(Path(f).stem.split("-")[1])]) + int(r)
               for f, r in zip(quarantine["file"], quarantine["row"], strict=True)]  # fmt: skip
    assert len(set(q_index)) == len(q_index)  # each quarantined input row once
    kept = validated.to_pandas().set_index("event_id")
    for i, row in enumerate(rows):
        if row.kind == "bad":
            assert i in q_index, f"bad row {i} (broken {row.broken}) was validated: {row.values}"
        elif row.kind == "good":
            assert i not in q_index, f"good row {i} quarantined: {row.values}: " + str(
                quarantine.loc[q_index.index(i), "reason"]
            )
            got = kept.loc[row.values["event_id"]]
            wrong = {c: (got[c], v) for c, v in row.values.items()
                     if c != "event_id" and not same(got[c], v)}  # fmt: skip
            assert not wrong, f"good row {i} changed: {wrong}"


@hsettings(PROPS, max_examples=15)
@given(part=partitions(), column=st.sampled_from(schema.KEY_COLUMNS), which=st.integers(0, 2))
def test_gate_refuses_a_file_missing_a_required_column_and_writes_nothing(
    home: Path, part, column: str, which: int
) -> None:
    files, _ = part
    k = which % len(files)
    files[k] = files[k].drop_columns([column])
    settings = fresh(home)
    write_partition(settings, files)
    with pytest.raises(ValidationError) as info:
        validate_partition(settings, DAY, data_docs=False)
    assert info.value.expectation == REQUIRED_COLUMNS and column in str(info.value)
    assert f"part-{k}.parquet" in info.value.file
    assert not settings.validated_dir.exists() or not any(settings.validated_dir.iterdir())
    assert not settings.quarantine_dir.exists() or not any(settings.quarantine_dir.iterdir())


# --- importers --------------------------------------------------------------------------------

DAYS = (DAY, DAY + dt.timedelta(days=1))
EVENT_MAP = {"view": "click", "buy": "purchase"}
"""The table importer's ``--events`` in these tests; contract events map to themselves."""
TOKEN = st.text(st.characters(codec="utf-8", exclude_characters="\r\x00"), min_size=1, max_size=8)
"""Ids as a CSV cell may hold them (commas, quotes, newlines: the CSV quotes them)."""


@dataclass
class Line:
    """One source line: its cells and whether it is ``good`` (then ``want`` is the row the
    gate must validate: user, item, ts, event, value)."""

    cells: dict[str, str]
    good: bool
    want: tuple | None = None


def ts_text(when: dt.datetime, unit: str | None, draw: st.DrawFn) -> tuple[str, dt.datetime]:
    """``when`` as a source cell: an epoch in ``unit`` or ISO 8601 in one of several spellings;
    and the time the cell says (to the minute for the spelling without seconds)."""
    if unit == "s":
        micros = (when - EPOCH) // US
        return (str(micros // 10**6) if micros % 10**6 == 0 else repr(micros / 10**6)), when
    if unit == "ms":
        return str((when - EPOCH) // dt.timedelta(milliseconds=1)), when
    spell = draw(st.sampled_from(["z", "offset", "space", "t-naive", "minutes"]))
    if spell == "offset":
        return when.astimezone(dt.timezone(dt.timedelta(hours=-3))).isoformat(), when
    naive = when.replace(tzinfo=None)
    if spell == "space":
        return naive.isoformat(sep=" "), when
    if spell == "t-naive":
        return naive.isoformat(), when
    if spell == "minutes":
        return naive.isoformat(sep=" ", timespec="minutes"), when.replace(second=0, microsecond=0)
    return when.isoformat().replace("+00:00", "Z"), when


@st.composite
def table_lines(draw: st.DrawFn, unit: str | None) -> list[Line]:
    """Good and broken lines of a ``uid,sku,when,kind,amount`` event log over :data:`DAYS`."""
    lines = []
    for _ in range(draw(st.integers(1, 16))):
        day = draw(st.sampled_from(DAYS))
        when = (dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
                + draw(st.integers(0, 86_400_000 - 1)) * dt.timedelta(milliseconds=1))  # fmt: skip
        if unit == "s":
            when = when.replace(microsecond=when.microsecond // 1000 * 1000)
        kind = draw(st.sampled_from([*schema.EVENTS, *EVENT_MAP]))
        event = EVENT_MAP.get(kind, kind)
        if event == "rating":
            value = draw(st.sampled_from([0.5, 1.0, 3.5, 5.0]))
        else:
            value = draw(st.sampled_from([None, 0.0, 1.0, 2.0]) | st.floats(0, 1e6))
        user, item = draw(TOKEN.filter(str.strip)), draw(TOKEN.filter(str.strip))
        text, when = ts_text(when, unit, draw)
        cells = {"uid": user, "sku": item, "when": text, "kind": kind,
                 "amount": "" if value is None else repr(value)}  # fmt: skip
        want = (user, item, pd.Timestamp(when), event, 1.0 if value is None else value)
        line = Line(cells, True, want)
        if draw(st.integers(0, 3)) == 0:  # one in four broken
            col, bad = draw(st.sampled_from([
                ("when", "notatime"), ("when", ""), ("when", "2024-13-45"), ("when", "1e30"),
                ("when", "inf"), ("when", "-9e18"), ("kind", "wishlist"), ("kind", ""),
                ("uid", ""), ("sku", ""), ("amount", "abc"), ("amount", "-1"), ("amount", "inf"),
                ("amount", "nan"),
            ]))  # fmt: skip
            cells[col] = bad
            line.good, line.want = False, None
        lines.append(line)
    return lines


def write_csv(path: Path, lines: list[Line]) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["uid", "sku", "when", "kind", "amount"])
        out.writerows([ln.cells[c] for c in ("uid", "sku", "when", "kind", "amount")]
                      for ln in lines)  # fmt: skip
    return path


def imported_days(settings: Settings) -> dict[dt.date, pa.Table]:
    root = settings.interactions_dir
    out = {}
    for day in schema.partition_dates(root):
        files = sorted(schema.partition_dir(root, day).glob("*.parquet"))
        out[day] = pa.concat_tables([pq.read_table(f) for f in files])
    return out


def key(row: Any) -> tuple:
    return (row.user_id, row.item_id, pd.Timestamp(row.ts), row.event, float(row.value))


@hsettings(PROPS, max_examples=TABLE_EXAMPLES)
@given(data=st.data(), unit=st.sampled_from([None, "s", "ms"]))
def test_table_import_keeps_every_good_line_through_the_gate(home: Path, data, unit) -> None:
    lines = data.draw(table_lines(unit))
    settings = fresh(home)
    src = write_csv(home / "events.csv", lines)
    mapping = {"user_id": "uid", "item_id": "sku", "ts": "when", "event": "kind",
               "value": "amount"}  # fmt: skip
    try:
        summary = ingest.import_table(settings, src, mapping, ts_unit=unit, events=EVENT_MAP)
    except ValueError as exc:  # refused as a whole: most lines bad, named, nothing written
        assert "events.csv" in str(exc)
        assert sum(not ln.good for ln in lines) * 2 >= len(lines), f"refused: {exc}"
        assert schema.partition_dates(settings.interactions_dir) == []
        return
    days = imported_days(settings)
    assert summary.rows + summary.dropped == len(lines)
    assert sum(t.num_rows for t in days.values()) == summary.rows
    assert all(t.schema.equals(schema.INTERACTIONS) for t in days.values())
    validated: list[tuple] = []
    for day in days:
        result = validate_partition(settings, day, data_docs=False)
        table = pq.read_table(result.validated_path)
        assert contract_violations(table, day) == []
        validated += [key(r) for r in table.to_pandas().itertuples()]
    want = Counter([ln.want for ln in lines if ln.good])
    got = Counter(validated)
    missing = want - got
    assert not missing, f"good lines lost: {dict(missing)} (dropped: {summary.dropped_by_reason})"
    assert sum(got.values()) == sum(want.values()), f"broken lines validated: {dict(got - want)}"


@st.composite
def movielens_lines(draw: st.DrawFn) -> list[tuple[str, bool, tuple | None]]:
    """``u.data`` lines (tab-separated user, item, rating, epoch seconds): ``(text, good,
    (user, item, rating, ts))``."""
    out = []
    for _ in range(draw(st.integers(1, 20))):
        user, item = draw(st.integers(1, 999)), draw(st.integers(1, 9999))
        rating = draw(st.sampled_from([1, 2, 3, 4, 5, 0.5, 4.5]))
        day = draw(st.sampled_from(DAYS))
        ts = int(dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC).timestamp())
        ts += draw(st.integers(0, 86_399))
        fields = [str(user), str(item), str(rating), str(ts)]
        want = (str(user), str(item), float(rating), pd.Timestamp(ts, unit="s", tz="UTC"))
        if draw(st.integers(0, 3)) == 0:
            col, bad = draw(st.sampled_from([(2, "abc"), (2, ""), (3, "x"), (3, ""), (3, "1e30"),
                                             (3, "inf"), (3, "-9e18"), (0, ""), (1, "")]))  # fmt: skip
            fields[col] = bad
            out.append(("\t".join(fields), False, None))
        else:
            out.append(("\t".join(fields), True, want))
    return out


@hsettings(PROPS, max_examples=MOVIELENS_EXAMPLES)
@given(lines=movielens_lines())
def test_movielens_import_drops_only_unreadable_lines(home: Path, lines) -> None:
    settings = fresh(home)
    folder = home / "ml"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    (folder / "u.data").write_text("".join(text + "\n" for text, _, _ in lines))
    try:
        summary = ingest.import_movielens(settings, folder)
    except ValueError as exc:
        assert "u.data" in str(exc)
        assert sum(not good for _, good, _ in lines) * 2 >= len(lines), f"refused: {exc}"
        return
    days = imported_days(settings)
    assert summary.rows + summary.dropped == len(lines)
    assert all(t.schema.equals(schema.INTERACTIONS) for t in days.values())
    rows = pd.concat([t.to_pandas() for t in days.values()], ignore_index=True)
    assert len(rows) == summary.rows and rows["event_id"].is_unique
    got = Counter([(r.user_id, r.item_id, r.value, pd.Timestamp(r.ts)) for r in rows.itertuples()])
    want = Counter([w for _, good, w in lines if good])
    assert got == want, f"lost {dict(want - got)}, invented {dict(got - want)}"


@pytest.mark.parametrize("column", schema.INTERACTIONS.names)
@hsettings(PROPS, max_examples=1)
@given(part=partitions())
def test_gate_survives_a_nested_column(home: Path, column: str, part) -> None:
    """A column written as a list (a writer's mistake): no crash, the contract, nothing lost."""
    files, rows = part
    table = files[0]
    nested = pa.array([[1, 2]] * table.num_rows, type=pa.list_(pa.int64()))
    if column in table.column_names:
        table = table.drop_columns([column])
    files[0] = table.append_column(column, nested)
    settings = fresh(home)
    write_partition(settings, files)
    result = validate_partition(settings, DAY, data_docs=False)
    validated = pq.read_table(result.validated_path)
    assert contract_violations(validated, DAY) == []
    quarantined = pq.read_metadata(result.quarantine_path).num_rows
    assert validated.num_rows + quarantined == len(rows) == result.rows_total
