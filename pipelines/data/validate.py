"""The validation gate: one day's raw interactions → validated rows, quarantined rows, a report.

``validate_partition(settings, date)`` reads ``data/interactions/date=D/*.parquet`` and

- parses each column into the contract's type (``pipelines.core.schema.INTERACTIONS``); a value that
  cannot be parsed (``ts``, ``value``, ``position``, ``propensity``) makes its row bad, not the run;
- runs the row-level expectations of :data:`ROW_CHECKS` with Great Expectations (an ephemeral data
  context, created once per process, suite defined in code) over the parsed frame, with
  ``result_format=COMPLETE`` so every failing row index comes back;
- writes the good rows to ``data/validated/date=D/part-0.parquet`` (conformed to the contract) and
  the bad ones to ``quarantine/date=D/part-0.parquet`` with their original values (as text where
  they could not be parsed), the ``reason`` (the failed checks, ``"; "``-separated), and the
  source ``file`` and 0-based ``row`` in that file;
- writes ``reports/validation/date=D.json`` and GX Data Docs HTML under ``reports/data_docs/``.

Unknown ids (a ``user_id`` not in ``data/users.parquet``, an ``item_id`` not in
``data/items.parquet``) are allowed and counted, never quarantined. When a reference file is absent
(e.g. MovieLens without ``u.user``) its count is ``None``.

Partition-level faults raise :class:`ValidationError` (a ``ValueError``: the CLI exits 2) before
anything under ``validated/`` or ``quarantine/`` is touched, so the previous good output stays:
missing partition, unreadable parquet file, missing required column, empty partition, share of bad
rows above ``settings.max_bad_row_share``, and volume collapse (fewer rows than
``settings.min_volume_ratio`` × the mean row count of the validated partitions of the 7 days
before D, checked when at least 3 of those days exist). The report is still written, with
``"verdict": "failed"`` and the error.

The volume rule depends on where the day came from. A live log (simulated, served, or any day
without a matching import record) gets the rule above. A day whose raw partition is still the one
``recloop ingest`` wrote (:func:`pipelines.data.ingest.imported_partition`) is imported history:
real daily volumes swing far more than a live service's (MovieLens 100K has days of 1 and of 3550
ratings), and the history is what it is. Its volume is compared with the *median* of the same
trailing days; below ``settings.min_volume_ratio`` × that median the day passes with a warning in
the report, and it fails only below ``settings.imported_min_volume_ratio`` × the median (default
0: never). The report's ``volume`` entry records the ``rule`` (``"live"`` or ``"imported"``), the
raw numbers and the ``warning``; warnings are also listed under ``warnings``.

A rerun of a date with the same inputs writes the same bytes (parquet outputs and JSON report); the
Data Docs page of a date is overwritten too (its GX run id is fixed to the date).

The GX context is ephemeral on purpose: a file data context writes its validation-result store into
the repository at run time. The suite is defined here in code and the Data Docs site is pointed at
``settings.reports_dir / "data_docs"`` before each run.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.core import fmt, layout, schema
from pipelines.core.progress import progress
from pipelines.core.settings import Settings
from pipelines.core.validated import validated_dates, validated_files
from pipelines.data.ingest import imported_partition

log = logging.getLogger(__name__)

SUITE_NAME = "recloop_interactions"
DOCS_SITE = "recloop_reports"
TRAILING_DAYS = 7
MIN_HISTORY_DAYS = 3
MAX_EXAMPLES = 5
ID_COLUMNS = ("event_id", "user_id", "item_id")
TEXT = pd.StringDtype("pyarrow")  # text columns: Arrow-backed (fast null checks, no str objects)

# Partition-level checks that are not GX expectations (they happen before GX can see a frame).
PARTITION_EXISTS = "partition_exists"
PARQUET_READABLE = "parquet_readable"
REQUIRED_COLUMNS = "required_columns_present"
NON_EMPTY = "partition_not_empty"
BAD_ROW_SHARE = "max_bad_row_share"
VOLUME = "expect_table_row_count_to_be_between(volume vs trailing 7 days)"


class ValidationError(ValueError):
    """A partition-level failure. The message names the file, the expectation and examples."""

    def __init__(
        self, message: str, *, file: str, expectation: str, examples: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.file = file
        self.expectation = expectation
        self.examples = examples or []


@dataclass(frozen=True)
class RowCheck:
    """One row-level GX expectation: ``expectation`` is a class name in ``gx.expectations``.

    ``when`` restricts it to rows where ``event == when[1]`` (``when[0] == "=="``) or
    ``event != when[1]`` (``"!="``). ``reason`` is what a failing row's ``reason`` column says.
    """

    expectation: str
    column: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    when: tuple[str, str] | None = None

    @property
    def reason(self) -> str:
        snake = "".join("_" + c.lower() if c.isupper() else c for c in self.expectation)[1:]
        cond = f" where event {self.when[0]} {self.when[1]!r}" if self.when else ""
        return f"{snake}({self.column}{cond})"


_DAY_START = {"$PARAMETER": "day_start"}
_DAY_END = {"$PARAMETER": "day_end"}

#: The row-level expectations, in the order they appear in reports. Duplicates are special: GX
#: flags every row sharing an ``event_id``; the gate keeps the first good one and quarantines the
#: rest.
ROW_CHECKS: tuple[RowCheck, ...] = (
    *(RowCheck("ExpectColumnValuesToNotBeNull", c) for c in schema.KEY_COLUMNS),
    RowCheck("ExpectColumnValuesToBeInSet", "event", {"value_set": list(schema.EVENTS)}),
    RowCheck(
        "ExpectColumnValuesToBeBetween",
        "value",
        {"min_value": schema.RATING_RANGE[0], "max_value": schema.RATING_RANGE[1]},
        when=("==", "rating"),
    ),
    RowCheck("ExpectColumnValuesToBeBetween", "value", {"min_value": 0.0}, when=("!=", "rating")),
    RowCheck(
        "ExpectColumnValuesToBeBetween",
        "propensity",
        {"min_value": 0.0, "max_value": 1.0, "strict_min": True},
    ),
    RowCheck("ExpectColumnValuesToBeBetween", "position", {"min_value": 0}),
    RowCheck(
        "ExpectColumnValuesToBeBetween",
        "ts",
        {"min_value": _DAY_START, "max_value": _DAY_END, "strict_max": True},
    ),
    RowCheck("ExpectColumnValuesToBeUnique", "event_id"),
)
CHECK_ORDER = (*(c.reason for c in ROW_CHECKS), VOLUME)
UNIQUE_REASON = RowCheck("ExpectColumnValuesToBeUnique", "event_id").reason

#: Columns parsed from raw values; a raw value that does not parse is a row-level failure (checked
#: in pandas before GX: e.g. GX's value-length expectation took 40% of the suite's time).
PARSED_TYPES = {
    **{c: "non-blank string" for c in ID_COLUMNS},
    "ts": "timestamp[us, UTC]",
    "value": "finite float64",
    "position": "int32",
    "propensity": "finite float64",
}


def parse_reason(column: str) -> str:
    """The ``reason`` of a row whose ``column`` value could not be parsed."""
    return f"parse({column} as {PARSED_TYPES[column]})"


@dataclass(frozen=True)
class ValidationResult:
    """What one validated day produced. Returned only when the partition passed.

    Row counts are rows; ``quarantined_by_reason`` counts rows per reason (a row failing two
    checks counts under both). ``unknown_users``/``unknown_items`` are distinct ids among the good
    rows that are missing from ``users.parquet``/``items.parquet`` (``None``: file absent), and
    ``unknown_user_rows``/``unknown_item_rows`` the good rows carrying them. ``volume_ratio`` is
    rows_total / mean rows of the validated partitions in the 7 days before (``None``: no history)
    under the ``"live"`` ``volume_rule``, rows_total / their median under the ``"imported"`` one.
    ``warnings`` are the report's warnings (e.g. a volume collapse in imported history).
    """

    date: dt.date
    rows_total: int
    rows_good: int
    rows_quarantined: int
    quarantined_by_reason: dict[str, int]
    unknown_users: int | None
    unknown_items: int | None
    unknown_user_rows: int | None
    unknown_item_rows: int | None
    volume_ratio: float | None
    trailing_mean: float | None
    trailing_days: int
    passed: bool
    validated_path: Path
    quarantine_path: Path
    report_path: Path
    data_docs_path: Path | None
    volume_rule: str = "live"
    warnings: tuple[str, ...] = ()


# --- Great Expectations: one context per process -------------------------------------------------

_GX_LOCK = threading.Lock()


@dataclass(frozen=True)
class _Gx:
    context: Any
    checkpoint: Any
    checkpoint_no_docs: Any


def _condition(when: tuple[str, str] | None) -> Any:
    if when is None:
        return None
    from great_expectations.expectations.row_conditions import Column

    op, value = when
    return Column("event") == value if op == "==" else Column("event") != value


def _fs_backend(base_directory: Path) -> dict[str, Any]:
    return {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(base_directory)}


@functools.lru_cache(maxsize=16)
def _gx(reports_dir: Path) -> _Gx:
    """The GX context, suite and checkpoint of one workspace (cached: built once per process).

    An ephemeral context (nothing is written into the repository) whose suite is defined in code
    from :data:`ROW_CHECKS`. Validation results are kept as JSON under
    ``reports_dir/gx_validation_results`` (so the Data Docs index lists every validated date, not
    only this process's) and Data Docs HTML goes to ``reports_dir/data_docs``. The first call
    imports GX (~3.5 s); later ones for another workspace take a few ms.
    """
    # GX logs its own import and set-up at INFO (hundreds of lines); keep its warnings only,
    # unless someone configured its logger already.
    gx_log = logging.getLogger("great_expectations")
    if gx_log.level == logging.NOTSET:
        gx_log.setLevel(logging.WARNING)
    import great_expectations as gx

    context = gx.get_context(mode="ephemeral", project_config=_gx_config(reports_dir))
    batch = (
        context.data_sources.add_pandas("recloop")
        .add_dataframe_asset("interactions")
        .add_batch_definition_whole_dataframe("partition")
    )
    suite = context.suites.add(_gx_suite())
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="interactions_partition", data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="validate_interactions",
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=[DOCS_SITE])],
            result_format={"result_format": "COMPLETE"},
        )
    )
    no_docs = context.checkpoints.add(
        gx.Checkpoint(
            name="validate_interactions_no_docs",
            validation_definitions=[definition],
            actions=[],
            result_format={"result_format": "COMPLETE"},
        )
    )
    return _Gx(context=context, checkpoint=checkpoint, checkpoint_no_docs=no_docs)


def build_data_docs(settings: Settings) -> Path:
    """Rebuild the Data Docs site (``reports/data_docs/``) from every stored validation result;
    the path of its ``index.html``. For a caller that validated many days with
    ``data_docs=False`` (the site's index rebuild reads every stored result: ~1 s per day after a
    few hundred days)."""
    gxo = _gx(settings.reports_dir)
    with _GX_LOCK:
        gxo.context.build_data_docs(site_names=[DOCS_SITE])
    return layout.data_docs_dir(settings) / "index.html"


def _gx_config(reports_dir: Path) -> Any:
    """An in-memory GX project config, except validation results (JSON under
    ``reports_dir/gx_validation_results``) and the Data Docs site (``reports_dir/data_docs``)."""
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    defaults = InMemoryStoreBackendDefaults(init_temp_docs_sites=False)
    stores = dict(defaults.stores)
    stores[defaults.validation_results_store_name] = {
        "class_name": "ValidationResultsStore",
        "store_backend": _fs_backend(reports_dir / "gx_validation_results"),
    }
    return DataContextConfig(
        store_backend_defaults=defaults,
        stores=stores,
        data_docs_sites={
            DOCS_SITE: {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": _fs_backend(reports_dir / "data_docs"),
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        },
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )


def _gx_suite() -> Any:
    """The suite :data:`SUITE_NAME`: one expectation per :data:`ROW_CHECKS` entry (its ``meta``
    names the check), then the row count check :data:`VOLUME` (parameter ``min_rows``)."""
    import great_expectations as gx

    suite = gx.ExpectationSuite(name=SUITE_NAME)
    for check in ROW_CHECKS:
        cls = getattr(gx.expectations, check.expectation)
        kwargs = dict(check.kwargs, column=check.column, meta={"check": check.reason})
        if check.when is not None:
            kwargs["row_condition"] = _condition(check.when)
        suite.add_expectation(cls(**kwargs))
    suite.add_expectation(
        gx.expectations.ExpectTableRowCountToBeBetween(
            min_value={"$PARAMETER": "min_rows"}, meta={"check": VOLUME}
        )
    )
    return suite


def _run_gx(
    frame: pd.DataFrame, date: dt.date, min_rows: int, reports_dir: Path, data_docs: bool = True
) -> dict[str, Any]:
    """Run the suite over ``frame``; returns ``{check name: ExpectationValidationResult}``.

    Data Docs are updated under ``reports_dir/data_docs`` (unless ``data_docs`` is False: the
    result is stored, :func:`build_data_docs` renders it later); the run id is ``date=D`` at the
    day's start, so a rerun of a date overwrites that date's page instead of adding one.
    """
    gxo = _gx(reports_dir)  # first: it quiets GX's import-time logging
    from great_expectations.core.run_identifier import RunIdentifier

    day_start = dt.datetime.combine(date, dt.time(), tzinfo=dt.UTC)
    with _GX_LOCK:
        checkpoint = gxo.checkpoint if data_docs else gxo.checkpoint_no_docs
        result = checkpoint.run(
            batch_parameters={"dataframe": frame},
            expectation_parameters={
                "day_start": day_start,
                "day_end": day_start + dt.timedelta(days=1),
                "min_rows": int(min_rows),
            },
            run_id=RunIdentifier(run_name=f"date={date.isoformat()}", run_time=day_start),
        )
    (suite_result,) = result.run_results.values()
    by_check = {r.expectation_config.meta["check"]: r for r in suite_result.results}
    for name, r in by_check.items():
        info = r.exception_info or {}
        if info.get("raised_exception"):
            raise RuntimeError(
                f"GX expectation {name} raised while validating date={date}: "
                f"{info.get('exception_message')}"
            )
    return by_check


# --- reading and parsing -------------------------------------------------------------------------


def _rel(settings: Settings, path: Path) -> str:
    try:
        return path.relative_to(settings.home).as_posix()
    except ValueError:
        return str(path)


def read_raw_partition(settings: Settings, date: dt.date) -> tuple[pd.DataFrame, list[Path]]:
    """All files of the raw partition, concatenated, with ``__file`` and ``__row`` columns.

    Raises :class:`ValidationError` for a missing partition, an unreadable file or a file that
    lacks a required column (``schema.KEY_COLUMNS``).
    """
    folder = schema.partition_dir(settings.interactions_dir, date)
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        raise ValidationError(
            f"{folder}: expectation {PARTITION_EXISTS} failed: no parquet files for date={date} "
            "(missing partition)",
            file=str(folder),
            expectation=PARTITION_EXISTS,
        )
    frames = []
    for path in files:
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as exc:
            raise ValidationError(
                f"{path}: expectation {PARQUET_READABLE} failed: cannot read parquet file: {exc}",
                file=str(path),
                expectation=PARQUET_READABLE,
            ) from exc
        missing = [c for c in schema.KEY_COLUMNS if c not in table.column_names]
        if missing:
            raise ValidationError(
                f"{path}: expectation {REQUIRED_COLUMNS} failed: missing required column(s) "
                f"{missing}; columns present: {table.column_names}",
                file=str(path),
                expectation=REQUIRED_COLUMNS,
            )
        try:
            table = _utc_microseconds(table)
            frame = table.to_pandas(types_mapper={pa.string(): TEXT, pa.large_string(): TEXT}.get)
        except (pa.ArrowException, ValueError) as exc:
            raise ValidationError(
                f"{path}: expectation {PARQUET_READABLE} failed: cannot convert to rows: {exc}",
                file=str(path),
                expectation=PARQUET_READABLE,
            ) from exc
        frame["__file"] = _rel(settings, path)
        frame["__row"] = np.arange(len(frame), dtype=np.int64)
        frames.append(frame)
        log.info("read %s: %d rows", path, len(frame))
    raw = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return raw, files


def _utc_microseconds(table: pa.Table) -> pa.Table:
    """Every timestamp column as ``timestamp[us, UTC]`` (naive ones taken as UTC, other zones
    converted, nanoseconds truncated): the files of a partition then concatenate into one
    typed column whatever zone or unit each was written with. (Concatenating zones makes
    pandas convert every value to a Python datetime; for a zone with local-mean-time offsets in
    early years that crashed the process.)"""
    fields = []
    for f in table.schema:
        if pa.types.is_timestamp(f.type):
            f = f.with_type(pa.timestamp("us", tz="UTC"))
        fields.append(f)
    target = pa.schema(fields, metadata=table.schema.metadata)
    if target.equals(table.schema):
        return table
    columns = [
        pc.cast(col, f.type, safe=False) if f.type != col.type else col
        for col, f in zip(table.columns, target, strict=True)
    ]
    return pa.Table.from_arrays(columns, schema=target)


def _is_text_dtype(s: pd.Series) -> bool:
    return s.dtype == object or isinstance(s.dtype, pd.StringDtype)


def as_text(s: pd.Series) -> pd.Series:
    """Raw values → Arrow-backed strings (``<NA>`` where null); integers as decimal text, and
    so are integral floats (``17.0`` → ``"17"``: an integer column with nulls reads as floats),
    value by value: what one row's id becomes never depends on the other rows of its column or
    on the types of the partition's other files (concatenated, they make a mixed column)."""
    if isinstance(s.dtype, pd.StringDtype):
        return s.astype(TEXT)
    if s.dtype == object and pd.api.types.infer_dtype(s, skipna=True) in ("string", "empty"):
        return s.astype(TEXT)
    if pd.api.types.is_float_dtype(s) or s.dtype == object:
        out = s.map(_value_text, na_action="ignore")
    else:
        out = s.map(str, na_action="ignore")
    return out.where(s.notna(), None).astype(TEXT)


def _value_text(v: Any) -> str:
    """One raw value as text; an integral float (within int64) as its integer."""
    if isinstance(v, float | np.floating) and math.isfinite(v) and v == math.floor(v):
        if abs(v) < 2**63:
            return str(int(v))
    return str(v)


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MICROSECOND = dt.timedelta(microseconds=1)


def _ts_micros(v: Any) -> int | None:
    """A raw timestamp (a datetime, or ISO 8601 text; naive = UTC) → microseconds since the
    epoch; None when it is neither. Any year a datetime can hold (1..9999) is fine: no
    nanosecond range on the way."""
    if isinstance(v, str):
        try:
            v = dt.datetime.fromisoformat(v.strip())
        except ValueError:
            return None
    elif isinstance(v, pd.Timestamp):
        v = v.to_pydatetime(warn=False)
    elif isinstance(v, np.datetime64):
        return None if np.isnat(v) else int(v.astype("datetime64[us]").astype(np.int64))
    if not isinstance(v, dt.datetime):
        return None
    if v.tzinfo is None:
        v = v.replace(tzinfo=dt.UTC)
    return (v - EPOCH) // MICROSECOND


def parse_ts(s: pd.Series) -> pd.Series:
    """→ ``datetime64[us, UTC]``; naive values are taken as UTC; strings must be ISO 8601.
    Typed columns are converted as a whole; text and mixed columns (files of different types
    concatenated) value by value, each distinct value once."""
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        return s.dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    if pd.api.types.is_datetime64_dtype(s):
        return s.dt.tz_localize("UTC").astype("datetime64[us, UTC]")
    if not _is_text_dtype(s):  # numbers, dates without time, …: not a timestamp
        return pd.Series(pd.NaT, index=s.index, dtype="datetime64[us, UTC]")
    cache: dict[Any, int | None] = {}

    def micros(v: Any) -> int | None:  # ints: exact in any year
        if v is pd.NaT or not isinstance(v, str | dt.datetime | np.datetime64):
            return None  # null, a number, a list or struct (unhashable): not a timestamp
        if v not in cache:
            cache[v] = _ts_micros(v)
        return cache[v]

    values = np.array([np.datetime64("NaT") if (m := micros(v)) is None else np.datetime64(m, "us")
                       for v in s], dtype="datetime64[us]")  # fmt: skip
    return pd.Series(values, index=s.index).dt.tz_localize("UTC")


def parse_float(s: pd.Series) -> pd.Series:
    """→ ``float64``, NaN where null or not a finite number. Text is read exactly (the nearest
    double, as Python's ``float``: ``"0.27821600496343424"`` stays that number; pandas' own
    text parser is off by an ulp for some), and only text pandas reads as a number counts."""
    if pd.api.types.is_bool_dtype(s):
        out = pd.Series(np.nan, index=s.index)
    elif pd.api.types.is_numeric_dtype(s):
        out = s.astype("float64")
    else:
        raw = s.astype(object)
        readable = pd.to_numeric(raw, errors="coerce").notna()
        exact = {v: _exact_float(v) for v in pd.unique(raw[readable])}
        out = raw.where(readable).map(exact, na_action="ignore").astype("float64")
    return out.where(np.isfinite(out))


def _exact_float(v: Any) -> float:
    """``float(v)`` (correctly rounded), NaN for what is not a number (booleans included)."""
    if isinstance(v, bool | np.bool_):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError, OverflowError):
        return math.nan


