"""Retrieval training data for one logical date: positives, vocabularies, interaction matrices and
the side attributes the models read.

The validated logs up to and including day D (optionally the last ``window_days``; default all
history) are read with DuckDB; positives are ``click``, ``purchase`` and ``rating`` events
(impressions alone are not positives). The implicit matrix holds per (user, item) the count of
positive events, purchases counted ``PURCHASE_WEIGHT`` times; the explicit matrix holds the last
rating. Vocabularies (raw id ↔ row) are built deterministically from the window (sorted ids; items
also from ``items.parquet`` when created by D, so a new item with no interactions is still
indexable through the two-tower item tower) — a rerun of D gives the same rows whatever ran after
it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipelines.core import layout, schema
from pipelines.core.duckdb_sql import sql_list
from pipelines.core.settings import Settings
from pipelines.core.validated import validated_files
from pipelines.core.vocab import Vocab

POSITIVE_EVENTS = ("click", "purchase", "rating")
PURCHASE_WEIGHT = 2.0
POPULAR_WINDOW_DAYS = 7
#: numeric side attributes cut into bands of this width before :func:`group_codes` (years of age)
MF_BANDS = {"user_age": 10.0, "age": 10.0}


@dataclass
class TrainingData:
    """Everything a retrieval model is trained from, for logical date ``date``.

    ``implicit`` ``(U, I)`` float32 counts; ``explicit`` ``(U, I)`` ratings (may be empty);
    ``recent`` ``(I,)`` positive events per item in the last ``POPULAR_WINDOW_DAYS`` days.
    ``sequences``: each user's positive items in time order (:func:`user_sequences`), what the
    sequential retrievers train on. ``first``: the first day read (``None``: all history).
    """

    date: dt.date
    users: Vocab
    items: Vocab
    implicit: sp.csr_matrix
    explicit: sp.csr_matrix
    recent: np.ndarray
    n_events: int
    sequences: tuple[np.ndarray, np.ndarray] | None = None
    first: dt.date | None = None


def read_positives(settings: Settings, last: dt.date, first: dt.date | None = None) -> pd.DataFrame:
    """Positive events of the validated days in ``[first, last]``: user_id, item_id, event, value, ts."""
    import duckdb

    files = validated_files(settings, first, last)
    if not files:
        return pd.DataFrame(columns=["user_id", "item_id", "event", "value", "ts"])
    events = ", ".join(f"'{e}'" for e in POSITIVE_EVENTS)
    with duckdb.connect() as con:
        return con.execute(
            f"SELECT user_id, item_id, event, value, ts FROM read_parquet({sql_list(files)}) "
            f"WHERE event IN ({events}) ORDER BY ts, user_id, item_id"
        ).df()


def item_impressions(settings: Settings, data: TrainingData) -> np.ndarray:
    """``(I,)`` float32: the ``impression`` events of each item of ``data.items`` in the validated
    days ``data`` was read from (``data.first``..``data.date``); items never shown: 0. The
    exposure the logging policy gave each item (the sequential retrievers' exposure correction)."""
    import duckdb

    out = np.zeros(len(data.items), dtype=np.float32)
    files = validated_files(settings, data.first, data.date)
    if not files:
        return out
    with duckdb.connect() as con:
        shown = con.execute(
            f"SELECT item_id, count(*) AS n FROM read_parquet({sql_list(files)}) "
            "WHERE event = 'impression' GROUP BY item_id"
        ).df()
    rows = data.items.encode(shown["item_id"].astype(str))
    keep = rows >= 0
    np.add.at(out, rows[keep], shown["n"].to_numpy(np.float32)[keep])
    return out


def _items_created_by(settings: Settings, date: dt.date) -> list[str]:
    path = layout.attributes_path(settings, "items")
    if not path.exists():
        return []
    items = pd.read_parquet(path, columns=["item_id", "created_date"])
    created = pd.to_datetime(items["created_date"]).dt.date
    return items.loc[created.isna() | (created <= date), "item_id"].astype(str).tolist()


def matrices(
    events: pd.DataFrame, users: Vocab, items: Vocab
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(implicit counts, explicit last ratings), each ``(len(users), len(items))``; events with ids
    outside the vocabularies are dropped."""
    shape = (len(users), len(items))
    u = users.encode(events["user_id"])
    i = items.encode(events["item_id"])
    keep = (u >= 0) & (i >= 0)
    ev = events["event"].to_numpy()
    weight = np.where(ev == "purchase", PURCHASE_WEIGHT, 1.0)
    implicit = sp.csr_matrix((weight[keep].astype(np.float32), (u[keep], i[keep])), shape=shape)
    implicit.sum_duplicates()
    rated = keep & (ev == "rating")
    if rated.any():
        last = pd.DataFrame({"u": u[rated], "i": i[rated], "v": events["value"].to_numpy()[rated]})
        last = last.groupby(["u", "i"], sort=True).last().reset_index()
        explicit = sp.csr_matrix(
            (last["v"].astype(np.float32), (last["u"], last["i"])), shape=shape
        )
    else:
        explicit = sp.csr_matrix(shape, dtype=np.float32)
    return implicit, explicit


def user_sequences(
    events: pd.DataFrame, users: Vocab, items: Vocab
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's positive items in the order of ``events`` (time order, as
    :func:`read_positives` returns them), repeats of the item just before dropped (a click, its
    purchase and its rating are one step): ``(indptr (U + 1,), items (E,))`` int64, user ``u``'s
    sequence ``items[indptr[u]:indptr[u + 1]]``, oldest first. Ids outside the vocabularies are
    dropped."""
    u = users.encode(events["user_id"])
    i = items.encode(events["item_id"])
    keep = (u >= 0) & (i >= 0)
    u, i = u[keep].astype(np.int64), i[keep].astype(np.int64)
    order = np.argsort(u, kind="stable")
    u, i = u[order], i[order]
    new = np.ones(len(u), dtype=bool)
    new[1:] = (u[1:] != u[:-1]) | (i[1:] != i[:-1])
    u, i = u[new], i[new]
    indptr = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(np.bincount(u, minlength=len(users)), out=indptr[1:])
    return indptr, i


def load_training_data(
    settings: Settings, date: str | dt.date, window_days: int | None = None
) -> TrainingData:
    """Positives of the validated days up to ``date`` (the last ``window_days`` when given)."""
    day = schema.parse_date(date)
    first = day - dt.timedelta(days=window_days - 1) if window_days else None
    events = read_positives(settings, day, first)
    if events.empty:
        raise ValueError(
            f"no positive events (click/purchase/rating) in validated logs up to {day} under {settings.validated_dir}"
        )
    users = Vocab(sorted(events["user_id"].astype(str).unique()))
    items = Vocab(
        sorted(set(events["item_id"].astype(str)) | set(_items_created_by(settings, day)))
    )
    implicit, explicit = matrices(events, users, items)
    ts = pd.to_datetime(events["ts"], utc=True)
    recent_mask = (
        ts >= pd.Timestamp(day, tz="UTC") - pd.Timedelta(days=POPULAR_WINDOW_DAYS - 1)
    ).to_numpy()
    recent = np.bincount(items.encode(events["item_id"][recent_mask]), minlength=len(items)).astype(
        np.float32
    )
    sequences = user_sequences(events, users, items)
    return TrainingData(
        day, users, items, implicit.tocsr(), explicit.tocsr(), recent, len(events), sequences, first
    )


def entity_features(
    settings: Settings, entity: str, date: dt.date, vocab: Vocab
) -> pd.DataFrame | None:
    """Feature-store table of ``entity`` as of ``date`` (attributes otherwise), indexed by row."""
    key = f"{entity}_id"
    frame = None
    try:
        from pipelines.features.tables import read_table

        frame = read_table(settings, entity, date).to_pandas()
    except (FileNotFoundError, ValueError, OSError):
        path = layout.attributes_path(settings, f"{entity}s")
        frame = pd.read_parquet(path) if path.exists() else None
    if frame is None or frame.empty:
        return None
    frame = frame.drop(columns=[c for c in ("event_timestamp", "created") if c in frame.columns])
    frame = frame.drop_duplicates(key, keep="last")
    rows = vocab.encode(frame[key])
    frame = frame[rows >= 0].drop(columns=[key])
    frame.index = rows[rows >= 0]
    return frame.sort_index()


def select_columns(frame: pd.DataFrame | None, names: tuple[str, ...]) -> pd.DataFrame | None:
    """The listed columns of ``frame`` that it has (``None`` when it has none of them)."""
    if frame is None:
        return None
    keep = [c for c in names if c in frame.columns]
    return frame[keep] if keep else None


def group_codes(
    frame: pd.DataFrame | None, attributes: tuple[tuple[str, ...], ...], n: int
) -> np.ndarray | None:
    """Integer codes ``(n, A)`` of the categorical side attributes of rows ``0..n-1`` (``-1`` where
    unknown), one column per attribute of ``attributes`` that ``frame`` has (the first of its
    alternative column names present); numeric columns named in ``MF_BANDS`` are cut into bands of
    that width first. Codes follow the sorted distinct values, so they are deterministic.
    ``None`` when ``frame`` has none of the attributes."""
    if frame is None:
        return None
    frame = frame.reindex(range(n))
    out = []
    for names in attributes:
        col = next((c for c in names if c in frame.columns), None)
        if col is None:
            continue
        values = frame[col]
        if col in MF_BANDS and pd.api.types.is_numeric_dtype(values):
            values = np.floor(values / MF_BANDS[col])
        known = values.notna().to_numpy()
        codes = np.full(n, -1, dtype=np.int64)
        if known.any():
            kept = values[known].astype(str)
            codes[known] = pd.Categorical(kept, categories=sorted(kept.unique())).codes
        out.append(codes)
    return np.stack(out, axis=1) if out else None
