"""Recommendations and pair scores from a saved retrieval artifact (``recloop recommend``,
``recloop predict``, the ranker's hard negatives and retrieval-order baseline)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from pipelines.core.settings import Settings
from pipelines.retrieval.train import load_artifact

log = logging.getLogger(__name__)


def recommend(
    settings: Settings,
    name: str,
    k: int,
    user_ids: list[str] | None = None,
    date: str | None = None,
) -> pd.DataFrame:
    """Top-``k`` unseen items for the listed users (default: every user the model knows).

    Returns ``user_id, item_id, rank, score`` (rank 1 = best). Unknown users are logged and
    skipped; ``popular`` gives them the popular list instead."""
    art = load_artifact(settings, name, date)
    ids = art.users.ids if user_ids is None else [str(u) for u in user_ids]
    rows = art.users.encode(ids)
    unknown = [u for u, r in zip(ids, rows, strict=True) if r < 0]
    if unknown:
        log.warning(
            "%d user id(s) unknown to %s (e.g. %s): skipped",
            len(unknown),
            art.meta.get("version"),
            unknown[:5],
        )
    known = rows[rows >= 0]
    items, scores = art.model.recommend(known, k, exclude=art.seen)
    n = items.shape[1]
    frame = pd.DataFrame(
        {
            "user_id": np.repeat(np.array(art.users.ids, dtype=object)[known], n)
            if len(known)
            else [],
            "item_idx": items.reshape(-1),
            "rank": np.tile(np.arange(1, n + 1), len(known)),
            "score": scores.reshape(-1),
        }
    )
    frame = frame[frame["item_idx"] >= 0]
    frame.insert(1, "item_id", np.array(art.items.ids, dtype=object)[frame["item_idx"].to_numpy()])
    return frame.drop(columns="item_idx").reset_index(drop=True)


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
