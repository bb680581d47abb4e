"""The ``train_ranker`` task: the ranker (the cross-feature regression or the DLRM) and its
logistic-regression baseline for a logical date.

:func:`train_for_date`: impressions of the validated days ``[D-window+1, D]``, labelled by
:func:`pipelines.ranking.data.label_impressions` (clicked in that request → 1, shown and not
clicked → 0), or on logs without impressions the engagement rows of
:func:`pipelines.ranking.data.label_positives` (clicks, purchases, ratings >=
``RECLOOP_RATING_POSITIVE``); plus sampled negatives (default mix 70% uniform + 30% hard: the
two-tower model's top candidates for the user that the user did not engage with), joined point in time with the
``ranker_v1`` feature service (``pipelines.features.store.training_frame``). Saves
``artifacts/models/ranker/date=D/`` (the ranker ``RECLOOP_RANKER`` names, :data:`RANKERS`,
default :data:`AUTO`: ``cross_lr`` (:mod:`models.cross_lr`) or the DLRM, whichever fits the
validation day better; weights, normalization statistics, vocabularies,
feature list and feature service) and ``ranker_lr`` (the baseline), fitted by :func:`fit_ranker` and
:func:`fit_logistic_regression`. IPS loss weights and the ``slot`` feature (position) reach every
kind the same way: through :func:`fit_model` and :func:`pipelines.ranking.data.feature_columns`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from models.cross_lr import CrossLRRanker
from models.dlrm import DLRMRanker
from models.wide_deep import WideDeepRanker
from pipelines.core import distributed, layout, schema
from pipelines.core.artifact_meta import write_artifact_meta
from pipelines.core.settings import Settings
from pipelines.ranking.data import (
    DEFAULT_IPS_CLIP,
    IMPRESSIONS_SOURCE,
    SERVICE,
    NotEnoughLabels,
    add_ranker_columns,
    feature_columns,
    ips_weights,
    training_rows,
)

log = logging.getLogger(__name__)

WINDOW_DAYS = 28
"""The default window (``Settings.ranker_window_days``, ``RECLOOP_RANKER_WINDOW_DAYS``)."""
MAX_EPOCHS = 8
"""Most epochs; early stopping on the validation day picks the best one."""
PATIENCE = 1
"""Epochs without a better validation logloss before training stops."""
RANKER_PARAMS: dict[str, Any] = {"min_count": 50}
"""Constructor parameters of the rankers trained by gradient steps (every kind but
:data:`PENALISED_KINDS`, and the ``ranker_lr`` baseline): an id (item) shown fewer than 50 times
in the window shares the out-of-vocabulary row (with 5 or 20 the rarest items' noisy embeddings
won the top of the slate: true CTR lift +2% / +17% against +24% on day 10,
``benchmarks/README.md``)."""
PENALISED_KINDS = frozenset({"cross_lr"})
"""Kinds whose L2 penalty shrinks rare ids instead: they keep their own ``min_count`` (every
item its weight; a cut at 50 left 160 of 2,000 items and cost 1.5 % of served true CTR)."""
USE_DENSE = False
"""Whether the rankers read the feature service's dense aggregates (counts, CTRs, ages...).
Off: they fit the validation day slightly better (logloss 0.1492 vs 0.1514) but the item counts
echo what the serving policy showed, and the slate's true CTR fell below the retrieval order's
(-6%); the sparse features (demographics, item id, categories, slot) lift it +24%. Logs without
impressions (ratings, imported histories: no serving feedback loop) always read them."""
#: the artifacts :func:`train_for_date` writes: the ranker and the logistic baseline
MODEL_NAMES = ("ranker", "ranker_lr")
RANKERS: dict[str, tuple[type[DLRMRanker], dict[str, Any]]] = {
    "dlrm_dot": (DLRMRanker, {"interaction": "dot"}),
    "dlrm_cross": (DLRMRanker, {"interaction": "cross"}),
    "dlrm_fm": (DLRMRanker, {"interaction": "fm"}),
    "deepfm": (DLRMRanker, {"interaction": "deepfm"}),
    "wide_deep": (WideDeepRanker, {}),
    "cross_lr": (CrossLRRanker, {}),
    "logistic": (DLRMRanker, {"interaction": "linear", "lr": 1e-2}),
}
"""``RECLOOP_RANKER`` (``Settings.ranker``, the same names in
:data:`pipelines.core.settings.RANKERS`, and :data:`AUTO`) → the class and its constructor
defaults."""
AUTO = "auto"
"""``RECLOOP_RANKER=auto`` (the default): train each of :data:`AUTO_KINDS` and keep the one with
the lower calibrated logloss on the validation day, the first unless the other is lower by more
than :data:`AUTO_MARGIN` (:func:`fit_daily_ranker`)."""
AUTO_KINDS = ("cross_lr", "dlrm_dot")
"""The kinds ``auto`` chooses between, the first kept when there is no validation day. Measured
(``benchmarks/README.md``, thirteenth session): on the simulator's impressions ``cross_lr`` fits
the validation day better (AUC 0.755-0.775 against 0.744-0.759) and serves 7-15 % more true CTR;
on MovieLens' ratings with sampled negatives the DLRM does (AUC 0.728 against 0.716; NDCG@10
0.4006 against 0.3840)."""


def ranker_params(name: str, kind: str) -> dict[str, Any]:
    """The daily path's extra constructor parameters of model ``name`` (``ranker`` of ``kind``,
    or the ``ranker_lr`` baseline): :data:`RANKER_PARAMS`, except for the ranker of a
    :data:`PENALISED_KINDS` kind, which keeps its own."""
    return {} if name == "ranker" and kind in PENALISED_KINDS else dict(RANKER_PARAMS)


def make_ranker(
    kind: str, dense: Sequence[str], sparse: Sequence[str], **params: Any
) -> DLRMRanker:
    """An unfitted ranker of ``kind`` (:data:`RANKERS`); ``params`` (``dim``, ``epochs``,
    ``feature_service``...) override the kind's defaults."""
    if kind not in RANKERS:
        raise ValueError(f"unknown ranker {kind!r}: expected one of {sorted(RANKERS)}")
    cls, defaults = RANKERS[kind]
    return cls(dense_features=dense, sparse_features=sparse, **{**defaults, **params})


