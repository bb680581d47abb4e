"""The daily DAG's task bodies: one plain function per task, each taking the logical date.

``dags/recloop_daily.py`` calls exactly one of these per task; each reads its settings from the
environment, makes one call into the stage module of the task's name (the task → module table is
in ``dags/recloop_daily.py``), logs what happened and returns a small JSON-able summary (Airflow
stores it as the task's XCom). They are also what ``recloop`` calls outside Airflow.

The retraining tasks (train_*, build_index, evaluate, train_ranker, evaluate_ranker, register,
gate, fit_linucb) take the run's ``params``: a ``train_from_date`` later than the logical date
skips them (:func:`skip_before_train_from`), so a catchup over a range retrains only at its end, and
``skip_training`` skips them in any run. ``features`` takes ``force_materialize``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from pipelines.core.settings import Settings

log = logging.getLogger("recloop.tasks")


def _settings() -> Settings:
    s = Settings.from_env()
    s.ensure_dirs()
    return s


def _jsonable(obj: Any) -> Any:
    """Plain JSON types only (Airflow stores task results as XCom JSON)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


TRAIN_FROM_PARAM = "train_from_date"
"""The daily DAG's param (``dag_defaults.dag_params``) that skips training on earlier dates."""
SKIP_TRAINING_PARAM = "skip_training"
"""The daily DAG's param that skips training in any run (validate, stats, features only)."""
FORCE_MATERIALIZE_PARAM = "force_materialize"
"""The daily DAG's param that materializes the day even when Redis holds a newer day."""


def flag_param(params: Mapping[str, Any] | None, name: str) -> bool:
    """The boolean DAG param ``name`` (absent: False); the strings ``true``/``false``/``1``/``0``
    of a ``--conf`` are read as such, anything else is a ``ValueError`` naming the param."""
    raw = (params or {}).get(name, False)
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "", "none"):
        return False
    raise ValueError(f"DAG param {name}={raw!r} is not a boolean")


def skip_before_train_from(ds: str, params: Mapping[str, Any] | None) -> None:
    """Skip (``AirflowSkipException``) a train/index/evaluate/register/gate task of logical date
    ``ds`` when the run's ``skip_training`` param is on, or its ``train_from_date`` param is a
    later date: a backfill or catchup over a range then validates and featurizes every day but
    retrains only from that date on. Unset, None (an empty trigger-form field) or empty (the
    default): nothing is skipped.
    ``ValueError`` naming the param when it is not a date (a boolean)."""
    if flag_param(params, SKIP_TRAINING_PARAM):
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(f"{SKIP_TRAINING_PARAM} is on: {ds} is not retrained")
    raw = (params or {}).get(TRAIN_FROM_PARAM) or ""
    if not raw:
        return
    from pipelines.core.schema import parse_date

    try:
        train_from = parse_date(str(raw))
    except ValueError as exc:
        raise ValueError(f"DAG param {TRAIN_FROM_PARAM}={raw!r} is not a YYYY-MM-DD date") from exc
    if parse_date(ds) < train_from:
        from airflow.sdk.exceptions import AirflowSkipException

        raise AirflowSkipException(f"{ds} is before {TRAIN_FROM_PARAM}={train_from}: not retrained")


def validate(ds: str) -> dict[str, Any]:
    """Validation gate for day ``ds``. A partition-level failure fails the task without retries
    (the data will not fix itself); anything else (I/O, a bug) is retried by Airflow."""
    from pipelines.data.validate import ValidationError, validate_partition

    try:
        result = validate_partition(_settings(), ds)
    except ValidationError as exc:
        from airflow.sdk.exceptions import AirflowFailException

        log.error("validation failed for %s: %s", ds, exc)
        raise AirflowFailException(str(exc)) from exc
    summary = dataclasses.asdict(result)
    log.info("validation of %s: %s", ds, summary)
    return _jsonable(summary)


def stats(ds: str) -> dict[str, Any]:
    """Counts, CTR by position and new users/items of the validated day ``ds``."""
    from pipelines.data.stats import daily_stats, format_stats

    out = daily_stats(_settings(), ds)
    log.info("%s", format_stats(out))
    return out


