"""Importers: replay real logs as daily partitions under the log contract (``pipelines/core/schema.py``).

- MovieLens: ``u.data`` (tab-separated ``user item rating timestamp``, ML-100K) or ``ratings.csv``
  (``userId,movieId,rating,timestamp``, ML-latest / ML-20M...), with ``u.item``/``u.user`` or
  ``movies.csv`` read when they sit beside it. Events are ``rating`` with ``value`` = the rating and
  no propensity.
- Generic: any CSV or parquet with a column mapping onto the contract's columns.

Each touched day's partition is replaced atomically; other days are left alone, so re-importing the
same file gives the same partitions (idempotent).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipelines.core import layout, schema
from pipelines.core.settings import Settings

log = logging.getLogger(__name__)

ML_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]  # fmt: skip


@dataclass
class ImportSummary:
    """What an import wrote."""

    source: str
    rows: int
    days: int
    first_date: dt.date | None
    last_date: dt.date | None
    users: int
    items: int
    dropped: int

    def __str__(self) -> str:
        return (
            f"imported {self.rows} events from {self.source}: {self.days} daily partitions "
            f"{self.first_date}..{self.last_date}, {self.users} users, {self.items} items"
            + (f", {self.dropped} unreadable rows dropped" if self.dropped else "")
        )


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


def write_daily_partitions(settings: Settings, events: pd.DataFrame, source: str) -> ImportSummary:
    """Split contract-shaped ``events`` by UTC day and replace each day's partition atomically."""
    events = events.sort_values(["ts", "user_id", "item_id"], kind="stable").reset_index(drop=True)
    days = events["ts"].dt.tz_convert("UTC").dt.date
    n_days = 0
    for day, part in events.groupby(days, sort=True):
        schema.write_partition_atomic(
            schema.conform(part.reset_index(drop=True)), settings.interactions_dir, day
        )
        n_days += 1
    log.info("wrote %d daily partitions under %s", n_days, settings.interactions_dir)
    return ImportSummary(
        source=source,
        rows=len(events),
        days=n_days,
        first_date=days.min() if len(events) else None,
        last_date=days.max() if len(events) else None,
        users=events["user_id"].nunique(),
        items=events["item_id"].nunique(),
        dropped=0,
    )


def _read_movielens_ratings(path: Path) -> tuple[pd.DataFrame, int]:
    """→ (frame with user_id, item_id, value, ts), number of unreadable rows dropped."""
    if path.name.endswith(".csv"):
        raw = pd.read_csv(path, dtype=str)
        expected = ["userId", "movieId", "rating", "timestamp"]
        missing = [c for c in expected if c not in raw.columns]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; expected header {','.join(expected)}"
            )
        raw = raw[expected]
    else:
        raw = pd.read_csv(
            path,
            sep="\t",
            header=None,
            dtype=str,
            names=["userId", "movieId", "rating", "timestamp"],
            on_bad_lines="error",
            engine="python",
        )
    raw.columns = ["user_id", "item_id", "value", "timestamp"]
    value = pd.to_numeric(raw["value"], errors="coerce")
    seconds = pd.to_numeric(raw["timestamp"], errors="coerce")
    bad = value.isna() | seconds.isna() | raw["user_id"].isna() | raw["item_id"].isna()
    if bad.any():
        rows = list(bad[bad].index[:5] + (2 if path.name.endswith(".csv") else 1))
        log.warning(
            "%s: dropping %d unreadable rows (first at line(s) %s)", path, int(bad.sum()), rows
        )
        if bad.mean() > 0.5:
            raise ValueError(
                f"{path}: {int(bad.sum())} of {len(raw)} rows unreadable (e.g. lines {rows}): not a MovieLens ratings file?"
            )
    raw = raw[~bad]
    out = pd.DataFrame(
        {
            "user_id": raw["user_id"].str.strip(),
            "item_id": raw["item_id"].str.strip(),
            "value": value[~bad].astype(float),
            "ts": pd.to_datetime(seconds[~bad].astype("int64"), unit="s", utc=True),
        }
    )
    return out, int(bad.sum())