def fit_model(
    model: DLRMRanker,
    train_frame: pd.DataFrame,
    ips: bool = False,
    label: str = "label",
    ips_clip: float = DEFAULT_IPS_CLIP,
    propensity_col: str = "propensity",
    valid_frame: pd.DataFrame | None = None,
) -> DLRMRanker:
    """Fit any ranker on ``train_frame`` (features + ``label``): the one training path.

    ``ips``: weight each row's loss by :func:`ips_weights` of ``propensity_col``."""
    weight = None
    if ips:
        if propensity_col not in train_frame.columns:
            raise ValueError(f"ips=True but the frame has no {propensity_col!r} column")
        train_frame = train_frame.assign(
            _ips_weight=ips_weights(train_frame[propensity_col], ips_clip)
        )
        weight = "_ips_weight"
    return model.fit(train_frame, label=label, weight=weight, valid_frame=valid_frame)


def fit_ranker(
    train_frame: pd.DataFrame,
    dense: Sequence[str],
    sparse: Sequence[str],
    kind: str = "dlrm_dot",
    ips: bool = False,
    label: str = "label",
    valid_frame: pd.DataFrame | None = None,
    **params: Any,
) -> DLRMRanker:
    """Fit the ranker ``kind`` (:data:`RANKERS`) through :func:`fit_model`; ``params`` go to
    its constructor (``dim``, ``epochs``, ``seed``, ``feature_service`` ...)."""
    model = make_ranker(kind, dense, sparse, **params)
    return fit_model(model, train_frame, ips=ips, label=label, valid_frame=valid_frame)


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
    return fit_model(ranker, train_frame, ips, label, ips_clip, propensity_col, valid_frame)


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


