"""The ``train_ranker`` task: the DLRM ranker and its logistic-regression baseline for a
logical date.

:func:`train_for_date`: impressions of the validated days ``[D-window+1, D]``, labelled by
:func:`pipelines.ranking.data.label_impressions` (clicked in that request → 1, shown and not
clicked → 0), or on logs without impressions the engagement rows of
:func:`pipelines.ranking.data.label_positives` (clicks, purchases, ratings >=
``RECLOOP_RATING_POSITIVE``); plus sampled negatives (default mix 70% uniform + 30% hard: the
two-tower model's top candidates for the user that the user did not engage with), joined point in time with the
``ranker_v1`` feature service (``pipelines.features.store.training_frame``). Saves
``artifacts/models/ranker/date=D/`` (the ``dlrm`` ranker: weights, normalization statistics,
vocabularies, feature list and feature service) and ``ranker_lr`` (the baseline), fitted by
:func:`fit_dlrm` and :func:`fit_logistic_regression`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from models.dlrm import DLRMRanker
from pipelines.core import layout, schema
from pipelines.core.artifact_meta import write_artifact_meta
from pipelines.core.settings import Settings
from pipelines.ranking.data import (
    DEFAULT_IPS_CLIP,
    SERVICE,
    NotEnoughLabels,
    feature_columns,
    ips_weights,
    training_rows,
)

log = logging.getLogger(__name__)

WINDOW_DAYS = 7
#: the artifacts :func:`train_for_date` writes: the DLRM ranker and the logistic baseline
MODEL_NAMES = ("ranker", "ranker_lr")


def fit_dlrm(
    train_frame: pd.DataFrame,
    dense: Sequence[str],
    sparse: Sequence[str],
    interaction: str = "dot",
    ips: bool = False,
    label: str = "label",
    ips_clip: float = DEFAULT_IPS_CLIP,
    propensity_col: str = "propensity",
    feature_service: str = "",
    valid_frame: pd.DataFrame | None = None,
    **params: Any,
) -> DLRMRanker:
    """Fit a :class:`models.dlrm.DLRMRanker` on ``train_frame`` (features + ``label``).

    ``ips``: weight each row's loss by :func:`ips_weights` of ``propensity_col``. ``params`` go to
    the ``DLRMRanker`` constructor (``dim``, ``epochs``, ``lr``, ``seed``, ``hash_features`` ...).
    """
    ranker = DLRMRanker(
        dense_features=dense,
        sparse_features=sparse,
        interaction=interaction,
        feature_service=feature_service,
        **params,
    )
    weight = None
    if ips:
        if propensity_col not in train_frame.columns:
            raise ValueError(f"ips=True but the frame has no {propensity_col!r} column")
        train_frame = train_frame.assign(
            _ips_weight=ips_weights(train_frame[propensity_col], ips_clip)
        )
        weight = "_ips_weight"
    return ranker.fit(train_frame, label=label, weight=weight, valid_frame=valid_frame)


def fit_logistic_regression(
    train_frame: pd.DataFrame,
    dense: Sequence[str],
    sparse: Sequence[str],
    ips: bool = False,
    label: str = "label",
    **params: Any,
) -> DLRMRanker:
    """The baseline: logistic regression (``interaction="linear"``) on the same normalized dense
    features and one weight per category bucket (one-hot, hashed for large vocabularies)."""
    params.setdefault("lr", 1e-2)
    return fit_dlrm(
        train_frame, dense, sparse, interaction="linear", ips=ips, label=label, **params
    )


def save_ranker(settings: Settings, name: str, model: DLRMRanker, meta: dict[str, Any]) -> Path:
    """Write ``model`` (``model/``) and ``meta`` (``meta.json``,
    :mod:`pipelines.core.artifact_meta`) to ``artifacts/models/<name>/date=D/``,
    D = ``meta["trained_through"]``, atomically (temporary folder, then rename)."""

    def build(tmp: Path) -> None:
        model.save(tmp / "model")
        write_artifact_meta(tmp, meta)

    return schema.publish_dir(build, layout.model_dir(settings, name, meta["trained_through"]))


def train_for_date(
    settings: Settings, date: str | dt.date, window_days: int = WINDOW_DAYS, epochs: int = 3
) -> dict[str, Any]:
    """Train the DLRM ranker and the LR baseline on the window ending at ``date``; save both.

    Returns a JSON-able summary: ``trained`` (bool), ``label_source`` (``impressions`` or
    ``positives+sampled negatives``, :func:`pipelines.ranking.data.window_labels`), ``rows``,
    ``positives``, ``negative_mix``. When the window cannot train a ranker (no usable
    impressions and too few positives) nothing is written and the summary says
    ``{"trained": False, "reason": ...}``: the day's bundle is registered without a ranker
    and serves in retrieval order."""
    from pipelines.features.store import training_frame

    day = schema.parse_date(date)
    try:
        rows, mix, source = training_rows(settings, day, window_days)
    except NotEnoughLabels as exc:
        log.warning("no ranker trained through %s: %s", day, exc)
        return {"date": day.isoformat(), "trained": False, "reason": str(exc)}
    frame = training_frame(settings, rows, SERVICE)
    dense, sparse = feature_columns(settings)
    summary: dict[str, Any] = {
        "date": day.isoformat(),
        "trained": True,
        "label_source": source,
        "rows": len(frame),
        "positives": int(frame["label"].sum()),
        "negative_mix": mix,
    }
    params = {"epochs": epochs, "seed": settings.seed}
    for name in MODEL_NAMES:
        model = (
            fit_dlrm(frame, dense, sparse, feature_service=SERVICE, **params)
            if name == "ranker"
            else fit_logistic_regression(frame, dense, sparse, **params)
        )
        meta = {
            "model": name,
            "version": f"{name}-{day.isoformat()}",
            "trained_through": day.isoformat(),
            "feature_service": SERVICE,
            "window_days": window_days,
            **{k: v for k, v in summary.items() if k not in ("date", "trained")},
        }
        save_ranker(settings, name, model, meta)
    log.info("ranker trained through %s: %s", day, summary)
    return summary
