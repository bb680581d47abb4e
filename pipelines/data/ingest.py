"""Importers: replay real logs as daily partitions under the log contract (``pipelines/core/schema.py``).

- MovieLens: ``u.data`` (tab-separated ``user item rating timestamp``, ML-100K) or ``ratings.csv``
  (``userId,movieId,rating,timestamp``, ML-latest / ML-20M...), with ``u.item``/``u.user`` or
  ``movies.csv`` read when they sit beside it. Events are ``rating`` with ``value`` = the rating and
  no propensity.
- Generic: any CSV or parquet with a column mapping onto the contract's columns, numeric epoch
  timestamps in seconds or milliseconds (``ts_unit``), and an event mapping from the source's event
  values onto the contract's events (``impression|click|purchase|rating``), e.g. for a
  RetailRocket-style ``timestamp,visitorid,event,itemid,transactionid`` log:
  ``{"view": "click", "addtocart": "click", "transaction": "purchase"}``.

  A *view* is a click, not an impression: in the contract an ``impression`` is an item a policy
  showed (with its position and propensity), a candidate the user may ignore; a view is the user
  opening the item, a positive choice. Mapping views to impressions would make every viewed item
  look like an unclicked exposure to the ranker and to off-policy evaluation.

  Rows whose event value is neither a contract event nor mapped onto one, whose timestamp does
  not parse (ISO 8601 spellings may differ from row to row; epochs outside 1677..2262 do not
  parse), whose user or item id is missing, or whose mapped value is not a finite number (an
  empty cell is 1), are dropped and reported (count per reason, example lines, the file) in the
  log, in :class:`ImportSummary` and in the import records; when more than half the rows would
  be dropped the import fails instead (a wrong mapping, not a few bad rows). Only an empty CSV
  cell is missing: ``NA``, ``None`` or ``null`` is an id like any other.

**What an import writes.** Each touched day gets one file per source,
``date=D/import-<hash of the source file's name>.parquet`` (:func:`import_file_name`), published
atomically with the day's other files (:func:`pipelines.core.schema.publish_dir`: crash-safe);
the files another source wrote for that day (the simulator's or ``ingest-served``'s
``part-0.parquet``, another import's file) are kept as they are, and the import leaves out the
rows whose ``event_id`` they already hold. Days the import does not touch are left alone.
Re-importing the same file rewrites the same bytes (idempotent).

**Import records.** Every imported day gets ``data/imports/date=D.json``
(:func:`pipelines.core.layout.import_record_path`; :func:`write_import_record` and
:func:`read_import_record` are its one writer and reader): the source kind (``movielens``,
``table``), the file, the import's date range and counts, the day's rows and a digest of the
partition as written. Validation applies its imported-history volume rule to a day only while its
raw partition still has that digest (:func:`imported_partition`): a day later rewritten by the
simulator or the service is a live log again. Simulated and served days never get a record.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core import layout, schema
from pipelines.core.progress import progress
from pipelines.core.settings import Settings
from pipelines.data.titles import write_item_text

log = logging.getLogger(__name__)

ML_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]  # fmt: skip


SOURCE_KINDS = ("movielens", "table")
MAX_EXAMPLES = 5
MAX_DROPPED_SHARE = 0.5  # more dropped rows than this fails an import (a wrong format or mapping)


@dataclass
class ImportSummary:
    """What an import wrote: ``rows`` events in ``days`` daily partitions; ``day_rows`` maps each
    written day to its rows. ``dropped`` rows were left out, ``dropped_by_reason`` counts them per
    reason and ``dropped_examples`` gives up to 5 source line (CSV, header = line 1) or row
    (parquet, 0-based) numbers per reason."""

    source: str
    rows: int
    days: int
    first_date: dt.date | None
    last_date: dt.date | None
    users: int
    items: int
    dropped: int
    day_rows: dict[dt.date, int] = field(default_factory=dict)
    dropped_by_reason: dict[str, int] = field(default_factory=dict)
    dropped_examples: dict[str, list[int]] = field(default_factory=dict)

    def __str__(self) -> str:
        text = (
            f"imported {self.rows} events from {self.source}: {self.days} daily partitions "
            f"{self.first_date}..{self.last_date}, {self.users} users, {self.items} items"
        )
        if self.dropped_by_reason:
            text += f"; {self.dropped} rows dropped: " + "; ".join(
                f"{n} {reason} (e.g. {self.dropped_examples.get(reason, [])})"
                for reason, n in self.dropped_by_reason.items()
            )
        elif self.dropped:
            text += f", {self.dropped} unreadable rows dropped"
        return text


def _event_ids(prefix: str, df: pd.DataFrame) -> pd.Series:
    """Deterministic event ids from (user, item, ts, row-within-duplicates)."""
    dup = df.groupby(["user_id", "item_id", "ts"]).cumcount().astype(str)
    key = (
        prefix
        + "|"
        + df["user_id"]
        + "|"
        + df["item_id"]
        + "|"
        + df["ts"].astype("int64").astype(str)
        + "|"
        + dup
    )
    return key.map(lambda k: hashlib.blake2b(k.encode(), digest_size=10).hexdigest())


def import_file_name(source: str) -> str:
    """``import-<12 hex>.parquet``: the file an import of ``source`` (a path) writes in each day
    it touches, named after the source file's name (the same file imported again, from any
    folder, replaces its own file)."""
    key = hashlib.blake2b(Path(source).name.encode(), digest_size=6).hexdigest()
    return f"import-{key}.parquet"


def _other_event_ids(files: list[Path]) -> set[str]:
    """The ``event_id`` values of ``files`` (the day's files of other sources); ``ValueError``
    naming a file that cannot be read (the import stops rather than duplicate or drop rows)."""
    ids: set[str] = set()
    for f in files:
        try:
            column = pq.read_table(f, columns=["event_id"]).column(0)
        except (pa.ArrowException, OSError, KeyError) as exc:
            raise ValueError(f"{f}: cannot read the event ids of this day's file: {exc}") from exc
        ids.update(str(v) for v in column.to_pylist())
    return ids


def _publish_day(root: Path, day: dt.date, table: pa.Table, name: str) -> int:
    """Publish day ``day`` with ``table`` as file ``name`` beside the day's other files (kept,
    hard-linked into the new folder); rows whose ``event_id`` another file holds are left out.
    Returns the rows written."""
    folder = schema.partition_dir(root, day)
    others = sorted(f for f in folder.glob("*.parquet") if f.name != name)
    if others:
        seen = _other_event_ids(others)
        ids = table.column("event_id").to_pylist()
        table = table.filter(pa.array([i not in seen for i in ids], type=pa.bool_()))
        if len(ids) > table.num_rows:
            log.info("date=%s: %d imported rows already in the day's other files: left out",
                     day, len(ids) - table.num_rows)  # fmt: skip

    def build(tmp: Path) -> None:
        for f in others:
            try:
                os.link(f, tmp / f.name)
            except OSError:
                shutil.copy2(f, tmp / f.name)
        if table.num_rows:
            pq.write_table(table, tmp / name)

    schema.publish_dir(build, folder)
    return table.num_rows


def write_daily_partitions(settings: Settings, events: pd.DataFrame, source: str) -> ImportSummary:
    """Split contract-shaped ``events`` by UTC day and publish each day with this source's file
    (:func:`import_file_name`) beside the files other sources wrote (module docstring)."""
    events = events.sort_values(["ts", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    t0 = time.perf_counter()
    days = events["ts"].dt.tz_convert("UTC").dt.date
    n_days = 0
    name = import_file_name(source)
    groups = events.groupby(days, sort=True)
    for day, part in progress(groups, desc="ingest", total=groups.ngroups, unit="day"):
        table = schema.conform(part.reset_index(drop=True))
        _publish_day(settings.interactions_dir, day, table, name)
        n_days += 1
    log.info(
        "wrote %d daily partitions (%d rows) under %s in %.2fs",
        n_days, len(events), settings.interactions_dir, time.perf_counter() - t0,
    )  # fmt: skip
    return ImportSummary(
        source=source,
        rows=len(events),
        days=n_days,
        first_date=days.min() if len(events) else None,
        last_date=days.max() if len(events) else None,
        users=events["user_id"].nunique(),
        items=events["item_id"].nunique(),
        dropped=0,
        day_rows={day: int(n) for day, n in days.value_counts().sort_index().items()},
    )


# --- import records ------------------------------------------------------------------------------


def partition_digest(settings: Settings, date: str | dt.date) -> str | None:
    """SHA-256 over the names and bytes of the raw partition's ``*.parquet`` files of ``date``
    (sorted by name); None when the partition has no file."""
    folder = schema.partition_dir(settings.interactions_dir, date)
    files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


def write_import_record(settings: Settings, record: dict[str, Any]) -> Path:
    """Write one day's import record (its ``date`` names the day) atomically; the path written.

    Keys: ``date``, ``source`` (one of :data:`SOURCE_KINDS`), ``file``, ``rows`` (the day's),
    ``partition_sha256`` (:func:`partition_digest` after writing), ``import`` (the whole import:
    ``first_date``, ``last_date``, ``days``, ``rows``, ``users``, ``items``, ``dropped``,
    ``dropped_by_reason``) and ``options`` (the column/event mapping of a ``table`` import)."""
    if record.get("source") not in SOURCE_KINDS:
        raise ValueError(f"import record source must be one of {SOURCE_KINDS}: {record!r}")
    return schema.write_json_atomic(record, layout.import_record_path(settings, record["date"]))


def read_import_record(settings: Settings, date: str | dt.date) -> dict[str, Any] | None:
    """The import record of ``date``; None when that day was never imported. Raises
    ``ValueError`` naming the file when it is unreadable or not a JSON object."""
    return schema.read_json_file(layout.import_record_path(settings, date), "import record")


def imported_partition(settings: Settings, date: str | dt.date) -> dict[str, Any] | None:
    """The import record of ``date`` if the raw partition is still the one that import wrote
    (same :func:`partition_digest`); None for a live log (simulated, served, or an imported day
    rewritten since)."""
    record = read_import_record(settings, date)
    if record is None:
        return None
    if record.get("partition_sha256") != partition_digest(settings, date):
        log.info("date=%s: raw partition changed since its import: treated as a live log", date)
        return None
    return record


def record_import(
    settings: Settings, summary: ImportSummary, source: str, options: dict[str, Any] | None = None
) -> None:
    """Write the import record of every day ``summary`` wrote (after its partitions)."""
    whole = {
        "first_date": summary.first_date,
        "last_date": summary.last_date,
        "days": summary.days,
        "rows": summary.rows,
        "users": summary.users,
        "items": summary.items,
        "dropped": summary.dropped,
        "dropped_by_reason": summary.dropped_by_reason,
    }
    for day, rows in summary.day_rows.items():
        record = {
            "date": day.isoformat(),
            "source": source,
            "file": summary.source,
            "rows": rows,
            "partition_sha256": partition_digest(settings, day),
            "import": whole,
            "options": options or {},
        }
        write_import_record(settings, record)


def _read_source_csv(path: Path, **kwargs: Any) -> pd.DataFrame:
    """A source CSV as text cells; only an empty cell is missing (an id such as ``NA``,
    ``None`` or ``null`` is an id, not pandas' default NaN). A malformed file is a
    ``ValueError`` naming it."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""], **kwargs)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable CSV file: {exc}") from exc


def epoch_to_ts(values: pd.Series, unit: str) -> pd.Series:
    """Numeric epochs in ``unit`` (``s``, ``ms``, ``us``, ``ns``) → UTC timestamps
    (``datetime64[ns, UTC]``) to the microsecond (the contract's resolution; integers exactly,
    fractions rounded); NaT where a value is not a finite number or lies outside the timestamps
    pandas holds (1677..2262): never an overflow error."""
    numbers = pd.to_numeric(values, errors="coerce")
    per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[unit]
    bound = pd.Timestamp.max.value // 1000  # microseconds either side of the epoch
    if pd.api.types.is_integer_dtype(numbers):  # exact integer arithmetic, bounds first
        mult, div = max(1, 10**6 // per_second), max(1, per_second // 10**6)
        ok = (numbers // div).abs() < bound // mult
        micros = numbers.where(ok, 0) // div * mult
    else:
        floats = numbers.astype("float64") * (10**6 / per_second)
        ok = np.isfinite(floats) & (floats.abs() < bound)
        micros = floats.where(ok, 0).round().astype("int64")
    ts = pd.to_datetime(micros, unit="us", utc=True).astype("datetime64[ns, UTC]")
    return ts.where(ok)


def _read_movielens_ratings(path: Path) -> tuple[pd.DataFrame, int]:
    """→ (frame with user_id, item_id, value, ts), number of unreadable rows dropped (a missing
    field, a rating that is not a finite number, a timestamp that is not epoch seconds in
    1677..2262)."""
    if path.name.endswith(".csv"):
        raw = _read_source_csv(path)
        expected = ["userId", "movieId", "rating", "timestamp"]
        missing = [c for c in expected if c not in raw.columns]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; expected header {','.join(expected)}"
            )
        raw = raw[expected]
    else:
        raw = _read_source_csv(
            path,
            sep="\t",
            header=None,
            names=["userId", "movieId", "rating", "timestamp"],
            on_bad_lines="error",
            engine="python",
        )
    raw.columns = ["user_id", "item_id", "value", "timestamp"]
    from pipelines.data.validate import parse_float  # exact; validate imports this module

    value = parse_float(raw["value"])
    ts = epoch_to_ts(raw["timestamp"], "s")
    users, items = raw["user_id"].str.strip(), raw["item_id"].str.strip()
    bad = value.isna() | ts.isna() | (users.fillna("") == "") | (items.fillna("") == "")
    if bad.any():
        rows = list(bad[bad].index[:5] + (2 if path.name.endswith(".csv") else 1))
        log.warning(
            "%s: dropping %d unreadable rows (first at line(s) %s)", path, int(bad.sum()), rows
        )
        if bad.mean() > 0.5:
            raise ValueError(
                f"{path}: {int(bad.sum())} of {len(raw)} rows unreadable (e.g. lines {rows}): not a MovieLens ratings file?"
            )
    keep = ~bad
    out = pd.DataFrame(
        {"user_id": users[keep], "item_id": items[keep], "value": value[keep], "ts": ts[keep]}
    )
    return out.reset_index(drop=True), int(bad.sum())


def _movielens_items(folder: Path, first_seen: pd.Series) -> pd.DataFrame | None:
    u_item, movies = folder / "u.item", folder / "movies.csv"
    if u_item.exists():
        raw = pd.read_csv(u_item, sep="|", header=None, encoding="latin-1", dtype=str)
        genres = raw.iloc[:, 5 : 5 + len(ML_GENRES)].astype(int).to_numpy()
        category = [ML_GENRES[row.argmax()] if row.any() else "unknown" for row in genres]
        created = pd.to_datetime(raw[2], format="%d-%b-%Y", errors="coerce")
        items = pd.DataFrame(
            {
                "item_id": raw[0].str.strip(),
                "category": category,
                "created_date": created,
                "title": raw[1].fillna(""),  # the film's title: DSSM's item text
            }
        )
    elif movies.exists():
        raw = pd.read_csv(movies, dtype=str)
        items = pd.DataFrame(
            {
                "item_id": raw["movieId"].str.strip(),
                "category": raw["genres"].str.split("|").str[0].fillna("unknown"),
                "created_date": pd.NaT,
                "title": raw["title"].fillna("") if "title" in raw.columns else "",
            }
        )
    else:
        return None
    seen = items["item_id"].map(first_seen)
    items["created_date"] = items["created_date"].fillna(seen).dt.date
    items["price"] = None
    return items


def _movielens_users(folder: Path, first_seen: pd.Series) -> pd.DataFrame | None:
    u_user = folder / "u.user"
    if not u_user.exists():
        return None
    raw = pd.read_csv(u_user, sep="|", header=None, dtype=str)
    users = pd.DataFrame(
        {
            "user_id": raw[0].str.strip(),
            "age": pd.to_numeric(raw[1], errors="coerce").astype("Int32"),
            "gender": raw[2],
            "country": None,
        }
    )
    users["signup_date"] = users["user_id"].map(first_seen).dt.date
    return users


def import_movielens(settings: Settings, path: Path) -> ImportSummary:
    """Import a MovieLens ``u.data`` or ``ratings.csv`` (a folder holding one of them works too)."""
    path = Path(path)
    if path.is_dir():
        for name in ("u.data", "ratings.csv"):
            if (path / name).exists():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"{path}: no u.data or ratings.csv in this folder")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    ratings, dropped = _read_movielens_ratings(path)
    if ratings.empty:
        raise ValueError(f"{path}: no ratings to import")
    ratings["event"] = "rating"
    ratings["event_id"] = _event_ids("movielens", ratings)
    settings.ensure_dirs()
    summary = write_daily_partitions(settings, ratings, str(path.resolve()))
    summary.dropped = dropped
    record_import(settings, summary, "movielens")
    first_user = ratings.groupby("user_id")["ts"].min().dt.tz_localize(None)
    first_item = ratings.groupby("item_id")["ts"].min().dt.tz_localize(None)
    items = _movielens_items(path.parent, first_item)
    if items is not None:
        schema.write_table_atomic(
            schema.conform(items, schema.ITEMS), layout.attributes_path(settings, "items")
        )
        write_item_text(settings, items)  # data/item_text.parquet: the titles
    users = _movielens_users(path.parent, first_user)
    if users is not None:
        schema.write_table_atomic(
            schema.conform(users, schema.USERS), layout.attributes_path(settings, "users")
        )
    return summary


def parse_mapping(pairs: list[str]) -> dict[str, str]:
    """``["user_id=uid", "item_id=sku"]`` → ``{"user_id": "uid", ...}`` (contract column → source column)."""
    mapping = {}
    for pair in pairs:
        target, sep, source = pair.partition("=")
        if not sep or not target or not source:
            raise ValueError(f"bad mapping {pair!r}: expected CONTRACT_COLUMN=SOURCE_COLUMN")
        if target not in schema.INTERACTIONS.names:
            raise ValueError(
                f"bad mapping {pair!r}: {target!r} is not a column of the log contract {schema.INTERACTIONS.names}"
            )
        mapping[target] = source
    return mapping


def parse_events(specs: list[str]) -> dict[str, str]:
    """``["view=click,addtocart=click", "transaction=purchase"]`` → ``{"view": "click", ...}``
    (source event value → contract event). Raises ``ValueError`` on a malformed pair or a target
    that is not one of the contract's events."""
    mapping: dict[str, str] = {}
    for spec in specs:
        for pair in filter(None, (p.strip() for p in spec.split(","))):
            source, sep, target = pair.partition("=")
            source, target = source.strip(), target.strip()
            if not sep or not source or not target:
                raise ValueError(f"bad event mapping {pair!r}: expected SOURCE_VALUE=EVENT")
            if target not in schema.EVENTS:
                raise ValueError(
                    f"bad event mapping {pair!r}: {target!r} is not an event of the log "
                    f"contract {schema.EVENTS}"
                )
            mapping[source] = target
    return mapping


def _line_numbers(path: Path, index: pd.Index) -> list[int]:
    """Up to :data:`MAX_EXAMPLES` source positions of rows ``index`` (0-based data rows): CSV
    line numbers (the header is line 1), parquet row numbers (0-based)."""
    offset = 0 if path.suffix == ".parquet" else 2
    return [int(i) + offset for i in index[:MAX_EXAMPLES]]


def _drop(
    path: Path, df: pd.DataFrame, bad: pd.Series, reason: str, summary_drops: dict[str, Any]
) -> pd.DataFrame:
    """``df`` without the rows of mask ``bad``; records ``reason`` → (count, example lines) in
    ``summary_drops`` and logs a warning naming the file."""
    n = int(bad.sum())
    if not n:
        return df
    where = "rows" if path.suffix == ".parquet" else "lines"
    examples = _line_numbers(path, df.index[bad])
    summary_drops[reason] = (n, examples)
    log.warning("%s: dropping %d rows: %s (e.g. %s %s)", path, n, reason, where, examples)
    return df[~bad]


def _map_events(
    path: Path, df: pd.DataFrame, events: dict[str, str], drops: dict[str, Any]
) -> pd.DataFrame:
    """Translate ``df["event"]`` through ``events`` (contract event names map to themselves unless
    remapped); rows with another value are dropped, one reason per unknown value. Raises
    ``ValueError`` when more than :data:`MAX_DROPPED_SHARE` of the rows would be dropped."""
    raw = df["event"].astype("string").str.strip()
    table = {e: e for e in schema.EVENTS} | events
    mapped = raw.map(table)
    unknown = mapped.isna()
    if unknown.mean() > MAX_DROPPED_SHARE:
        counts = raw[unknown].fillna("<missing>").value_counts().head(10).to_dict()
        raise ValueError(
            f"{path}: {int(unknown.sum())} of {len(df)} rows have an event value that is not a "
            f"contract event {schema.EVENTS} nor mapped onto one: {counts}; map them with "
            "--events VALUE=EVENT,... (e.g. --events view=click,transaction=purchase)"
        )
    df = df.assign(event=mapped)
    for value in raw[unknown].fillna("<missing>").unique():
        bad = unknown & (raw.fillna("<missing>") == value)
        df = _drop(path, df, bad[df.index], f"unknown event value {value!r}", drops)
    return df


def _read_mapped(path: Path, mapping: dict[str, str]) -> pd.DataFrame:
    """The source file's mapped columns under their contract names (text for CSV)."""
    raw = pd.read_parquet(path) if path.suffix == ".parquet" else _read_source_csv(path)
    for needed in ("user_id", "item_id", "ts"):
        if needed not in mapping:
            raise ValueError(f"the mapping must name a source column for {needed!r}")
    missing = sorted({src for src in mapping.values() if src not in raw.columns})
    if missing:
        raise ValueError(
            f"{path}: mapped column(s) {missing} not in the file (columns: {list(raw.columns)})"
        )
    return pd.DataFrame({target: raw[src] for target, src in mapping.items()})


def _parse_ts(path: Path, df: pd.DataFrame, column: str, ts_unit: str | None) -> pd.Series:
    """``df["ts"]`` → UTC timestamps (NaT where unreadable, never an error for one value).

    Numeric epochs in ``ts_unit`` (:func:`epoch_to_ts`); without one, datetimes as they are,
    numbers as nanoseconds, and text as ISO 8601 value by value (:func:`_iso_ts`: spellings
    may differ from row to row: ``Z``, offsets, naive, a space for ``T``, no seconds), then
    whatever is left in the one format pandas infers for it (e.g. ``03/10/2024 05:00``)."""
    values = df["ts"]
    if ts_unit:
        if ts_unit not in ("s", "ms"):
            raise ValueError(f"ts_unit must be 's' or 'ms', got {ts_unit!r}")
        ts = epoch_to_ts(values, ts_unit)
    elif pd.api.types.is_datetime64_any_dtype(values):
        ts = pd.to_datetime(values, utc=True)
    elif pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values):
        ts = epoch_to_ts(values, "ns")
    else:
        text = values.astype("string").str.strip()
        ts = _iso_ts(text)
        rest = ts.isna() & text.notna()
        if rest.any():
            with warnings.catch_warnings():  # "could not infer format": then NaT, reported
                warnings.simplefilter("ignore", UserWarning)
                guess = pd.to_datetime(text[rest], utc=True, errors="coerce")
            ts = ts.where(~rest, guess)
        ts = ts.dt.floor("us")  # the contract's resolution (nanoseconds would not convert)
    if ts.isna().all():
        raise ValueError(f"{path}: column {column!r} holds no readable timestamps")
    return ts


