"""The ranker stage for a logical date: training data from the logs, point-in-time features
through Feast, the DLRM ranker and its logistic-regression baseline, forward evaluation, and
scoring pairs from the online store.

- **Training** (``train_for_date``): impressions of the validated days ``[D-window+1, D]``,
  labelled by ``pipelines.ranking.data.label_impressions`` (clicked in that request → 1, shown and not
  clicked → 0), plus sampled negatives (default mix 70% uniform + 30% hard: the two-tower model's
  top candidates for the user that the user did not engage with), joined point in time with the
  ``ranker_v1`` feature service (``pipelines.features.store.training_frame``). Saves
  ``artifacts/models/ranker/date=D/`` (the ``dlrm`` Ranker: weights, normalization statistics,
  vocabularies, feature list and feature service) and ``ranker_lr`` (the baseline).
- **Forward evaluation** (``evaluate_forward``): the rankers trained through D−1 scored on D's
  impressions (AUC, logloss, calibration/ECE, NDCG@10 lift over the two-tower retrieval order;
  on simulated data also Spearman against the true click probability) → ``reports/ranker/``.
- **Scoring** (``predict_pairs``): user–item pairs scored from the online features in Redis.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core import schema
from pipelines.core.settings import Settings

log = logging.getLogger(__name__)

SERVICE = "ranker_v1"
WINDOW_DAYS = 7
HARD_CANDIDATES = 50
MODEL_NAMES = ("ranker", "ranker_lr")


def feature_columns(settings: Settings) -> tuple[list[str], list[str]]:
    """``(dense, sparse)`` feature names of the ranker's feature service."""
    from pipelines.features.store import service_features
    from pipelines.features.tables import FEATURE_TYPES

    names = [n for cols in service_features(settings, SERVICE).values() for n in cols]
    dense = [n for n in names if FEATURE_TYPES[n] != "string"]
    sparse = [n for n in names if FEATURE_TYPES[n] == "string"]
    return dense, sparse


def labelled_impressions(settings: Settings, first: dt.date, last: dt.date) -> pd.DataFrame:
    """Labelled impressions of the validated days in ``[first, last]`` (empty if none)."""
    from pipelines.ranking.data import label_impressions

    frames = [
        schema.read_partition(settings.validated_dir, d)
        for d in schema.partition_dates(settings.validated_dir)
        if first <= d <= last
    ]
    if not frames:
        return pd.DataFrame()
    events = pd.concat(frames, ignore_index=True)
    if not (events["event"] == "impression").any():
        return pd.DataFrame()
    return label_impressions(events)


def _hard_candidates(
    settings: Settings, date: dt.date, users: list[str]
) -> dict[str, list[str]] | None:
    """Top two-tower candidates per user from the model trained through ``date`` (None if absent)."""
    from pipelines.retrieval.train import recommend

    try:
        recs = recommend(settings, "two_tower", HARD_CANDIDATES, users, date.isoformat())
    except FileNotFoundError:
        return None
    return recs.groupby("user_id")["item_id"].apply(list).to_dict()


def train_for_date(
    settings: Settings, date: str | dt.date, window_days: int = WINDOW_DAYS, epochs: int = 3
) -> dict[str, Any]:
    """Train the DLRM ranker and the LR baseline on the window ending at ``date``; save both."""
    from pipelines.features.store import training_frame
    from pipelines.ranking.data import fit_logistic_regression, sample_negatives, train_ranker

    day = schema.parse_date(date)
    labelled = labelled_impressions(settings, day - dt.timedelta(days=window_days - 1), day)
    if labelled.empty or labelled["label"].nunique() < 2:
        raise ValueError(
            f"no impressions with both clicks and non-clicks in the {window_days} days up to {day}: nothing to train a ranker on"
        )
    items = labelled["item_id"].astype(str)
    popularity = items.value_counts()
    hard = _hard_candidates(settings, day, sorted(labelled["user_id"].astype(str).unique()))
    mix = (
        {"uniform": 0.7, "popularity": 0.0, "hard": 0.3}
        if hard
        else {"uniform": 1.0, "popularity": 0.0, "hard": 0.0}
    )
    rows = sample_negatives(
        labelled,
        popularity.index.to_numpy(),
        popularity.to_numpy(),
        hard,
        mix=mix,
        ratio=1.0,
        seed=settings.seed,
    )
    frame = training_frame(settings, rows, SERVICE)
    dense, sparse = feature_columns(settings)
    summary: dict[str, Any] = {
        "date": day.isoformat(),
        "rows": len(frame),
        "positives": int(frame["label"].sum()),
        "negative_mix": mix,
    }
    for name, fit in (("ranker", train_ranker), ("ranker_lr", fit_logistic_regression)):
        params = {"epochs": epochs, "seed": settings.seed}
        model = (
            fit(frame, dense, sparse, **params)
            if name == "ranker_lr"
            else fit(frame, dense, sparse, feature_service=SERVICE, **params)
        )
        meta = {
            "model": name,
            "version": f"{name}-{day.isoformat()}",
            "trained_through": day.isoformat(),
            "feature_service": SERVICE,
            "window_days": window_days,
            **{k: v for k, v in summary.items() if k != "date"},
        }

        def build(tmp: Path, model=model, meta=meta) -> None:
            model.save(tmp / "model")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))

        schema.publish_dir(
            build, settings.artifacts_dir / "models" / name / f"date={day.isoformat()}"
        )
    log.info("ranker trained through %s: %s", day, summary)
    return summary


