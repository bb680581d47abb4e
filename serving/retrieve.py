"""The retrieve stage: a request's candidates from several sources (:mod:`serving.sources`).

The user's two-tower vector: a user in the two-tower's vocabulary → the precomputed one; any
other user, when the bundle's new-user policy is ``user_tower``
(:func:`serving.config.new_user_policy`) and the bundle has a feature-only user tower
(:class:`serving.bundle.UserTower`) → their ``user_features`` row read from Redis (one HMGET,
under the hydrate deadline and the breaker; once per user and bundle) encoded by the tower
(cached by attribute values), flagged ``user_tower``. Then each source of
``ServingConfig.source_quotas`` offers its quota — ``two_tower`` (FAISS, when there is a vector),
``mf`` (users MF knows), ``covisit`` (users with a training history or an online sequence),
``trending`` — and
:func:`serving.sources.merge` interleaves them; every candidate carries its source and that
source's score. Nothing personal to offer (a user no source knows, a brand-new user with no
online row) or ``force_cold_start`` → **cold start**: trending items (popularity × trending from
the item table), those of the context's categories first, flagged ``cold_start``; Redis failing
on the user-tower read → the same, also flagged ``redis`` and ``degraded``. A source failing →
the popularity order, flagged ``retrieve``.

**Online sequence** (``online_sequence``, :mod:`pipelines.features.sequences`): the user's recent
items since the bundle's training day are read from Redis at the start of the stage, overlapped
with the searches (no existing round trip precedes retrieval: the hydrate read comes after it
and needs the candidates), under the hydrate deadline and breaker. They join the seen exclusion
and the ``covisit`` history, recency-weighted; a user no model knows but with a sequence gets
covisit candidates (flagged ``online_sequence``). Redis failing → the bundle's history, as
without it (the tripped breaker makes the hydrate stage answer by popularity, flagged
``redis``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serving.bundle import LoadedBundle
from serving.config import ServingConfig, new_user_policy
from serving.engine import Engine
from serving.hydrate import (
    Pending,
    join,
    read_sequence,
    read_user_features,
    redis_call,
    submit,
    tower_service,
)
from serving.sources import (
    SEQUENTIAL_SOURCES,
    SourceList,
    catalog_sample,
    merge,
    recency_history,
)

log = logging.getLogger("recloop.serving.retrieve")


def popular(
    bundle: LoadedBundle, n: int, drop: set[str], categories: tuple[str, ...]
) -> tuple[list[str], np.ndarray]:
    """Top-``n`` item ids of the trending order (context categories first), minus ``drop``;
    returns ``(ids list, scores (n,) float64 in (0, 1])``."""
    t = bundle.item_table
    order = t.order
    if categories:
        wanted = np.isin(t.category[order], list(categories))
        order = np.concatenate([order[wanted], order[~wanted]])
    ids: list[str] = []
    for r in order:
        i = t.ids[r]
        if i not in drop:
            ids.append(str(i))
            if len(ids) == n:
                break
    scores = 1.0 / (1.0 + np.arange(len(ids), dtype=np.float64))  # rank-based, best = 1
    return ids, scores


def search(
    bundle: LoadedBundle, query: np.ndarray, n: int, drop: set[str]
) -> tuple[list[str], np.ndarray]:
    """FAISS top-``n`` ids (``list[str]``) and scores ``(n,)`` for one user vector ``query``
    ``(1, D)`` float32, ``drop`` (seen and excluded ids) removed."""
    ids, scores = bundle.index.search(query, min(n + len(drop), bundle.index.n_items))
    ids, scores = ids[0].astype(str), scores[0].astype(np.float64)
    keep = (ids != "") & np.isfinite(scores)
    if drop:
        keep &= ~np.isin(ids, np.array(list(drop), dtype=str))  # its own width: none truncated
    ids, scores = ids[keep][:n], scores[keep][:n]
    return ids.tolist(), scores


def new_user_vector(
    engine: Engine, bundle: LoadedBundle, user_id: str, budget_ms: float
) -> tuple[np.ndarray | None, str | None]:
    """``(vector (1, D) float32, None)`` of a user outside the vocabulary, from their online
    features through the bundle's user tower (remembered per user: a returning user costs no
    Redis read); ``(None, None)`` when the online store has no row for them or the tower fails to
    encode them (logged); ``(None, error)`` when Redis failed."""
    tower = bundle.user_tower
    assert tower is not None
    known = tower.cached(user_id)
    if known is not None:
        return known, None

    def read() -> dict[str, Any] | None:  # the read plan too runs under the deadline
        service = tower_service(engine.settings, bundle)
        return read_user_features(engine.settings, service, user_id, tower.online)

    values, err = redis_call(engine, budget_ms, read)
    if err is not None or values is None:
        return None, err
    try:
        vector = tower.vectors([values])
    except Exception as exc:  # noqa: BLE001 - a user the tower cannot encode gets cold start
        log.error("user tower of bundle %s failed for %r: %r", bundle.version, values, exc)
        return None, None
    tower.remember(user_id, values)
    return vector, None


@dataclass
class Candidates:
    """The retrieve stage's answer: ``ids`` (``C`` of them, best first) and their retrieval
    ``scores`` ``(C,)`` float64, ``sources`` (the candidate source of each, ``C``) and
    ``source_scores`` ``(C,)`` (that source's own score), ``drop`` (seen and excluded ids, never
    candidates), ``cold`` (cold start: the trending list, nothing read or ranked), the
    ``fallbacks`` taken (in order), ``degraded`` (a failure changed the answer) and ``error``
    (what failed in Redis, or None)."""

    ids: list[str]
    scores: np.ndarray
    drop: set[str]
    cold: bool
    fallbacks: list[str] = field(default_factory=list)
    degraded: bool = False
    error: str | None = None
    sources: list[str] = field(default_factory=list)
    source_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sequence_error: str | None = None
    """What failed reading the user's online sequence (None: read, or not asked)."""