def _movielens_items(folder: Path, first_seen: pd.Series) -> pd.DataFrame | None:
    u_item, movies = folder / "u.item", folder / "movies.csv"
    if u_item.exists():
        raw = pd.read_csv(u_item, sep="|", header=None, encoding="latin-1", dtype=str)
        genres = raw.iloc[:, 5 : 5 + len(ML_GENRES)].astype(int).to_numpy()
        category = [ML_GENRES[row.argmax()] if row.any() else "unknown" for row in genres]
        created = pd.to_datetime(raw[2], format="%d-%b-%Y", errors="coerce")
        items = pd.DataFrame(
            {"item_id": raw[0].str.strip(), "category": category, "created_date": created}
        )
    elif movies.exists():
        raw = pd.read_csv(movies, dtype=str)
        items = pd.DataFrame(
            {
                "item_id": raw["movieId"].str.strip(),
                "category": raw["genres"].str.split("|").str[0].fillna("unknown"),
                "created_date": pd.NaT,
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
    summary = write_daily_partitions(settings, ratings, str(path))
    summary.dropped = dropped
    first_user = ratings.groupby("user_id")["ts"].min().dt.tz_localize(None)
    first_item = ratings.groupby("item_id")["ts"].min().dt.tz_localize(None)
    items = _movielens_items(path.parent, first_item)
    if items is not None:
        schema.write_table_atomic(
            schema.conform(items, schema.ITEMS), layout.attributes_path(settings, "items")
        )
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


def import_table(
    settings: Settings,
    path: Path,
    mapping: dict[str, str],
    default_event: str = "click",
    ts_unit: str | None = None,
) -> ImportSummary:
    """Import a generic CSV/parquet: ``mapping`` maps contract columns to source columns.

    ``user_id``, ``item_id`` and ``ts`` must be mapped; ``event`` defaults to ``default_event``,
    ``value`` to 1, ``event_id`` to a hash of the row. ``ts_unit`` (``s``/``ms``) reads numeric epochs.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    raw = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str)
    for needed in ("user_id", "item_id", "ts"):
        if needed not in mapping:
            raise ValueError(f"the mapping must name a source column for {needed!r}")
    missing = sorted({src for src in mapping.values() if src not in raw.columns})
    if missing:
        raise ValueError(
            f"{path}: mapped column(s) {missing} not in the file (columns: {list(raw.columns)})"
        )
    df = pd.DataFrame({target: raw[src] for target, src in mapping.items()})
    if ts_unit:
        df["ts"] = pd.to_datetime(pd.to_numeric(df["ts"], errors="coerce"), unit=ts_unit, utc=True)
    else:
        df["ts"] = pd.to_datetime(df["ts"], utc=True, errors="coerce")
    bad_ts = df["ts"].isna()
    if bad_ts.all():
        raise ValueError(f"{path}: column {mapping['ts']!r} holds no readable timestamps")
    dropped = int(bad_ts.sum())
    if dropped:
        log.warning(
            "%s: dropping %d rows with unreadable %r (e.g. rows %s)",
            path,
            dropped,
            mapping["ts"],
            list(df.index[bad_ts][:5]),
        )
    df = df[~bad_ts].copy()
    df["user_id"] = df["user_id"].astype(str)
    df["item_id"] = df["item_id"].astype(str)
    if "event" not in df:
        df["event"] = default_event
    df["value"] = pd.to_numeric(df["value"], errors="coerce").fillna(1.0) if "value" in df else 1.0
    if "event_id" not in df:
        df["event_id"] = _event_ids(path.name, df)
    settings.ensure_dirs()
    summary = write_daily_partitions(settings, df, str(path))
    summary.dropped = dropped
    return summary