def load_ranker(settings: Settings, name: str = "ranker", date: str | dt.date | None = None):
    """The saved ranker ``name`` trained through ``date`` (default: the newest)."""
    from models.base import load_model
    from pipelines.retrieval.train import latest_date

    day = schema.parse_date(date) if date else latest_date(settings, name)
    folder = settings.artifacts_dir / "models" / name / f"date={day.isoformat()}" if day else None
    if folder is None or not folder.exists():
        raise FileNotFoundError(
            f"no trained {name!r} under {settings.artifacts_dir / 'models' / name}"
            + (f" for {day}" if day else "")
        )
    return load_model(folder / "model")


def evaluate_forward(settings: Settings, date: str | dt.date) -> dict[str, Any]:
    """Rankers trained through D−1 scored on D's impressions; writes ``reports/ranker/date=D.json``."""
    from pipelines.features.store import training_frame
    from pipelines.ranking.data import evaluate_ranker, evaluate_scores
    from pipelines.retrieval.train import predict_pairs

    day = schema.parse_date(date)
    prev = day - dt.timedelta(days=1)
    out: dict[str, Any] = {"date": day.isoformat(), "trained_through": prev.isoformat()}
    test = labelled_impressions(settings, day, day)
    try:
        rankers = {name: load_ranker(settings, name, prev) for name in MODEL_NAMES}
    except FileNotFoundError:
        rankers = {}
    if not rankers or test.empty:
        out["note"] = (
            f"no ranker trained through {prev} or no impressions on {day}: nothing to evaluate yet"
        )
    else:
        frame = training_frame(settings, test, SERVICE)
        try:
            frame["retrieval_score"] = predict_pairs(
                settings, "two_tower", frame[["user_id", "item_id"]], prev.isoformat()
            )["score"].to_numpy()
        except FileNotFoundError:
            frame["retrieval_score"] = np.nan
        truth = _true_click_prob(settings, frame)
        out["metrics"] = {
            name: evaluate_ranker(
                r, frame, retrieval_score_col="retrieval_score", true_prob_col=truth
            )
            for name, r in rankers.items()
        }
        retrieval = (
            frame["retrieval_score"].fillna(frame["retrieval_score"].min()).fillna(0.0).to_numpy()
        )
        out["metrics"]["retrieval_only"] = evaluate_scores(
            frame, retrieval, true_prob_col=truth, probabilities=False
        )
        log.info(
            "ranker forward evaluation on %s: %s",
            day,
            {
                n: {k: m.get(k) for k in ("auc", "logloss", "ndcg_lift")}
                for n, m in out["metrics"].items()
            },
        )
    target = settings.reports_dir / "ranker" / f"date={day.isoformat()}.json"
    schema.write_json_atomic(json.loads(json.dumps(out, default=_plain)), target)
    return json.loads(target.read_text())


def ranker_auc(settings: Settings, folder: Path | str, date: str | dt.date) -> float | None:
    """AUC of the ranker saved in ``folder`` (its ``model/``) on D's labelled impressions: the
    gate's champion number, on the same test day as the candidate's. ``None`` without impressions.
    """
    from models.base import load_model
    from pipelines.features.store import training_frame
    from pipelines.ranking.data import evaluate_ranker

    day = schema.parse_date(date)
    test = labelled_impressions(settings, day, day)
    if test.empty:
        return None
    ranker = load_model(Path(folder) / "model")
    auc = evaluate_ranker(ranker, training_frame(settings, test, SERVICE)).get("auc")
    return None if auc is None else float(auc)


def _plain(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, pd.DataFrame):
        return obj.to_dict(orient="records")
    return str(obj)


def _true_click_prob(settings: Settings, frame: pd.DataFrame) -> str | None:
    """On simulated data, attach the true click probability of each logged impression (by
    event_id) as column ``true_prob``; returns its name, or None when there is no truth."""
    from pipelines.data.simulate import truth_impressions_dir

    folder = truth_impressions_dir(settings)
    if "event_id" not in frame.columns or not folder.exists():
        return None
    days = pd.to_datetime(frame["event_timestamp"], utc=True).dt.date.unique()
    parts = [
        schema.read_partition(folder, d) for d in days if schema.partition_dir(folder, d).exists()
    ]
    if not parts:
        return None
    truth = pd.concat(parts, ignore_index=True)
    col = "true_click_prob" if "true_click_prob" in truth.columns else None
    if col is None:
        return None
    frame["true_prob"] = frame["event_id"].map(truth.set_index("event_id")[col])
    return "true_prob" if frame["true_prob"].notna().any() else None


def predict_pairs(
    settings: Settings,
    pairs: pd.DataFrame,
    name: str = "ranker",
    date: str | None = None,
    fast: bool = True,
) -> pd.DataFrame:
    """Click probabilities for ``pairs`` (``user_id``, ``item_id``) from the online features in
    Redis: adds ``score``, ``user_missing`` and ``item_missing`` (defaults were used)."""
    from pipelines.features.store import online_features, online_features_fast

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
    out = pairs[["user_id", "item_id"]].copy()
    out["score"] = ranker.predict_proba(frame).astype(np.float64)
    out["user_missing"] = frame["user_missing"].to_numpy()
    out["item_missing"] = frame["item_missing"].to_numpy()
    return out