def _cold(bundle: LoadedBundle, n: int, drop: set[str], categories: tuple[str, ...]) -> SourceList:
    ids, scores = popular(bundle, n, drop, categories)
    return SourceList("trending", ids, scores)


SEQUENCE_OVERSAMPLE = 50
"""Extra candidates each source offers while the user's online sequence is being read, so that
its items (at most ``RECLOOP_SEQUENCE_LENGTH``, default 50) can be dropped afterwards."""


def _offers(
    bundle: LoadedBundle,
    query: np.ndarray | None,
    user_id: str,
    drop: set[str],
    categories: tuple[str, ...],
    quotas: dict[str, int],
    extra: int = 0,
    later: tuple[str, ...] = (),
) -> list[SourceList]:
    """Each configured source's offer for the user (see :mod:`serving.sources`) but
    ``covisit`` (:func:`_covisit`) and the sources named in ``later`` (offered once the online
    sequence is read), ``extra`` more than its quota (but ``catalog``: its sample is a function
    of the quota); the ``two_tower`` search raising propagates (the caller falls back)."""
    lists: list[SourceList] = []
    for name, q in quotas.items():
        if name in later:
            continue
        n = q + extra
        if name == "two_tower" and query is not None:
            ids, scores = search(bundle, query, n, drop)
            lists.append(SourceList(name, ids, scores))
        elif name == "mf" and bundle.mf is not None:
            lists.append(bundle.mf.offer(user_id, n, drop))
        elif name in bundle.model_sources:
            lists.append(bundle.model_sources[name].offer(user_id, n, drop))
        elif name == "trending":
            lists.append(_cold(bundle, n, drop, categories))
        elif name == "catalog":
            table, key = bundle.item_table, f"{user_id}|{bundle.version}"
            lists.append(catalog_sample(table.ids, table.catalog_cum, key, q, drop))  # as drawn
    return [x for x in lists if x.ids]


def _without(lists: list[SourceList], drop: set[str], quotas: dict[str, int]) -> list[SourceList]:
    """``lists`` with the ``drop`` items removed, each cut to its quota."""
    out = []
    for x in lists:
        keep = [j for j, i in enumerate(x.ids) if i not in drop][: quotas.get(x.name, len(x.ids))]
        out.append(SourceList(x.name, [x.ids[j] for j in keep], x.scores[keep]))
    return [x for x in out if x.ids]


