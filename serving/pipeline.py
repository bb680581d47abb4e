"""One recommendation request through the stages: route → retrieve → hydrate → rank → re-rank.

:func:`recommend` runs in a worker thread (the app hands it off the event loop) and returns the
response dict; every stage is timed (``timings_ms``) and has a fallback, so a request answers
(never raises) as long as a champion bundle is loaded:

- **route** (:mod:`serving.routing`): sticky A/B arm from ``sha256(salt:experiment:user_id)``.
- **retrieve** (:mod:`serving.retrieve`): the user's vector → FAISS top-``candidates`` with the
  user's seen items and excluded items removed; users outside the vocabulary through the bundle's
  user tower (opt-in) or **cold start** (trending, flagged ``cold_start``); index failure → the
  popularity order, flagged ``retrieve``. The user's online recent-item sequence (Redis, read
  overlapped with the searches; ``online_sequence``) joins the seen items and the ``covisit``
  history.
- **hydrate** (:mod:`serving.hydrate`): user + candidate features from Redis in a separate
  thread with ``hydrate_deadline_ms`` (capped by what is left of ``deadline_ms``). The user's row
  is read on every request; candidates' rows come from the process's
  :class:`~serving.item_cache.ItemFeatureCache` (item features change once a day, at
  materialization) and only its misses, and rows older than ``item_cache_ttl_s``, are read, in
  the same round trip as the user's row and the materialization marker (a new marker drops the
  cache). Redis down, slow or failing → a **popularity answer** (``degraded: true``, flagged
  ``redis``) and Redis is not asked again for ``redis_cooldown_s`` (a breaker: no retry storm;
  the abandoned read ends at the client's 1 s socket timeout); the cache never answers for a
  Redis that does not. Redis answering without the rows (the user's, or most candidates':
  :func:`serving.hydrate.features_degraded`) → ranked on defaults, ``degraded: true``, flagged
  ``features``. A cold-start answer reads nothing: the item table has what it needs.
- **rank** (:mod:`serving.rank`): the ranker scores all candidates in one batch; failure (or no
  ranker in the bundle) → the retrieval order and scores, flagged ``rank`` when it failed. The
  ranker's probabilities are tempered by the retrieval order
  (:func:`serving.rerank.retrieval_tempered`, ``w`` by :func:`serving.config.
  retrieval_weight_for`: the bundle's stage-gate choice unless the operator set one), or blended
  with the user tower's scores (:func:`serving.rerank.tower_blended`, ``w`` the operator's
  ``tower_weight``, off by default).
- **re-rank**: :mod:`serving.rerank` (fresh boost, category caps, exploration, propensities);
  the exploit list by category caps or by a :mod:`serving.diversify` re-ranker (``reranker``).
- **log**: the impressions logged, the shown items remembered for ``/feedback`` (and shared
  through Redis with the other worker processes, off the request path).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from serving import diversify, linucb, rerank, retrieve, shared
from serving.bundle import LoadedBundle
from serving.config import ServingConfig, retrieval_weight_for
from serving.engine import Engine
from serving.hydrate import Hydrated, hydrate
from serving.logging import impression_rows
from serving.rank import score_candidates
from serving.routing import route
from serving.sources import EXPLORE_ONLY

log = logging.getLogger("recloop.serving.pipeline")


class NoChampion(RuntimeError):
    """No champion bundle is loaded: nothing to route to (the app answers 503)."""


@dataclass
class Request:
    """A validated request: ``user_id`` (1..max chars), ``k`` in [1, k_max], context
    ``categories`` (steer cold start; never capped) and per-request ``exclude`` item ids."""

    user_id: str
    k: int
    categories: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


class _Timer:
    """Stage laps (ms, ``ms[stage]``) since the previous lap; ``elapsed_ms`` since the start."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.last = self.t0
        self.ms: dict[str, float] = {}

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.ms[stage] = round((now - self.last) * 1e3, 3)
        self.last = now

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1e3


@dataclass
class _Ranked:
    """The candidates after hydrate and rank, aligned (``C`` of them): ``ids``, ``scores``
    float64, item table rows ``trows`` int64 (-1: not in the table), ``categories`` str and
    ``ages`` (days, -1 unknown)."""

    ids: list[str]
    scores: np.ndarray
    trows: np.ndarray
    categories: np.ndarray
    ages: np.ndarray
    sources: list[str]
    probabilities: bool = False
    """``scores`` are the ranker's click probabilities (else retrieval or popularity scores)."""