def compute_features(ds: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Feature tables for day ``ds`` (DuckDB, or Spark with ``RECLOOP_FEATURE_ENGINE=spark``;
    the log names it) and ``feast apply``; nothing written to Redis (the daily DAG materializes
    after its gate, :func:`materialize`)."""
    from pipelines.features.store import apply_repo
    from pipelines.features.tables import compute_features as compute

    s = _settings()
    computed = compute(s, ds)
    apply_repo(s)
    log.info("features for %s: %s", ds, computed)
    return {"computed": _jsonable(computed)}


def materialize(ds: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Materialize D's feature window into Redis (skipped when Redis holds a newer day, unless
    the ``force_materialize`` param is on); D's tables must exist. The daily DAG runs it after
    the gate and before ``register``: the gate replays bundles on D's logs, and those replays
    must read the online features the service read on D (D-1's), not D's own — with D's, a
    bundle's evaluation on the day it served disagreed with its own logs (demo day 10: ESS 742
    of 15,000, SNIPS 0.0955 for a true 0.0656; with D-1's: ESS 14,743, 0.0634). Then the users'
    online recent-item sequences of D (:func:`pipelines.features.sequences.rebuild`; skipped
    with the materialization). Redis unreachable → a clear error naming the URL; Airflow
    retries the task."""
    from pipelines.features.store import materialize_date

    force = flag_param(params, FORCE_MATERIALIZE_PARAM)
    from pipelines.features.sequences import rebuild

    settings = _settings()
    materialized = materialize_date(settings, ds, force=force)
    log.info("materialized %s: %s", ds, materialized)
    # the users' online recent-item sequences (serving's seen items and covisit history)
    seqs = {"skipped": True} if materialized.get("skipped") else rebuild(settings, ds)
    return {"materialized": _jsonable(materialized), "sequences": _jsonable(seqs)}


def features(ds: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """:func:`compute_features` then :func:`materialize`: D's tables and D in Redis (backfill,
    ``recloop features``, one-off runs)."""
    return {**compute_features(ds, params), **materialize(ds, params)}


def fit_linucb(ds: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Fit the LinUCB explorer's state from the validated logs of the week up to ``ds`` into
    ``serving/linucb/state.npz``, which the service reloads when it changes; with the service's
    ``RECLOOP_SERVE_*`` settings (λ, prior). A logged no-op when ``RECLOOP_SERVE_EXPLORER`` is not
    ``linucb``, when there is no feedback, or when the saved state is newer than ``ds``."""
    skip_before_train_from(ds, params)
    from pipelines.release.linucb_fit import daily_fit
    from serving.config import ServingConfig

    cfg = ServingConfig.from_env()
    return _jsonable(daily_fit(_settings(), ds, cfg.explorer, cfg.linucb_lambda, cfg.explore_prior))


def train_model(ds: str, name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train retrieval model ``name`` (mf, two_tower, popular, itemknn, userknn) through ``ds``."""
    skip_before_train_from(ds, params)
    from pipelines.core.distributed import DDP_MODELS, train_in_processes
    from pipelines.retrieval.train import train

    settings = _settings()
    if name in DDP_MODELS and settings.train_nproc > 1:  # RECLOOP_TRAIN_NPROC: DDP
        return _jsonable(train_in_processes(settings, name, ds))
    return _jsonable(train(settings, name, ds))


def train_extra(ds: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train the retrievers named by ``RECLOOP_TRAIN_EXTRA`` through ``ds`` (default none: a
    logged no-op), each then a candidate source of the bundles of ``ds``
    (:data:`serving.sources.MODEL_SOURCES`). An unknown name: ``ValueError`` naming the setting."""
    skip_before_train_from(ds, params)
    from pipelines.retrieval.train import MODELS

    names = _settings().train_extra
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ValueError(f"RECLOOP_TRAIN_EXTRA: unknown model(s) {unknown}; known: {MODELS}")
    if not names:
        log.info("train_extra %s: RECLOOP_TRAIN_EXTRA is empty, nothing to train", ds)
    return {name: train_model(ds, name, params) for name in names}


def build_index(ds: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """FAISS index over the two-tower item embeddings trained through ``ds``, recall-checked."""
    skip_before_train_from(ds, params)
    from pipelines.retrieval.index import build_item_index

    return _jsonable(build_item_index(_settings(), ds))


def evaluate(ds: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Forward evaluation: yesterday's models on today's positives, beside the baselines."""
    skip_before_train_from(ds, params)
    from pipelines.retrieval.evaluate import evaluate_forward

    return _jsonable(evaluate_forward(_settings(), ds))


def train_ranker(ds: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """DLRM ranker (+ LR baseline) on the labelled impressions of the week up to ``ds``."""
    skip_before_train_from(ds, params)
    from pipelines.core.distributed import train_in_processes
    from pipelines.ranking.train import train_for_date

    settings = _settings()
    if settings.train_nproc > 1:  # RECLOOP_TRAIN_NPROC: data-parallel (DDP) processes
        return _jsonable(train_in_processes(settings, "ranker", ds))
    return _jsonable(train_for_date(settings, ds))


def evaluate_ranker(ds: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Forward evaluation of the rankers trained through yesterday on today's impressions."""
    skip_before_train_from(ds, params)
    from pipelines.ranking.evaluate import evaluate_forward

    out = evaluate_forward(_settings(), ds)
    # the XCom keeps the AUCs; the full report is reports/ranker/date=D.json
    return _jsonable(
        {k: v for k, v in out.items() if k != "metrics"}
        | {"auc": {n: m.get("auc") for n, m in out.get("metrics", {}).items()}}
    )


def register(ds: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Track and register in MLflow what was trained through ``ds`` and the serving bundle pinning
    it, the ranker left out when the stage gate finds it does not lift the slate (a stage gate
    that fails is logged and keeps the ranker); idempotent: a rerun on the same data registers
    nothing new."""
    skip_before_train_from(ds, params)
    from pipelines.release.register import register_day

    return _jsonable(register_day(_settings(), ds))


def gate(ds: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Gate the newest bundle trained before ``ds`` on ``ds``'s numbers (offline metrics, ranker
    AUC, index recall, SNIPS of its policy on ``ds``'s logs); move the alias: a refresh of the
    champion's configuration replaces it, a change becomes the challenger."""
    skip_before_train_from(ds, params)
    from pipelines.release.gate import daily_gate

    return _jsonable(daily_gate(_settings(), ds))