def _covisit(
    cfg: ServingConfig, bundle: LoadedBundle, row: int, recent: list[str], n: int, drop: set[str]
) -> SourceList | None:
    """The ``covisit`` offer over the user's training history (row ``row``, -1: none) and
    online sequence ``recent`` (oldest first, recency-weighted:
    :func:`serving.sources.recency_history`); None when the user has neither."""
    if bundle.covisit is None:
        return None
    trained = np.zeros(0, np.int64)
    if row >= 0:
        trained = bundle.seen.indices[bundle.seen.indptr[row] : bundle.seen.indptr[row + 1]]
    cols = bundle.items.encode(recent) if recent else np.zeros(0, np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    cols = cols[cols >= 0]
    if len(trained) == 0 and len(cols) == 0:
        return None
    if len(cols) == 0:
        return bundle.covisit.offer(trained, n, drop)
    half_life = max(cfg.sequence_half_life, 1e-6)
    history, weights = recency_history(trained, cols, half_life, cfg.sequence_boost)
    return bundle.covisit.offer(history, n, drop, weights)


def _sequential_offers(
    bundle: LoadedBundle,
    user_id: str,
    recent: list[str],
    quotas: dict[str, int],
    drop: set[str],
    lists: list[SourceList],
) -> list[SourceList]:
    """``lists`` plus each sequential model source (``gru4rec``, ``sasrec``, ``bert4rec``; left
    out of :func:`_offers` while the sequence was read) offered from the user's online sequence
    ``recent`` (its state after those items; none: the user's training state): a sequential
    model follows what the user did since its training day."""
    for name in SEQUENTIAL_SOURCES:
        src = bundle.model_sources.get(name)
        if name in quotas and src is not None:
            lists.append(src.offer(user_id, quotas[name], drop, recent))
    return lists


def _sequence(
    engine: Engine, pending: Pending | None, budget_ms: Callable[[], float]
) -> tuple[list[str], str | None]:
    """The user's online sequence (``[]``: none, not read, or Redis failed) and the Redis error
    (None: read, or not asked)."""
    if pending is None:
        return [], None
    recent, err = join(engine, pending, budget_ms())
    return list(recent or []), err


def candidates(
    engine: Engine,
    bundle: LoadedBundle,
    user_id: str,
    categories: tuple[str, ...],
    exclude: tuple[str, ...],
    budget_ms: Callable[[], float],
) -> Candidates:
    """Up to ``engine.config.candidates`` candidates for ``user_id`` from the configured sources
    (see the module docstring); ``budget_ms()``: what is left for a Redis read (ms), asked when
    one is needed. Cold start (the trending list, not ranked, ``cold``) for a user no model knows
    (no two-tower vector, no MF row, no history, no online sequence), when the user-tower read
    failed, or with ``force_cold_start``; a known user's candidates are ranked whatever sources
    are configured (only ``trending``: the trending list, ranked).

    With ``online_sequence``, the user's sequence is read from Redis from the start (on the
    hydrate pool, under its deadline and breaker) while the sources but ``covisit`` search,
    each offering :data:`SEQUENCE_OVERSAMPLE` more; then its items join ``drop`` (removed from
    those offers) and the ``covisit`` history. Redis failing: the bundle's history only
    (``sequence_error``; the breaker, tripped, makes the hydrate stage answer as without it)."""
    cfg = engine.config
    online_seq = bool(cfg.online_sequence) and not cfg.force_cold_start
    pending = submit(engine, read_sequence, engine.settings, user_id) if online_seq else None
    fallbacks: list[str] = []
    degraded, err = False, None
    row = bundle.user_row(user_id)
    query = bundle.user_vecs[row : row + 1] if row >= 0 else None
    wants_tower = bundle.user_tower is not None and new_user_policy(bundle, cfg) == "user_tower"
    if query is None and wants_tower and not cfg.force_cold_start:
        query, err = new_user_vector(engine, bundle, user_id, budget_ms())
        if err is not None:  # Redis failed: the cold-start answer, flagged
            fallbacks.append("redis")
            degraded = True
        elif query is not None:
            fallbacks.append("user_tower")
    drop = bundle.seen_items(row) | set(cfg.excluded_items) | set(exclude)
    n = cfg.candidates
    quotas = dict(cfg.source_quotas)
    lists: list[SourceList] = []
    recent: list[str] = []
    seq_err = None
    if not cfg.force_cold_start and err is None:
        try:
            extra = SEQUENCE_OVERSAMPLE if pending is not None else 0
            later = SEQUENTIAL_SOURCES if pending is not None else ()
            lists = _offers(bundle, query, user_id, drop, categories, quotas, extra, later)
            recent, seq_err = _sequence(engine, pending, budget_ms)
            drop |= set(recent)
            lists = _without(lists, drop, quotas)
            if "covisit" in quotas and (
                co := _covisit(cfg, bundle, row, recent, quotas["covisit"], drop)
            ):
                lists.append(co)
            if pending is not None:
                lists = _sequential_offers(bundle, user_id, recent, quotas, drop, lists)
            order = list(quotas)  # the sources in their configured order (merge's tie-break)
            lists = sorted((x for x in lists if x.ids), key=lambda x: order.index(x.name))
        except Exception as exc:  # noqa: BLE001
            log.error("retrieve failed for bundle %s: %r", bundle.version, exc)
            fallbacks.append("retrieve")
            degraded = True
            lists = [_cold(bundle, n, drop, ())]
    failed = "retrieve" in fallbacks
    models = [bundle.mf, *(bundle.model_sources.get(q) for q in quotas)]
    known = query is not None or row >= 0 or any(m is not None and m.knows(user_id) for m in models)
    if not known and any(x.name == "covisit" for x in lists):  # known by their online sequence
        known = True
        fallbacks.append("online_sequence")
    cold = cfg.force_cold_start or err is not None or (not known and not failed)
    fallback = cold or failed or not lists  # one trending list of n serves
    if cold or not lists:  # cold start (not ranked), or the sources offered nothing (ranked)
        lists = [_cold(bundle, n, drop, categories)]
        if cold:
            fallbacks.append("cold_start")
    merged = merge(lists, {"trending": n} if fallback else quotas, n)
    return Candidates(
        merged.ids, merged.scores, drop, cold, fallbacks, degraded, err,
        merged.sources, merged.source_scores, seq_err,
    )  # fmt: skip
