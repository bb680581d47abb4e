"""Catalog health of served slates or impression logs, and users' activity buckets.

Catalog health of one day's impressions (``shown``: one row per impression, column ``item_id``)
against the catalog of that day (items created by it, ``data/items.parquet``):

- ``impressions``: rows of ``shown``; ``distinct_items``: distinct item ids among them;
- ``coverage``: distinct items shown / items in the catalog, in ``[0, 1]``;
- ``gini``: Gini coefficient of impressions per catalog item (items not shown count as 0;
  shown items outside the catalog are added to it): 0 = every item shown equally often,
  ``(n-1)/n`` = one item of ``n`` takes every impression;
- ``novelty``: mean over impressions of ``-log2 p(item)`` (bits), ``p`` the item's share of the
  positive events (click, purchase, rating) of the :data:`POPULARITY_WINDOW_DAYS` days before,
  add-one smoothed over the catalog (``(c_i + 1) / (C + n)``): higher = less popular items;
- ``new_item_share``: share of impressions on items created at most ``new_days`` days before
  the date (``created_date >= date - new_days``).

Activity buckets (:data:`BUCKETS`): a user's positive events in the validated logs before the
date — ``"0"``, ``"1-4"``, ``"5-19"``, ``"20+"`` — so that any per-user figure can be reported
per bucket (:func:`by_bucket`).

:func:`daily_health` computes the health of the validated logs' impressions for a list of days
in one pass (the HTML report's catalog section).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipelines.core import layout, schema
from pipelines.core.settings import Settings

BUCKETS = ("0", "1-4", "5-19", "20+")
"""Activity buckets by positive events before the day: 0, 1-4, 5-19, 20 or more."""
BUCKET_EDGES = (1, 5, 20)
"""Lower edges of the buckets after ``"0"``."""
POPULARITY_WINDOW_DAYS = 28
"""Days of positives before the date that define an item's popularity (novelty)."""
NEW_DAYS = 7
"""An item created at most this many days before the date is new."""
POSITIVE_EVENTS = ("click", "purchase", "rating")

Date = str | dt.date