def _iso_ts(text: pd.Series) -> pd.Series:
    """ISO 8601 text → ``datetime64[ns, UTC]``, value by value as the validation gate reads it
    (:func:`pipelines.data.validate.parse_ts`: naive = UTC, each value's own offset; pandas'
    ISO parser gives a naive value the offset of the values before it); NaT where a value is
    not ISO 8601 or lies outside 1677..2262."""
    from pipelines.data.validate import parse_ts  # validate imports this module

    iso = parse_ts(text)
    lo, hi = (pd.Timestamp(t).tz_localize("UTC") for t in (pd.Timestamp.min, pd.Timestamp.max))
    return iso.where(iso.notna() & (iso > lo) & (iso < hi)).astype("datetime64[ns, UTC]")


def _ids(
    path: Path, df: pd.DataFrame, mapping: dict[str, str], drops: dict[str, Any]
) -> pd.DataFrame:
    """``user_id`` / ``item_id`` as text (an integral float, from an integer column with gaps,
    as its integer: ``17.0`` → ``"17"``); rows where either is missing or blank are dropped,
    one reason per column."""
    from pipelines.data.validate import as_text  # validate imports this module

    for col in ("user_id", "item_id"):
        text = as_text(df[col])
        df = df.assign(**{col: text})
        missing = text.isna() | (text.fillna("").str.strip() == "")
        df = _drop(path, df, missing, f"missing {mapping[col]!r} id", drops)
    return df


