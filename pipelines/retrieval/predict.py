"""Recommendations and pair scores from a saved retrieval artifact (``recloop recommend``,
``recloop predict``, the ranker's hard negatives and retrieval-order baseline).

Every requested user gets a row set: the model's own top-K for users it knows, the cold-start
policy (:mod:`pipelines.retrieval.cold_start`, the same one the service uses) for the others,
told apart by the ``source`` column."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pipelines.core.settings import Settings
from pipelines.retrieval.cold_start import cold_start_items
from pipelines.retrieval.train import Artifact, load_artifact

log = logging.getLogger(__name__)


SOURCES = ("model", "cold_start")
"""Values of ``recommend``'s ``source`` column: the model's own top-K, or the cold-start policy."""


def unique_ids(user_ids: list[str]) -> list[str]:
    """``user_ids`` as strings with repeats removed, first occurrence kept (order preserved)."""
    return list(dict.fromkeys(str(u) for u in user_ids))


def recommend(
    settings: Settings,
    name: str,
    k: int,
    user_ids: list[str] | None = None,
    date: str | None = None,
    *,
    cold_start: bool = True,
) -> pd.DataFrame:
    """Top-``k`` items for the listed users (default: every user the model knows), each user once.

    Returns ``user_id, item_id, rank, score, source`` (rank 1 = best, requested order): users the
    model knows get its top-``k`` unseen items (``source`` = ``model``); the others get the
    cold-start list of :mod:`pipelines.retrieval.cold_start` as of the model's date (``source`` =
    ``cold_start``; excludes nothing: they have no history). ``cold_start=False`` skips unknown
    users instead (logged), for callers that only want model candidates."""
    art = load_artifact(settings, name, date)
    ids = art.users.ids if user_ids is None else unique_ids(user_ids)
    rows = art.users.encode(ids)
    unknown = [u for u, r in zip(ids, rows, strict=True) if r < 0]
    known = rows[rows >= 0]
    frame = model_rows(art, known, k)
    if unknown and cold_start:
        frame = pd.concat([frame, cold_start_rows(settings, art, unknown, k)], ignore_index=True)
        position = {u: n for n, u in enumerate(ids)}
        frame = frame.sort_values(
            ["user_id", "rank"], key=lambda c: c.map(position) if c.name == "user_id" else c
        )
    elif unknown:
        log.warning(
            "%d user id(s) unknown to %s (e.g. %s): skipped",
            len(unknown),
            art.meta.get("version"),
            unknown[:5],
        )
    return frame.reset_index(drop=True)


def model_rows(art: Artifact, rows: np.ndarray, k: int) -> pd.DataFrame:
    """The model's top-``k`` unseen items for vocabulary ``rows`` ``(U,)``: ``user_id, item_id,
    rank, score, source`` (``source`` = ``model``)."""
    items, scores = art.model.recommend(rows, k, exclude=art.seen)
    n = items.shape[1]
    frame = pd.DataFrame(
        {
            "user_id": np.repeat(np.array(art.users.ids, dtype=object)[rows], n)
            if len(rows)
            else np.array([], dtype=object),
            "item_idx": items.reshape(-1),
            "rank": np.tile(np.arange(1, n + 1), len(rows)),
            "score": scores.reshape(-1).astype(np.float64),
        }
    )
    frame = frame[frame["item_idx"] >= 0]
    frame.insert(1, "item_id", np.array(art.items.ids, dtype=object)[frame["item_idx"].to_numpy()])
    frame["source"] = "model"
    return frame.drop(columns="item_idx").reset_index(drop=True)


def cold_start_rows(settings: Settings, art: Artifact, users: list[str], k: int) -> pd.DataFrame:
    """The cold-start top-``k`` (as of the model's date) for each of ``users``: ``user_id,
    item_id, rank, score, source`` (``source`` = ``cold_start``)."""
    counts = np.asarray((art.seen > 0).sum(axis=0)).ravel()
    cold = cold_start_items(settings, k, art.date, fallback=(art.items.ids, counts))
    n = len(cold.item_ids)
    log.info(
        "%d user id(s) unknown to %s: cold start (%d items, basis %s)",
        len(users),
        art.meta.get("version"),
        n,
        cold.basis,
    )
    return pd.DataFrame(
        {
            "user_id": np.repeat(np.array(users, dtype=object), n),
            "item_id": np.tile(np.array(cold.item_ids, dtype=object), len(users)),
            "rank": np.tile(np.arange(1, n + 1), len(users)),
            "score": np.tile(cold.scores, len(users)),
            "source": "cold_start",
        }
    )


def predict_pairs(
    settings: Settings, name: str, pairs: pd.DataFrame, date: str | None = None
) -> pd.DataFrame:
    """Scores for ``pairs`` (columns ``user_id``, ``item_id``): adds ``score`` (NaN where an id is
    unknown to the model) and ``known``."""
    for col in ("user_id", "item_id"):
        if col not in pairs.columns:
            raise ValueError(
                f"pairs need columns user_id and item_id; missing {col!r} (have {list(pairs.columns)})"
            )
    art = load_artifact(settings, name, date)
    u = art.users.encode(pairs["user_id"].astype(str))
    i = art.items.encode(pairs["item_id"].astype(str))
    known = (u >= 0) & (i >= 0)
    scores = np.full(len(pairs), np.nan, dtype=np.float64)
    if known.any():
        scores[known] = art.model.score(u[known], i[known])
    out = pairs[["user_id", "item_id"]].copy()
    out["score"] = scores
    out["known"] = known
    if (~known).any():
        log.warning(
            "%d of %d pairs name an id unknown to %s: score left empty",
            int((~known).sum()),
            len(pairs),
            art.meta.get("version"),
        )
    return out