def gini(counts: Sequence[float] | np.ndarray) -> float:
    """Gini coefficient of non-negative ``counts`` (one per item), in ``[0, 1)``: 0 when all are
    equal (or all zero, or fewer than two), ``(n-1)/n`` when one item holds everything."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = len(x), float(x.sum()) if len(x) else 0.0
    if n < 2 or total <= 0:
        return 0.0
    ranks = np.arange(1, n + 1, dtype=np.float64)
    return float(np.sum((2 * ranks - n - 1) * x) / (n * total))


def read_catalog(settings: Settings, date: Date) -> pd.DataFrame:
    """Items created by ``date`` (``item_id``, ``created_date`` as ``datetime.date``; a missing
    creation date counts as old); empty when ``data/items.parquet`` is absent."""
    path = layout.attributes_path(settings, "items")
    if not path.exists():
        return pd.DataFrame({"item_id": pd.Series([], dtype=object), "created_date": []})
    items = pd.read_parquet(path, columns=["item_id", "created_date"])
    created = pd.to_datetime(items["created_date"], errors="coerce").dt.date
    keep = created.isna() | (created <= schema.parse_date(date))
    return pd.DataFrame(
        {"item_id": items["item_id"].astype(str)[keep].to_numpy(), "created_date": created[keep]}
    ).reset_index(drop=True)


def catalog_health(
    shown: pd.DataFrame,
    catalog: pd.DataFrame,
    date: Date,
    popularity: pd.Series | None = None,
    new_days: int = NEW_DAYS,
) -> dict[str, float | int | None]:
    """The module docstring's figures for the impressions ``shown`` (column ``item_id``) against
    ``catalog`` (``item_id``, ``created_date``). ``popularity``: positive events per item id
    before the date (None or empty: every item equally popular). Shares are ``None`` when
    nothing was shown."""
    items = shown["item_id"].astype(str)
    per_item = items.value_counts()
    ids = pd.Index(catalog["item_id"].astype(str)).union(per_item.index)
    counts = per_item.reindex(ids, fill_value=0).to_numpy(np.float64)
    n_imp = int(len(items))
    out: dict[str, float | int | None] = {
        "impressions": n_imp,
        "distinct_items": int(len(per_item)),
        "catalog_items": int(len(catalog)),
        "coverage": len(per_item) / len(ids) if len(ids) else None,
        "gini": gini(counts),
        "novelty": None,
        "new_item_share": None,
    }
    if n_imp == 0:
        return out
    pop = (popularity if popularity is not None else pd.Series(dtype=np.float64)).astype(float)
    c = pop.reindex(items.to_numpy(), fill_value=0.0).to_numpy()
    denom = float(pop.reindex(ids, fill_value=0.0).sum()) + len(ids)
    out["novelty"] = float(np.mean(-np.log2((c + 1.0) / denom)))
    start = schema.parse_date(date) - dt.timedelta(days=new_days)
    created = dict(zip(catalog["item_id"].astype(str), catalog["created_date"], strict=True))
    new = np.array([_is_new(created.get(i), start) for i in items.to_numpy()], dtype=bool)
    out["new_item_share"] = float(new.mean())
    return out


def _is_new(created: object, start: dt.date) -> bool:
    return isinstance(created, dt.date) and created >= start


def activity_bucket(n_positives: Sequence[int] | np.ndarray) -> np.ndarray:
    """The :data:`BUCKETS` label of each count of positive events, ``(n,)`` object array."""
    idx = np.searchsorted(np.asarray(BUCKET_EDGES), np.asarray(n_positives), side="right")
    return np.asarray(BUCKETS, dtype=object)[idx]


def positives_before(
    settings: Settings, date: Date, days: int | None = None, by: str = "user_id"
) -> pd.Series:
    """Positive events (click, purchase, rating) per ``by`` (``user_id`` or ``item_id``) in the
    validated logs before ``date`` (the last ``days`` of them when given); int64 Series."""
    import duckdb

    from pipelines.core.duckdb_sql import sql_list
    from pipelines.core.validated import validated_files

    if by not in ("user_id", "item_id"):
        raise ValueError(f"by must be user_id or item_id, got {by!r}")
    last = schema.parse_date(date) - dt.timedelta(days=1)
    first = None if days is None else last - dt.timedelta(days=days - 1)
    files = validated_files(settings, first, last)
    if not files:
        return pd.Series(dtype=np.int64, name="positives")
    events = ", ".join(f"'{e}'" for e in POSITIVE_EVENTS)
    with duckdb.connect() as con:
        frame = con.execute(
            f"SELECT {by} AS k, count(*) AS n FROM read_parquet({sql_list(files)}) "
            f"WHERE event IN ({events}) GROUP BY {by}"
        ).df()
    return pd.Series(frame["n"].to_numpy(np.int64), index=frame["k"].astype(str), name="positives")


def user_buckets(settings: Settings, date: Date, user_ids: Sequence[str]) -> pd.Series:
    """The activity bucket of each of ``user_ids`` on ``date`` (positives before it), indexed
    by user id (duplicates dropped)."""
    ids = pd.Index(pd.unique(np.asarray(user_ids, dtype=object)).astype(str))
    n = positives_before(settings, date).reindex(ids, fill_value=0)
    return pd.Series(activity_bucket(n.to_numpy()), index=ids, name="bucket")


def by_bucket(values: pd.Series, buckets: pd.Series) -> dict[str, dict[str, float | int | None]]:
    """``values`` (indexed by user id; several rows per user allowed) averaged per activity
    bucket: ``{bucket: {"mean": m or None, "users": distinct users, "n": rows}}`` for every
    bucket of :data:`BUCKETS` (users without a bucket fall in ``"0"``)."""
    b = buckets.reindex(values.index).fillna(BUCKETS[0]).to_numpy()
    v = values.to_numpy(np.float64)
    users = values.index.to_numpy()
    out: dict[str, dict[str, float | int | None]] = {}
    for name in BUCKETS:
        m = b == name
        out[name] = {
            "mean": float(v[m].mean()) if m.any() else None,
            "users": int(len(set(users[m]))),
            "n": int(m.sum()),
        }
    return out


def daily_health(
    settings: Settings, dates: Sequence[Date], new_days: int = NEW_DAYS
) -> pd.DataFrame:
    """Catalog health of the validated logs' impressions, one row per date of ``dates`` that has
    a validated partition: ``date`` plus :func:`catalog_health`'s figures (novelty from the
    :data:`POPULARITY_WINDOW_DAYS` days of positives before each date). One scan of the logs."""
    counts = _daily_item_counts(settings, dates)
    rows = []
    for d in sorted({schema.parse_date(x) for x in dates}):
        imp = counts[(counts["date"] == d) & (counts["event"] == "impression")]
        if imp.empty:
            continue
        lo = d - dt.timedelta(days=POPULARITY_WINDOW_DAYS)
        prior = counts[(counts["date"] < d) & (counts["date"] >= lo)]
        prior = prior[prior["event"].isin(POSITIVE_EVENTS)].groupby("item_id")["n"].sum()
        shown = pd.DataFrame({"item_id": np.repeat(imp["item_id"].to_numpy(), imp["n"])})
        health = catalog_health(shown, read_catalog(settings, d), d, prior, new_days)
        rows.append({"date": d.isoformat(), **health})
    return pd.DataFrame(rows)


def _daily_item_counts(settings: Settings, dates: Sequence[Date]) -> pd.DataFrame:
    """``date``, ``item_id``, ``event``, ``n``: rows per item and event of the validated days
    from :data:`POPULARITY_WINDOW_DAYS` before the first of ``dates`` to the last."""
    import duckdb

    from pipelines.core.duckdb_sql import sql_list
    from pipelines.core.validated import validated_files

    parsed = [schema.parse_date(x) for x in dates]
    if not parsed:
        return pd.DataFrame(columns=["date", "item_id", "event", "n"])
    first = min(parsed) - dt.timedelta(days=POPULARITY_WINDOW_DAYS)
    files = validated_files(settings, first, max(parsed))
    if not files:
        return pd.DataFrame(columns=["date", "item_id", "event", "n"])
    with duckdb.connect() as con:
        frame = con.execute(
            "SELECT date, item_id, event, count(*) AS n FROM "
            f"read_parquet({sql_list(files)}, hive_partitioning = true) "
            "GROUP BY date, item_id, event"
        ).df()
    frame["date"] = pd.to_datetime(frame["date"].astype(str)).dt.date
    frame["item_id"] = frame["item_id"].astype(str)
    return frame