def split_validation_day(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """``(train, valid)``: the rows of the window's last UTC day (by ``event_timestamp``) held out
    as the validation day, when the window has at least two days and that day holds clicks and
    non-clicks; else ``(frame, None)``."""
    days = pd.to_datetime(frame["event_timestamp"], utc=True).dt.date
    last = days.max()
    valid = frame[days == last]
    if days.nunique() < 2 or valid["label"].nunique() < 2:
        return frame, None
    return frame[days != last].reset_index(drop=True), valid.reset_index(drop=True)


def validation_metrics(model: DLRMRanker, valid: pd.DataFrame) -> dict[str, Any]:
    """The (calibrated) ranker on the validation rows: ``auc``, ``logloss``, ``ece``,
    ``mean_pred``, ``observed_ctr``, ``calibration_error`` (``|mean_pred - observed_ctr|``)."""
    from pipelines.ranking.evaluate import evaluate_scores

    m = evaluate_scores(valid, model.predict_proba(valid), request_col="_none")
    keys = ("rows", "positives", "auc", "logloss", "ece", "mean_pred", "observed_ctr")
    out = {k: m[k] for k in keys}
    out["calibration_error"] = abs(m["mean_pred"] - m["observed_ctr"])
    return out


def fit_calibrated(
    name: str,
    train: pd.DataFrame,
    valid: pd.DataFrame | None,
    dense: Sequence[str],
    sparse: Sequence[str],
    ips: bool,
    kind: str = "dlrm_dot",
    **params: Any,
) -> tuple[DLRMRanker, dict[str, Any]]:
    """Fit ranker ``name`` (``ranker``: the ``kind`` of :data:`RANKERS`; ``ranker_lr``: the
    logistic baseline) on ``train`` with early stopping on ``valid``, then Platt-calibrate it on
    ``valid`` (:meth:`DLRMRanker.calibrate`). Returns the model and its validation record
    (:func:`validation_metrics`, best epoch, calibration); ``{}`` without a validation day."""
    use_ips = ips and train["propensity"].notna().any()
    if name == "ranker":
        model = fit_ranker(
            train, dense, sparse, kind, ips=use_ips, valid_frame=valid, feature_service=SERVICE,
            **params,
        )  # fmt: skip
    else:
        model = fit_logistic_regression(
            train, dense, sparse, ips=use_ips, valid_frame=valid, **params
        )
    if valid is None:
        return model, {}
    losses = [h.get("valid_logloss", float("inf")) for h in model.history]
    record: dict[str, Any] = {"best_epoch": int(min(range(len(losses)), key=losses.__getitem__))}
    record["epochs_run"] = len(losses)
    record["calibration"] = model.calibrate(valid)
    record["valid"] = validation_metrics(model, valid)
    return model, record


AUTO_MARGIN = 0.005
"""``auto`` keeps a later kind of :data:`AUTO_KINDS` only when its validation logloss is lower
than the first's by more than this share. Near-ties are common on the first days (day 2 of a
demo: 0.09465 against 0.09463), and each switch of kind is a configuration *change* that waits
for an A/B test instead of refreshing the champion; the measured gaps that mattered were 0.9 %
(simulator, for ``cross_lr``) and 1.2 % (MovieLens, for the DLRM)."""


def fit_daily_ranker(
    name: str,
    train: pd.DataFrame,
    valid: pd.DataFrame | None,
    dense: Sequence[str],
    sparse: Sequence[str],
    ips: bool,
    kind: str,
    **params: Any,
) -> tuple[DLRMRanker, dict[str, Any]]:
    """The daily path's model ``name``: :func:`fit_calibrated` with :func:`ranker_params`. For
    the ``ranker`` of kind :data:`AUTO` each of :data:`AUTO_KINDS` is fitted and the first kept
    unless another's calibrated validation logloss is lower by more than :data:`AUTO_MARGIN`
    (then the lowest of those); its record then also has ``kind`` (the one kept) and ``kinds``
    (each one's validation metrics)."""
    kinds = AUTO_KINDS if name == "ranker" and kind == AUTO else (kind,)
    fits = {
        k: fit_calibrated(
            name, train, valid, dense, sparse, ips, k, **params, **ranker_params(name, k)
        )
        for k in kinds
    }
    if len(kinds) == 1:
        return fits[kind]

    def valid_logloss(k: str) -> float:
        return float(fits[k][1].get("valid", {}).get("logloss", float("inf")))

    chosen = kinds[0]  # no validation day, or no other kind better by the margin: the first
    for k in kinds[1:]:
        if valid_logloss(k) < valid_logloss(chosen) * (1.0 - AUTO_MARGIN):
            chosen = k
    model, record = fits[chosen]
    scores = {k: fits[k][1].get("valid", {}) for k in kinds}
    log.info("ranker kind %s kept of %s (validation logloss %s)", chosen, list(kinds),
             {k: round(valid_logloss(k), 5) for k in kinds})  # fmt: skip
    return model, {**record, "kind": chosen, "kinds": scores}


def train_for_date(
    settings: Settings,
    date: str | dt.date,
    window_days: int | None = None,
    epochs: int = MAX_EPOCHS,
    ips: bool | None = None,
    negatives_per_click: float = 0.0,
) -> dict[str, Any]:
    """Train the ranker (``settings.ranker``, ``RECLOOP_RANKER``: :data:`RANKERS`, or the
    default :data:`AUTO`, :func:`fit_daily_ranker`) and the LR baseline on the window ending at
    ``date``; save both.

    ``window_days`` (default ``settings.ranker_window_days``): labelled impressions of that many
    validated days ending at ``date``, no sampled negatives unless ``negatives_per_click`` > 0;
    features of the ``ranker_v1`` service joined point in time plus :data:`ID_FEATURES
    <pipelines.ranking.data.ID_FEATURES>` (item id, age band, slot). The window's last day is
    held out: early stopping (at most ``epochs``, :data:`PATIENCE`) and Platt calibration on it
    (:func:`fit_calibrated`); its metrics go into each model's ``meta.json`` (``validation``).
    ``ips``: loss weights from the logged propensities (:func:`ips_weights`); None:
    ``settings.ranker_ips`` (``RECLOOP_RANKER_IPS``; off by default: measured worse in ``benchmarks/README.md``).

    Returns a JSON-able summary: ``trained`` (bool), ``label_source`` (``impressions`` or
    ``positives+sampled negatives``, :func:`pipelines.ranking.data.window_labels`), ``rows``,
    ``positives``, ``negative_mix``, ``validation``. When the window cannot train a ranker (no
    usable impressions and too few positives) nothing is written and the summary says
    ``{"trained": False, "reason": ...}``: the day's bundle is registered without a ranker
    and serves in retrieval order."""
    from pipelines.features.store import training_frame

    day = schema.parse_date(date)
    window_days = window_days or settings.ranker_window_days
    ips = settings.ranker_ips if ips is None else ips
    try:
        rows, mix, source = training_rows(
            settings, day, window_days, negatives_per_click=negatives_per_click
        )
    except NotEnoughLabels as exc:
        log.warning("no ranker trained through %s: %s", day, exc)
        return {"date": day.isoformat(), "trained": False, "reason": str(exc)}
    joined = training_frame(settings, rows, SERVICE)
    frame = add_ranker_columns(joined)
    train, valid = split_validation_day(frame)
    dense, sparse = feature_columns(settings)
    dense = dense if USE_DENSE or source != IMPRESSIONS_SOURCE else []
    summary: dict[str, Any] = {
        "date": day.isoformat(),
        "trained": True,
        "label_source": source,
        "rows": len(frame),
        "positives": int(frame["label"].sum()),
        "negative_mix": mix,
        "ips": bool(ips),
        "offline_store": joined.attrs.get("offline_store"),
        "validation_rows": 0 if valid is None else len(valid),
    }
    params = {"epochs": epochs, "seed": settings.seed, "patience": PATIENCE}
    for name in MODEL_NAMES:
        model, record = fit_daily_ranker(
            name, train, valid, dense, sparse, ips, settings.ranker, **params
        )
        meta = {
            "model": name,
            "version": f"{name}-{day.isoformat()}",
            "trained_through": day.isoformat(),
            "feature_service": SERVICE,
            "window_days": window_days,
            **{k: v for k, v in summary.items() if k not in ("date", "trained")},
            "validation": record,
        }
        summary.setdefault("validation", {})[name] = record.get("valid", {})
        if name == "ranker":
            summary["ranker_kind"] = record.get("kind", settings.ranker)
        if distributed.is_main():  # data-parallel training: rank 0 writes the artifact
            save_ranker(settings, name, model, meta)
    log.info("ranker trained through %s: %s", day, summary)
    return summary