def recommend(engine: Engine, req: Request, info: dict[str, Any] | None = None) -> dict[str, Any]:
    """Answer one request (see the module docstring). :class:`NoChampion` when no champion is
    loaded (the app answers 503). ``info``: filled with ``request_id`` at once and ``arm``,
    ``model_version`` once routed, so a caller can log a request that fails later."""
    cfg = engine.config
    timer = _Timer()
    request_id = uuid.uuid4().hex
    info = {} if info is None else info
    info["request_id"] = request_id
    arm, bundle = route(engine, req.user_id)
    if bundle is None:
        raise NoChampion("no champion bundle loaded")
    info.update(arm=arm, model_version=bundle.model_version)
    timer.lap("route")

    def budget_ms() -> float:  # what a Redis read may take now
        return min(cfg.hydrate_deadline_ms, cfg.deadline_ms - timer.elapsed_ms())

    found = retrieve.candidates(engine, bundle, req.user_id, req.categories, req.exclude, budget_ms)
    timer.lap("retrieve")
    needs_features = bool(found.ids) and not found.cold
    online, err = None, found.error
    if needs_features:
        online, err = hydrate(engine, bundle, req.user_id, found.ids, budget_ms())
        if online is None and found.sequence_error:  # what failed first, as without the read
            err = found.sequence_error
    timer.lap("hydrate")
    failed = needs_features and online is None
    ranked, fell_back = _rank(bundle, req, found, online, failed, cfg.candidates)
    fallbacks = found.fallbacks + ([fell_back] if fell_back else [])
    features_missing = online is not None and online.degraded  # Redis answered without rows
    if features_missing:
        fallbacks.append("features")
    timer.lap("rank")
    slate = _rerank(engine, req, bundle, ranked, online.user if online is not None else None)
    timer.lap("rerank")
    shown = [ranked.ids[r] for r in slate.rows]
    sources = [ranked.sources[r] for r in slate.rows]
    _log_served(engine, request_id, req, arm, bundle, shown, slate)
    timer.lap("log")
    timer.ms["total"] = round(timer.elapsed_ms(), 3)
    for kind in fallbacks:
        engine.metrics.count_fallback(kind)
    engine.metrics.observe_stages(timer.ms)
    extra = {"policy": rerank.policy_record(slate, ranked.ids)} if cfg.include_policy else {}
    if cfg.include_candidates:
        scores = exploit_scores(cfg, bundle, ranked, online.user if online is not None else None)
        extra["candidates"] = {"ids": list(ranked.ids), "scores": scores.tolist()}
    return {
        **extra,
        "request_id": request_id,
        "user_id": req.user_id,
        "arm": arm,
        "bundle": bundle.versions,
        "degraded": found.degraded or fell_back is not None or features_missing,
        "cold_start": found.cold,
        "fallbacks": fallbacks,
        "items": _items(shown, sources, slate),
        "timings_ms": timer.ms,
        "error": err,
    }


def _rank(
    bundle: LoadedBundle,
    req: Request,
    found: retrieve.Candidates,
    online: Hydrated | None,
    redis_failed: bool,
    n: int,
) -> tuple[_Ranked, str | None]:
    """The candidates scored, and the fallback taken (``"redis"``, ``"rank"``) or None.

    ``online``: the hydrated features (None: nothing read, or ``redis_failed``). Redis failed →
    the popularity answer (``n`` items); nothing read (cold start) → the retrieval order; else
    the ranker's scores (its failure: the retrieval order). Categories and ages come from the
    online features when there, else from the item table."""
    table = bundle.item_table
    if redis_failed:  # Redis unavailable: the popularity answer
        ids, scores = retrieve.popular(bundle, n, found.drop, req.categories)
        trows = table.rows(ids)
        cats, ages = table.category[trows], table.age_days[trows]
        return _Ranked(ids, scores, trows, cats, ages, ["trending"] * len(ids)), "redis"
    trows = table.rows(found.ids)
    known, at = trows >= 0, np.maximum(trows, 0)
    cats = np.where(known, table.category[at], "unknown")
    ages = np.where(known, table.age_days[at], -1)
    scores, fell_back = found.scores, None
    if online is not None:
        if "item_category" in online.items:
            cats = online.items["item_category"].astype(str)
        ages = online.items.get("item_age_days", ages)
        if bundle.ranker is not None:
            try:
                scores = score_candidates(bundle, online)
            except Exception as exc:  # noqa: BLE001
                log.error("rank failed for bundle %s: %r", bundle.version, exc)
                fell_back = "rank"
    sources = found.sources or ["trending"] * len(found.ids)
    ranked = scores is not found.scores
    return _Ranked(found.ids, scores, trows, cats, ages, sources, ranked), fell_back


