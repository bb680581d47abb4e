"""Scoring with a saved ranker: load it (:func:`load_ranker`) and score user–item pairs from the
online features in Redis (:func:`predict_pairs`, ``recloop predict --model ranker``)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from pipelines.core import layout, schema
from pipelines.core.settings import Settings
from pipelines.ranking.data import SERVICE, SERVING_POSITION, add_ranker_columns


def load_ranker(settings: Settings, name: str = "ranker", date: str | dt.date | None = None):
    """The saved ranker ``name`` trained through ``date`` (default: the newest)."""
    from models.base import load_model
    from pipelines.retrieval.train import latest_date

    day = schema.parse_date(date) if date else latest_date(settings, name)
    folder = layout.model_dir(settings, name, day) if day else None
    if folder is None or not folder.exists():
        raise FileNotFoundError(
            f"no trained {name!r} under {layout.models_dir(settings, name)}"
            + (f" for {day}" if day else "")
        )
    return load_model(folder / "model")


def predict_pairs(
    settings: Settings,
    pairs: pd.DataFrame,
    name: str = "ranker",
    date: str | None = None,
    fast: bool = True,
) -> pd.DataFrame:
    """Click probabilities for ``pairs`` (``user_id``, ``item_id``) from the online features in
    Redis: adds ``score``, ``user_missing`` and ``item_missing`` (defaults were used)."""
    from pipelines.features.online import online_features_fast
    from pipelines.features.store import online_features

    for col in ("user_id", "item_id"):
        if col not in pairs.columns:
            raise ValueError(f"pairs need columns user_id and item_id; missing {col!r}")
    ranker = load_ranker(settings, name, date)
    read = online_features_fast if fast else online_features
    frames = []
    for user, group in pairs.assign(_row=np.arange(len(pairs))).groupby(
        pairs["user_id"].astype(str), sort=False
    ):
        online = read(settings, user, group["item_id"].astype(str).tolist(), service=SERVICE)
        items = online.items.reset_index(drop=True)
        rows = items.assign(
            **{k: v for k, v in online.user.items()}, user_id=user, _row=group["_row"].to_numpy()
        )
        rows["user_missing"] = online.user_missing
        rows = rows.rename(columns={"missing": "item_missing"})
        frames.append(rows)
    frame = pd.concat(frames, ignore_index=True).sort_values("_row")
    frame["item_id"] = pairs["item_id"].astype(str).to_numpy()[frame["_row"].to_numpy()]
    frame = add_ranker_columns(frame, SERVING_POSITION)
    out = pairs[["user_id", "item_id"]].copy()
    out["score"] = ranker.predict_proba(frame).astype(np.float64)
    out["user_missing"] = frame["user_missing"].to_numpy()
    out["item_missing"] = frame["item_missing"].to_numpy()
    return out