def parse_int32(s: pd.Series) -> pd.Series:
    """→ ``float64`` holding int32 values; NaN where null, not integral or outside int32.

    (Kept as float64 rather than ``Int32`` because GX compares float64 columns vectorized but
    nullable integer ones value by value; the outputs are cast to int32 when written.)
    """
    f = parse_float(s)
    ok = f.notna() & (f == np.floor(f)) & (f >= -(2**31)) & (f < 2**31)
    return f.where(ok)


_PARSERS = {
    "ts": parse_ts,
    "value": parse_float,
    "position": parse_int32,
    "propensity": parse_float,
}


def parse_frame(raw: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Raw rows → a frame with exactly the ``INTERACTIONS`` columns in their pandas types.

    Returns ``(frame, unparsed)``: ``unparsed[col]`` is a boolean mask of rows whose non-null
    raw value in ``col`` could not be parsed (those values are null in ``frame``).
    """
    out: dict[str, pd.Series] = {}
    unparsed: dict[str, np.ndarray] = {}
    for f in schema.INTERACTIONS:
        if f.name not in raw.columns:
            col = pd.Series(None, index=raw.index, dtype="float64" if f.name in _PARSERS else TEXT)
            out[f.name] = col.astype("datetime64[us, UTC]") if f.name == "ts" else col
            continue
        s = raw[f.name]
        if f.name in _PARSERS:
            parsed = _PARSERS[f.name](s)
        else:
            parsed = as_text(s)
            if f.name in ID_COLUMNS:  # a blank id is no id
                parsed = parsed.mask(parsed.str.strip().str.len() == 0)
        bad = (s.notna() & parsed.isna()).to_numpy(dtype=bool)
        if bad.any():
            unparsed[f.name] = bad
        out[f.name] = parsed
    return pd.DataFrame(out, index=raw.index), unparsed


# --- volume --------------------------------------------------------------------------------------


def trailing_volume(settings: Settings, date: dt.date) -> list[tuple[dt.date, int]]:
    """``(day, rows)`` of the validated partitions of the ``TRAILING_DAYS`` days before ``date``.

    A validated file whose footer cannot be read (damaged after its validation) is quarantined
    (:func:`quarantine_validated_file`) and its day left out of the history (its volume is
    unknown): one bad file does not fail the next validations."""
    out = []
    first, last = date - dt.timedelta(days=TRAILING_DAYS), date - dt.timedelta(days=1)
    for day in validated_dates(settings, first, last):
        rows, whole = 0, True
        for f in validated_files(settings, day, day):
            try:
                rows += pq.ParquetFile(f).metadata.num_rows
            except (pa.ArrowException, OSError) as exc:
                quarantine_validated_file(settings, f, f"unreadable parquet footer: {exc}")
                whole = False
        if whole:
            out.append((day, rows))
    return out


def quarantine_validated_file(settings: Settings, path: Path, reason: str) -> Path:
    """Move a damaged validated file to ``quarantine/files/data/validated/date=D/`` with its
    reason (:func:`pipelines.core.schema.quarantine_file`; the emptied ``date=D`` folder is
    removed); rerun ``recloop validate`` for that date to rebuild it from the raw log."""
    moved = schema.quarantine_file(path, settings.home, settings.quarantine_dir, reason)
    if not any(path.parent.iterdir()):
        path.parent.rmdir()  # no validated log left for that day: as if never validated
    log.warning("validated file %s quarantined; rebuild it with `recloop validate --date %s`",
                path, path.parent.name.removeprefix("date="))  # fmt: skip
    return moved


# --- the gate ------------------------------------------------------------------------------------


def _row_example(raw: pd.DataFrame, idx: int, reasons: list[str]) -> str:
    """``file row N [reasons]: col=value, ...`` for one raw row (original values)."""
    row = raw.loc[idx]
    values = ", ".join(
        f"{c}={fmt.literal(row[c])}" for c in schema.INTERACTIONS.names if c in raw.columns
    )
    return f"{row['__file']} row {row['__row']} [{'; '.join(reasons)}]: {values}"


def _example_rows(reasons: dict[int, list[str]]) -> list[int]:
    """Up to ``MAX_EXAMPLES`` bad rows: the first of each reason, then the next ones in order."""
    picked: dict[str, int] = {}
    for i in sorted(reasons):
        for r in reasons[i]:
            picked.setdefault(r, i)
    rows = sorted(set(picked.values()))[:MAX_EXAMPLES]
    for i in sorted(reasons):
        if len(rows) >= MAX_EXAMPLES:
            break
        if i not in rows:
            rows.append(i)
    return sorted(rows)


def _known_ids(path: Path, column: str) -> np.ndarray | None:
    if not path.exists():
        return None
    try:
        ids = pq.read_table(path, columns=[column]).column(0).to_pandas()
    except (pa.ArrowException, OSError, KeyError) as exc:
        raise ValidationError(
            f"{path}: expectation {PARQUET_READABLE} failed: cannot read column {column!r}: {exc}",
            file=str(path),
            expectation=PARQUET_READABLE,
        ) from exc
    return as_text(ids).dropna().unique()


def _unknown(good: pd.DataFrame, column: str, known: np.ndarray | None) -> tuple[int, int] | None:
    if known is None:
        return None
    mask = ~good[column].isin(known)
    return int(good.loc[mask, column].nunique()), int(mask.sum())


def _quarantine_table(
    raw: pd.DataFrame,
    parsed: pd.DataFrame,
    unparsed: dict[str, np.ndarray],
    bad: np.ndarray,
    reasons: list[str],
) -> pa.Table:
    """Bad rows with every original column (text where a value did not parse) + reason/file/row."""
    fields, arrays = [], []
    for f in schema.INTERACTIONS:
        if f.name in unparsed and unparsed[f.name][bad].any():
            fields.append(pa.field(f.name, pa.string()))
            arrays.append(pa.array(as_text(raw[f.name].iloc[bad]), type=pa.string()))
        else:
            fields.append(pa.field(f.name, f.type))
            col = parsed[f.name].iloc[bad]
            arrays.append(pa.array(col, type=f.type, from_pandas=True))
    extras = [
        c for c in raw.columns if c not in schema.INTERACTIONS.names and not c.startswith("__")
    ]
    for c in extras:
        fields.append(pa.field(c, pa.string()))
        arrays.append(pa.array(as_text(raw[c].iloc[bad]), type=pa.string()))
    fields += [
        pa.field("reason", pa.string()),
        pa.field("file", pa.string()),
        pa.field("row", pa.int64()),
    ]
    arrays += [
        pa.array(reasons, type=pa.string()),
        pa.array(raw["__file"].iloc[bad].astype(str), type=pa.string()),
        pa.array(raw["__row"].iloc[bad], type=pa.int64()),
    ]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def report_path(settings: Settings, date: str | dt.date) -> Path:
    """``reports/validation/date=D.json``."""
    return layout.validation_report_path(settings, date)


def read_validation_report(settings: Settings, date: str | dt.date) -> dict[str, Any] | None:
    """The validation report of ``date`` (its ``verdict``: ``passed`` or ``failed``); None when
    the day was never validated. The one reader of the file (the gate's ``validation`` gate reads
    the verdict here). Raises ``ValueError`` naming the file when it is unreadable or not a JSON
    object."""
    return schema.read_json_file(report_path(settings, date), "validation report")


def write_validation_report(settings: Settings, report: dict[str, Any]) -> Path:
    """Write ``report`` (its ``date`` names the day) atomically; the path written."""
    return schema.write_json_atomic(report, report_path(settings, report["date"]))


def validate_partition(
    settings: Settings, date: str | dt.date, *, data_docs: bool = True
) -> ValidationResult:
    """Validate the raw partition of ``date``; write validated rows, quarantine and report.

    ``data_docs=False`` skips the Data Docs update (most of the time of a day once many days
    are validated); call :func:`build_data_docs` once after a batch of days.

    Raises :class:`ValidationError` on a partition-level failure (nothing under ``validated/`` or
    ``quarantine/`` is changed then; the report says ``"verdict": "failed"``).
    """
    day = schema.parse_date(date)
    report: dict[str, Any] = {
        "date": day.isoformat(),
        "thresholds": {
            "max_bad_row_share": settings.max_bad_row_share,
            "min_volume_ratio": settings.min_volume_ratio,
            "imported_min_volume_ratio": settings.imported_min_volume_ratio,
            "trailing_days": TRAILING_DAYS,
            "min_history_days": MIN_HISTORY_DAYS,
        },
    }
    try:
        with progress(total=len(STAGES), desc=f"validate {day}", unit="stage") as bar:
            return _validate(settings, day, report, data_docs, bar)
    except ValidationError as exc:
        report.update(verdict="failed", error=str(exc), failed_expectation=exc.expectation)
        report.update(failed_file=exc.file, examples=exc.examples)
        report["outputs"] = "unchanged: validated/ and quarantine/ of this date were not touched"
        write_validation_report(settings, report)
        log.error("validation of date=%s failed: %s", day, exc.expectation)
        raise


STAGES = ("read", "parse", "expectations", "write")
"""The stages of one day's validation, as its progress bar counts them."""


def _validate(
    settings: Settings, day: dt.date, report: dict[str, Any], data_docs: bool, bar: Any
) -> ValidationResult:
    """The gate of :func:`validate_partition`. Fills ``report`` as it goes: when a
    :class:`ValidationError` escapes, the caller writes what it holds so far. ``bar``: a
    :func:`~pipelines.core.progress.progress` bar over :data:`STAGES`."""
    t0 = time.perf_counter()
    raw, files = read_raw_partition(settings, day)
    bar.update(1)
    report["files"] = [_rel(settings, f) for f in files]
    _check_not_empty(settings, day, raw, files)
    n = len(raw)
    parsed, unparsed = parse_frame(raw)
    bar.update(1)
    volume = _trailing(settings, day, imported_partition(settings, day))
    checked_columns = sorted({c.column for c in ROW_CHECKS} | {"event"})
    by_check = _run_gx(
        parsed[checked_columns], day, volume.min_rows, settings.reports_dir, data_docs
    )
    report["data_docs"] = str(layout.data_docs_dir(settings) / "index.html")
    bar.update(1)

    reasons = _row_reasons(parsed, unparsed, by_check)
    bad = np.zeros(n, dtype=bool)
    bad[np.array(sorted(reasons), dtype=np.int64)] = True
    by_reason = Counter(r for rs in reasons.values() for r in rs)
    report.update(_checks_report(n, bad, by_reason, by_check, unparsed, volume, settings))
    report["warnings"] = [w for w in [report["volume"]["warning"]] if w]
    failures = _partition_failures(settings, n, bad, by_reason, by_check, volume)
    if failures:
        raise _failure_error(failures, raw, files, reasons)

    good = parsed.loc[~bad].reset_index(drop=True)
    report["unknown_ids"] = _unknown_ids(settings, good)
    validated = schema.write_partition_atomic(schema.conform(good), settings.validated_dir, day)
    q_reasons = ["; ".join(reasons[i]) for i in sorted(reasons)]
    quarantine = schema.write_partition_atomic(
        _quarantine_table(raw, parsed, unparsed, bad, q_reasons), settings.quarantine_dir, day
    )
    report["outputs"] = {
        "validated": str(validated / "part-0.parquet"),
        "quarantine": str(quarantine / "part-0.parquet"),
    }
    report["verdict"] = "passed"
    write_validation_report(settings, report)
    bar.update(1)
    log.info(
        "validated date=%s: %d rows, %d good, %d quarantined %s; unknown users %s, items %s "
        "in %.2fs",
        day,
        n,
        n - bad.sum(),
        bad.sum(),
        dict(by_reason),
        report["unknown_ids"]["users"],
        report["unknown_ids"]["items"],
        time.perf_counter() - t0,
    )
    return _passed_result(settings, day, report)


def _check_not_empty(
    settings: Settings, day: dt.date, raw: pd.DataFrame, files: list[Path]
) -> None:
    """:class:`ValidationError` (:data:`NON_EMPTY`) when the partition's files hold no row."""
    if len(raw) == 0:
        folder = schema.partition_dir(settings.interactions_dir, day)
        raise ValidationError(
            f"{folder}: expectation {NON_EMPTY} failed: the partition has 0 rows "
            f"(files: {[f.name for f in files]})",
            file=str(folder),
            expectation=NON_EMPTY,
        )


@dataclass(frozen=True)
class _Volume:
    """The volume check of one day: ``history`` is :func:`trailing_volume`'s ``(day, rows)``,
    ``trailing_mean``/``trailing_median`` their mean/median rows (``None``: no history),
    ``checked`` whether there are at least ``MIN_HISTORY_DAYS`` of them, and ``min_rows`` the row
    count GX requires (1 unchecked). ``rule`` is ``"live"`` (``reference`` = the mean) or
    ``"imported"`` (``reference`` = the median; ``warn_rows``: fewer rows pass with a warning;
    ``imported``: the day's import record)."""

    history: list[tuple[dt.date, int]]
    trailing_mean: float | None
    checked: bool
    min_rows: int
    rule: str = "live"
    trailing_median: float | None = None
    warn_rows: int | None = None
    imported: dict[str, Any] | None = None

    @property
    def reference(self) -> float | None:
        """The trailing statistic the rule compares the day with (rows)."""
        return self.trailing_median if self.rule == "imported" else self.trailing_mean


def _trailing(settings: Settings, day: dt.date, imported: dict[str, Any] | None) -> _Volume:
    """The volume check of ``day`` against the validated days before it; ``imported`` is the
    day's import record (:func:`pipelines.data.ingest.imported_partition`), None for a live log."""
    history = trailing_volume(settings, day)
    rows = [r for _, r in history]
    trailing_mean = float(np.mean(rows)) if history else None
    checked = len(history) >= MIN_HISTORY_DAYS
    if imported is None:
        min_rows = max(1, math.ceil(settings.min_volume_ratio * trailing_mean)) if checked else 1
        return _Volume(history, trailing_mean, checked, min_rows)
    median = float(np.median(rows)) if history else None
    ratio = settings.imported_min_volume_ratio
    min_rows = max(1, math.ceil(ratio * median)) if checked else 1
    warn_rows = math.ceil(settings.min_volume_ratio * median) if checked else None
    return _Volume(
        history, trailing_mean, checked, min_rows, "imported", median, warn_rows, imported
    )


def _volume_warning(settings: Settings, n: int, volume: _Volume) -> str | None:
    """The warning of an imported day whose ``n`` rows are below ``volume.warn_rows``."""
    if volume.rule != "imported" or volume.warn_rows is None or n >= volume.warn_rows:
        return None
    source = volume.imported or {}
    return (
        f"volume collapse in imported history: {n} rows < {settings.min_volume_ratio} x "
        f"{volume.trailing_median:.1f} (median of the validated days "
        f"{[d.isoformat() for d, _ in volume.history]}); kept because this day was imported "
        f"({source.get('source')} from {source.get('file')}); a live log would be checked "
        "against RECLOOP_MIN_VOLUME_RATIO x the trailing mean and fail"
    )


def _row_reasons(
    parsed: pd.DataFrame, unparsed: dict[str, np.ndarray], by_check: dict[str, Any]
) -> dict[int, list[str]]:
    """``{row index: failed checks}`` of the bad rows, each list in report order.

    Parse failures first, then GX failures (a null that came from an unparsed value is reported as
    the parse failure only). Duplicates: among rows that are otherwise good, the first of each
    ``event_id`` is kept and the others fail :data:`UNIQUE_REASON`.
    """
    reasons: dict[int, list[str]] = {}
    for col, mask in unparsed.items():
        for i in np.flatnonzero(mask):
            reasons.setdefault(int(i), []).append(parse_reason(col))
    for check in ROW_CHECKS:
        reason = check.reason
        if reason == UNIQUE_REASON:
            continue
        mask = unparsed.get(check.column)
        for i in by_check[reason].result.get("unexpected_index_list") or []:
            if mask is not None and mask[i]:
                continue
            reasons.setdefault(int(i), []).append(reason)
    dup_rows = sorted(
        int(i) for i in by_check[UNIQUE_REASON].result.get("unexpected_index_list") or []
    )
    seen: set[str] = set()
    for i in dup_rows:
        if i in reasons:
            continue
        key = parsed.at[i, "event_id"]
        if key in seen:
            reasons[i] = [UNIQUE_REASON]
        else:
            seen.add(key)
    return reasons


def _checks_report(
    n: int,
    bad: np.ndarray,
    by_reason: Counter[str],
    by_check: dict[str, Any],
    unparsed: dict[str, np.ndarray],
    volume: _Volume,
    settings: Settings,
) -> dict[str, Any]:
    """The report's ``rows``, ``quarantined_by_reason``, ``expectations``, ``parse_failures`` and
    ``volume`` entries for a partition of ``n`` rows (``bad``: ``(n,)`` mask of quarantined rows)."""
    return {
        "rows": {"total": n, "good": int(n - bad.sum()), "quarantined": int(bad.sum())},
        "quarantined_by_reason": dict(sorted(by_reason.items())),
        "expectations": [
            {
                "check": name,
                "expectation": r.expectation_config.type,
                "success": bool(r.success),
                "unexpected_count": r.result.get("unexpected_count"),
                "observed_value": r.result.get("observed_value"),
            }
            for name, r in ((c, by_check[c]) for c in CHECK_ORDER)
        ],
        "parse_failures": {c: int(m.sum()) for c, m in sorted(unparsed.items())},
        "volume": _volume_report(settings, n, volume),
    }


def _volume_report(settings: Settings, n: int, volume: _Volume) -> dict[str, Any]:
    """The report's ``volume`` entry: the ``rule`` applied, its raw numbers and the warning.

    ``ratio`` is ``n`` / the rule's trailing statistic (mean for ``live``, median for
    ``imported``); ``min_rows`` fails the day, ``warn_rows`` (imported only) warns."""
    entry: dict[str, Any] = {
        "rule": volume.rule,
        "statistic": "median" if volume.rule == "imported" else "mean",
        "rows": n,
        "trailing_days": [d.isoformat() for d, _ in volume.history],
        "trailing_mean": volume.trailing_mean,
        "ratio": n / volume.reference if volume.reference else None,
        "checked": volume.checked,
        "min_rows": volume.min_rows,
        "warning": _volume_warning(settings, n, volume),
    }
    if volume.rule == "imported":
        source = volume.imported or {}
        entry["trailing_median"] = volume.trailing_median
        entry["warn_rows"] = volume.warn_rows
        entry["import"] = {"source": source.get("source"), "file": source.get("file")}
    return entry


def _partition_failures(
    settings: Settings,
    n: int,
    bad: np.ndarray,
    by_reason: Counter[str],
    by_check: dict[str, Any],
    volume: _Volume,
) -> list[tuple[str, str]]:
    """``(expectation, what failed)`` of the partition-level checks that failed: the share of bad
    rows (:data:`BAD_ROW_SHARE`) and the volume (:data:`VOLUME`). Empty when the day passes."""
    failures = []
    share = bad.sum() / n
    if share > settings.max_bad_row_share:
        top = ", ".join(f"{k} ({v} rows)" for k, v in by_reason.most_common())
        failures.append(
            (
                BAD_ROW_SHARE,
                f"{share:.1%} of {n} rows are bad, above the limit "
                f"{settings.max_bad_row_share:.1%}; failed expectations: {top}",
            )
        )
    if not by_check[VOLUME].success:
        failures.append((VOLUME, _volume_failure(settings, n, volume)))
    return failures


def _volume_failure(settings: Settings, n: int, volume: _Volume) -> str:
    """What a failed volume check says, with the setting that sets its threshold."""
    days = [d.isoformat() for d, _ in volume.history]
    if volume.rule == "imported":
        return (
            f"volume collapse in imported history: {n} rows < "
            f"{settings.imported_min_volume_ratio} x {volume.trailing_median:.1f} (median of the "
            f"validated days {days}); the threshold is RECLOOP_IMPORTED_MIN_VOLUME_RATIO"
        )
    return (
        f"volume collapse: {n} rows < {settings.min_volume_ratio} x "
        f"{volume.trailing_mean:.1f} (mean of the validated days {days}); the threshold is "
        f"RECLOOP_MIN_VOLUME_RATIO={settings.min_volume_ratio} (lower it if such swings are "
        "normal here; history imported with `recloop ingest` is checked against the trailing "
        "median and only warns)"
    )


def _failure_error(
    failures: list[tuple[str, str]],
    raw: pd.DataFrame,
    files: list[Path],
    reasons: dict[int, list[str]],
) -> ValidationError:
    """The :class:`ValidationError` of failed partition checks, with examples of bad rows."""
    examples = [_row_example(raw, i, reasons[i]) for i in _example_rows(reasons)]
    files_txt = ", ".join(str(f) for f in files)
    msg = "; ".join(f"expectation {name} failed: {text}" for name, text in failures)
    if examples:
        msg += "; examples of offending rows: " + " | ".join(examples)
    return ValidationError(
        f"{files_txt}: {msg}",
        file=files_txt,
        expectation=", ".join(name for name, _ in failures),
        examples=examples,
    )


def _unknown_ids(settings: Settings, good: pd.DataFrame) -> dict[str, int | None]:
    """The report's ``unknown_ids``: distinct unknown ``users``/``items`` among the good rows and
    the rows carrying them (``user_rows``/``item_rows``); ``None`` where the reference file is
    absent."""
    users = _unknown(
        good, "user_id", _known_ids(layout.attributes_path(settings, "users"), "user_id")
    )
    items = _unknown(
        good, "item_id", _known_ids(layout.attributes_path(settings, "items"), "item_id")
    )
    return {
        "users": users[0] if users else None,
        "user_rows": users[1] if users else None,
        "items": items[0] if items else None,
        "item_rows": items[1] if items else None,
    }


def _passed_result(settings: Settings, day: dt.date, report: dict[str, Any]) -> ValidationResult:
    """The :class:`ValidationResult` of a passed day, from the report just written."""
    rows, ids, volume = report["rows"], report["unknown_ids"], report["volume"]
    return ValidationResult(
        date=day,
        rows_total=rows["total"],
        rows_good=rows["good"],
        rows_quarantined=rows["quarantined"],
        quarantined_by_reason=dict(report["quarantined_by_reason"]),
        unknown_users=ids["users"],
        unknown_items=ids["items"],
        unknown_user_rows=ids["user_rows"],
        unknown_item_rows=ids["item_rows"],
        volume_ratio=volume["ratio"],
        trailing_mean=volume["trailing_mean"],
        trailing_days=len(volume["trailing_days"]),
        passed=True,
        validated_path=Path(report["outputs"]["validated"]),
        quarantine_path=Path(report["outputs"]["quarantine"]),
        report_path=report_path(settings, day),
        data_docs_path=layout.data_docs_dir(settings) / "index.html",
        volume_rule=volume["rule"],
        warnings=tuple(report["warnings"]),
    )


def format_summary(result: ValidationResult) -> str:
    """A few human-readable lines about one validated day."""

    def unknown(n: int | None, rows: int | None, what: str) -> str:
        return f"not checked (no {what}.parquet)" if n is None else f"{n} ({rows} rows)"

    lines = [
        f"date={result.date}: {result.rows_total} rows, {result.rows_good} good, "
        f"{result.rows_quarantined} quarantined",
    ]
    for reason, count in result.quarantined_by_reason.items():
        lines.append(f"  quarantined {count:>8}  {reason}")
    lines.append(
        f"  unknown users: {unknown(result.unknown_users, result.unknown_user_rows, 'users')}; "
        f"unknown items: {unknown(result.unknown_items, result.unknown_item_rows, 'items')}"
    )
    if result.volume_ratio is None:
        lines.append("  volume: no validated days in the trailing 7 days")
    elif result.volume_rule == "imported":
        lines.append(
            f"  volume (imported history): {result.volume_ratio:.2f} x the median of "
            f"{result.trailing_days} trailing day(s)"
        )
    else:
        lines.append(
            f"  volume: {result.volume_ratio:.2f} x the mean of {result.trailing_days} "
            f"trailing day(s) ({result.trailing_mean:.1f} rows)"
        )
    lines.extend(f"  warning: {w}" for w in result.warnings)
    lines.append(f"  validated:  {result.validated_path}")
    lines.append(f"  quarantine: {result.quarantine_path}")
    lines.append(f"  report:     {result.report_path}")
    lines.append(f"  data docs:  {result.data_docs_path}")
    return "\n".join(lines)