def exploit_scores(
    cfg: ServingConfig,
    bundle: LoadedBundle,
    ranked: _Ranked,
    user: dict[str, Any] | None = None,
) -> np.ndarray:
    """The scores ``(C,)`` float64 the exploit list is chosen by, one per candidate of
    ``ranked``: the ranker's click probabilities tempered by the retrieval order
    (:func:`serving.rerank.retrieval_tempered`) and blended with the user tower's scores of the
    user with hydrated features ``user`` (:func:`serving.rerank.tower_blended`; None: not
    blended) when the ranker scored them, made optimistic (``cfg.exploit_optimism``) and boosted
    for fresh items (``cfg.fresh_boost``); the retrieval scores when the ranker did not score
    them."""
    scores = ranked.scores
    if ranked.probabilities:  # the ranker scored them: tempered by the retrieval order
        scores = rerank.retrieval_tempered(scores, retrieval_weight_for(bundle, cfg))
        if cfg.tower_weight > 0.0 and user is not None:
            tower = bundle.tower_scores(user, ranked.ids)
            scores = rerank.tower_blended(scores, tower, cfg.tower_weight)
    if cfg.exploit_optimism > 0.0 and ranked.probabilities:
        table = bundle.item_table
        shown = np.where(ranked.trows >= 0, table.impressions[np.maximum(ranked.trows, 0)], 0.0)
        scores = rerank.optimistic_scores(scores, shown, cfg.exploit_optimism)
    return rerank.boosted_scores(scores, ranked.ages, cfg.fresh_days, cfg.fresh_boost)


def _rerank(
    engine: Engine,
    req: Request,
    bundle: LoadedBundle,
    ranked: _Ranked,
    user: dict[str, Any] | None = None,
) -> rerank.Slate:
    """The response's slate: fresh boost, the exploit list (:func:`_exploit`), then exploration
    over the best remaining candidates by their click posteriors (item table counts under the
    prior; the choice by ``cfg.explorer``: :func:`_explore_probabilities`). ``user``: the hydrated
    user features (None: none read)."""
    cfg = engine.config
    table = bundle.item_table
    k = min(req.k, len(ranked.ids))
    boosted = exploit_scores(cfg, bundle, ranked, user)
    exploit = _exploit(cfg, req, ranked, boosted, k, user)
    order = np.argsort(-boosted, kind="stable")
    pool_rows = order[~np.isin(order, exploit)][: cfg.explore_pool]
    prows = ranked.trows[pool_rows] if len(pool_rows) else np.zeros(0, np.int64)
    a0, b0 = cfg.explore_prior
    clicks = np.where(prows >= 0, table.clicks[np.maximum(prows, 0)], 0.0)
    imps = np.where(prows >= 0, table.impressions[np.maximum(prows, 0)], 0.0)
    alpha = a0 + clicks
    beta = b0 + np.maximum(imps - clicks, 0.0)

    def probs() -> np.ndarray | None:  # computed only when the request explores (or logs it)
        return _explore_probabilities(engine, table, ranked, pool_rows, prows, clicks, imps, user)

    with engine.rng_lock:
        return rerank.explore(
            exploit, boosted[exploit], pool_rows.astype(np.int64), alpha, beta, k,
            cfg.explore_rate, engine.rng, cfg.explore_grid, cfg.explore_uniform,
            probs, cfg.explorer, need_policy=cfg.include_policy,
        )  # fmt: skip