def _values(path: Path, df: pd.DataFrame, column: str, drops: dict[str, Any]) -> pd.DataFrame:
    """``value`` as float64: 1 where the cell is empty, the row dropped where it holds
    something that is not a finite number."""
    from pipelines.data.validate import parse_float  # exact; validate imports this module

    raw = df["value"]
    number = parse_float(raw)
    bad = raw.notna() & number.isna()
    df = _drop(path, df.assign(value=number), bad, f"unreadable {column!r} value", drops)
    return df.assign(value=df["value"].fillna(1.0))


def _check_dropped(path: Path, total: int, drops: dict[str, Any]) -> None:
    """``ValueError`` when more than :data:`MAX_DROPPED_SHARE` of ``total`` rows were dropped
    (a wrong format or mapping rather than a few bad rows)."""
    dropped = sum(n for n, _ in drops.values())
    if total and dropped / total > MAX_DROPPED_SHARE:
        reasons = "; ".join(f"{n} {reason} (e.g. {ex})" for reason, (n, ex) in drops.items())
        raise ValueError(
            f"{path}: {dropped} of {total} rows would be dropped ({reasons}): check the "
            "--map, --events and --ts-unit options"
        )


def import_table(
    settings: Settings,
    path: Path,
    mapping: dict[str, str],
    default_event: str = "click",
    ts_unit: str | None = None,
    events: dict[str, str] | None = None,
) -> ImportSummary:
    """Import a generic CSV/parquet: ``mapping`` maps contract columns to source columns.

    ``user_id``, ``item_id`` and ``ts`` must be mapped; ``event`` defaults to ``default_event``,
    ``value`` to 1, ``event_id`` to a hash of the row. ``ts_unit`` (``s``/``ms``) reads numeric
    epochs. ``events`` maps source event values onto contract events (see the module docstring);
    rows with an unreadable timestamp or an unknown event value are dropped and reported.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if events and "event" not in mapping:
        raise ValueError("an event mapping needs the source's event column: add --map event=COLUMN")
    df = _read_mapped(path, mapping)
    total = len(df)
    drops: dict[str, Any] = {}
    df["ts"] = _parse_ts(path, df, mapping["ts"], ts_unit)
    df = _drop(path, df, df["ts"].isna(), f"unreadable {mapping['ts']!r} timestamp", drops)
    if "event" in df:
        df = _map_events(path, df, events or {}, drops)
    else:
        df["event"] = default_event
    df = _ids(path, df, mapping, drops)
    df = _values(path, df, mapping["value"], drops) if "value" in df else df.assign(value=1.0)
    _check_dropped(path, total, drops)
    df = df.reset_index(drop=True)
    if "event_id" not in df:
        df["event_id"] = _event_ids(path.name, df)
    settings.ensure_dirs()
    summary = write_daily_partitions(settings, df, str(path.resolve()))
    summary.dropped = sum(n for n, _ in drops.values())
    summary.dropped_by_reason = {reason: n for reason, (n, _) in drops.items()}
    summary.dropped_examples = {reason: ex for reason, (_, ex) in drops.items()}
    options = {"mapping": mapping, "events": events or {}, "ts_unit": ts_unit}
    if "event" not in mapping:
        options["default_event"] = default_event
    record_import(settings, summary, "table", options)
    return summary
