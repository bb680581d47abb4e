"""The cold-start policy: what a user the model has no vector for is shown.

One definition for the offline side (``recloop recommend``) and the online service (the trending
order of :class:`serving.bundle.ItemTable`): items of the item feature table of day D ordered by
``log(1 + popularity) × clip(trending, 0.1, 10)`` (ties by a tiny extra popularity term, then by
id), where ``popularity`` = clicks + 2 × purchases over 7 days and ``trending`` = the features'
``item_trending`` (engagements on D against the 7-day daily mean). A log with no clicks or
purchases at all (ratings only, e.g. MovieLens) falls back to the 28-day rating count as
popularity, so its cold start is "most rated lately" rather than item-id order.

Cold start excludes nothing (an unknown user has no history) and lists only items the workspace
knows (the feature table: the attribute file's items and those with events in the window).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core import schema
from pipelines.core.settings import Settings

log = logging.getLogger(__name__)


def item_popularity(column: Callable[[str, Any], np.ndarray]) -> np.ndarray:
    """Popularity ``(I,)`` float64 from an item feature table, read through ``column(name,
    default)`` (an array aligned with the table's rows): ``item_clicks_7d + 2 item_purchases_7d``;
    when that is zero for every item (a ratings-only log), ``item_ratings_28d``."""
    pop = (column("item_clicks_7d", 0) + 2 * column("item_purchases_7d", 0)).astype(np.float64)
    if not pop.any():
        pop = column("item_ratings_28d", 0).astype(np.float64)
    return pop


def trending_scores(popularity: np.ndarray, trending: np.ndarray) -> np.ndarray:
    """Trending score ``(I,)`` float64 = ``log1p(pop) × clip(trending, 0.1, 10) + 1e-6 log1p(pop)``
    (the tiny second term breaks ties between items trending equally by popularity)."""
    pop = np.log1p(np.asarray(popularity, dtype=np.float64))
    return pop * np.clip(np.asarray(trending, dtype=np.float64), 0.1, 10.0) + 1e-6 * pop


def trending_order(ids: np.ndarray, popularity: np.ndarray, trending: np.ndarray) -> np.ndarray:
    """Row order ``(I,)`` int64 of the items by descending :func:`trending_scores`, ties by id."""
    return np.lexsort((np.asarray(ids), -trending_scores(popularity, trending)))


@dataclass(frozen=True)
class ColdStart:
    """The cold-start list: ``item_ids`` (best first, ``n`` of them), their ``scores`` ``(n,)``
    float64 (the trending score), and ``basis``: the feature table date it came from, or
    ``"model"`` when there was none and the model's own training counts were used."""

    item_ids: list[str]
    scores: np.ndarray
    basis: str


def table_items(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Item ids ``(I,)`` str in trending order and their scores ``(I,)`` float64, from an item
    feature table (one row per item; the last row wins for a repeated id)."""
    f = frame.drop_duplicates("item_id", keep="last").reset_index(drop=True)

    def col(name: str, default: Any) -> np.ndarray:
        return f[name].to_numpy() if name in f.columns else np.full(len(f), default)

    ids = f["item_id"].astype(str).to_numpy()
    pop, trending = item_popularity(col), col("item_trending", 1.0)
    order = trending_order(ids, pop, trending)
    return ids[order], trending_scores(pop, trending)[order]


def cold_start_items(
    settings: Settings,
    n: int,
    date: str | dt.date,
    fallback: tuple[list[str], np.ndarray] | None = None,
) -> ColdStart:
    """The top-``n`` cold-start items as of ``date``: from the newest item feature table on or
    before ``date``; without one, from ``fallback`` = ``(item ids (I,), positives per item (I,))``
    (e.g. a model's training matrix, trending 1), logged. ``FileNotFoundError`` when neither."""
    from pipelines.features.tables import read_table, table_dir

    day = schema.parse_date(date)
    dates = [d for d in schema.partition_dates(table_dir(settings, "item")) if d <= day]
    if dates:
        ids, scores = table_items(read_table(settings, "item", dates[-1]).to_pandas())
        return ColdStart(ids[:n].tolist(), scores[:n], dates[-1].isoformat())
    if fallback is None:
        raise FileNotFoundError(
            f"no item feature table on or before {day} under {table_dir(settings, 'item')}: "
            "run `recloop features compute --date D` (or the daily DAG) first"
        )
    log.warning("no item feature table on or before %s: cold start from training counts", day)
    ids = np.asarray(fallback[0], dtype=str)
    pop = np.asarray(fallback[1], dtype=np.float64)
    order = trending_order(ids, pop, np.ones(len(ids)))
    return ColdStart(
        ids[order][:n].tolist(), trending_scores(pop, np.ones(len(ids)))[order][:n], "model"
    )