def _explore_probabilities(
    engine: Engine,
    table: Any,
    ranked: _Ranked,
    pool_rows: np.ndarray,
    prows: np.ndarray,
    clicks: np.ndarray,
    imps: np.ndarray,
    user: dict[str, Any] | None,
) -> np.ndarray | None:
    """The explore choice's probabilities over the pool ``(P,)`` by ``cfg.explorer``: None for
    ``thompson`` (:func:`serving.rerank.explore` computes them), uniform for ``epsilon``, the
    LinUCB softmax (:mod:`serving.linucb`, state from ``RECLOOP_HOME/serving/linucb``) for
    ``linucb``. ``prows``: the pool's item table rows (-1 unknown), ``clicks``/``imps`` their
    28-day counts."""
    cfg = engine.config
    if cfg.explorer == "thompson" or len(pool_rows) == 0:
        return None
    if cfg.explorer == "epsilon":
        return rerank.epsilon_probabilities(len(pool_rows))
    at = np.maximum(prows, 0)
    trending = np.where(prows >= 0, table.trending[at], 0.0)
    x = linucb.context_features(
        user, clicks, imps, ranked.categories[pool_rows], ranked.ages[pool_rows], trending,
        cfg.explore_prior,
    )  # fmt: skip
    path = linucb.state_path_for(engine.settings.home, table.date)
    state = linucb.cached_state(path, cfg.linucb_lambda, max(cfg.reload_interval_s, 1.0))
    return linucb.choice_probabilities(
        x, state, cfg.linucb_alpha, cfg.linucb_temperature, cfg.linucb_uniform
    )


def _exploit(
    cfg: ServingConfig,
    req: Request,
    ranked: _Ranked,
    boosted: np.ndarray,
    k: int,
    user: dict[str, Any] | None,
) -> np.ndarray:
    """The exploit list's rows ``(k,)``, best first, by ``cfg.reranker``: ``cap``
    (:func:`serving.rerank.exploit_list`, the request's categories uncapped), ``calibrated``
    (toward :func:`serving.diversify.online_target` of the ``user``) or ``mmr`` (same category =
    similar), each with weight ``cfg.rerank_lambda``. Candidates of an
    :data:`serving.sources.EXPLORE_ONLY` source (``catalog``) are left out (unless too few
    others remain): they reach users through the explore slot, not through a ranker's guess
    about items it never saw shown."""
    allowed = np.array([s not in EXPLORE_ONLY for s in ranked.sources], dtype=bool)
    ok = allowed if allowed.sum() >= k else None
    cats, lam = ranked.categories, cfg.rerank_lambda
    if cfg.reranker == "calibrated":
        target = diversify.online_target(boosted, cats, ok, user)
        return diversify.calibrated_list(boosted, cats, k, target, lam, allowed=ok)
    if cfg.reranker == "mmr":
        return diversify.mmr_list(boosted, cats, k, lam, allowed=ok)
    return rerank.exploit_list(
        boosted, cats, k, cfg.category_cap, allowed=ok, uncapped=frozenset(req.categories)
    )


def _log_served(
    engine: Engine,
    request_id: str,
    req: Request,
    arm: str,
    bundle: LoadedBundle,
    shown: list[str],
    slate: rerank.Slate,
) -> None:
    """Log the impressions and remember what was shown for ``/feedback`` (published to Redis
    off the request path when several worker processes may get the feedback)."""
    cfg = engine.config
    ts = pd.Timestamp.now(tz="UTC")
    propensities = slate.propensity.tolist()
    rows = impression_rows(
        request_id, ts, req.user_id, shown, propensities, arm, bundle.model_version
    )
    engine.impressions.add(rows)
    engine.metrics.count_impressions(len(rows))
    record = {
        "request_id": request_id,
        "user_id": req.user_id,
        "items": tuple(shown),  # immutable: the collector can stop tracking the record
        "propensities": tuple(propensities),
        "arm": arm,
        "model_version": bundle.model_version,
        "feedback": {},
    }
    engine.remember(request_id, record)
    if cfg.processes > 1:  # another worker may get its /feedback: share it, off the request path
        engine.hydrate_pool.submit(shared.publish, engine.settings, record, cfg.request_ttl_s)


def _items(shown: list[str], sources: list[str], slate: rerank.Slate) -> list[dict[str, Any]]:
    """The response's items, in slot order, each with the candidate source that offered it."""
    return [
        {
            "item_id": item,
            "score": float(s),
            "position": pos,
            "propensity": float(p),
            "explore": bool(x),
            "source": src,
        }
        for pos, (item, src, s, p, x) in enumerate(
            zip(shown, sources, slate.scores, slate.propensity, slate.explore, strict=True)
        )
    ]
