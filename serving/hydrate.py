"""The hydrate stage: a request's online features read from Redis, under a deadline and a breaker.

:func:`read_features` reads the user's row and the candidates' rows
(:mod:`pipelines.features.online`'s layout) straight into arrays, the candidates through the
engine's :class:`~serving.item_cache.ItemFeatureCache` when there is one;
:func:`read_user_features` reads one user's row (new users through the user tower).
:func:`redis_call` runs such a read on the engine's hydrate pool within a budget: Redis down,
slow or failing trips the :class:`~serving.engine.Breaker` and the caller falls back (no retry
storm; the abandoned read ends at the client's 1 s socket timeout); :func:`submit` and
:func:`join` split such a read so that it overlaps other work (the user's online sequence,
:func:`read_sequence`, read while the retrieve stage searches).

Redis that answers without the rows (restarted without persistence, a partial materialization)
is not a failure of the read, but the ranker then scores defaults: :func:`features_degraded`
flags such a read (``Hydrated.degraded``) and the response says ``degraded`` with the fallback
``features`` (:mod:`serving.pipeline`).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.core.settings import Settings
from pipelines.features import online
from serving.bundle import LoadedBundle
from serving.engine import Engine
from serving.item_cache import ItemFeatureCache

log = logging.getLogger("recloop.serving.hydrate")


MISSING_ITEMS_SHARE = 0.5
"""More than this share of a request's candidates without an online row: the read is degraded."""


@dataclass
class Hydrated:
    """Online features of one request: ``user`` {feature: value}, ``items`` {feature: ``(C,)``
    array}, defaults (``pipelines.features.tables.DEFAULTS``) filled where Redis has no value;
    ``missing_items`` = candidates with no row in Redis; ``read_ms`` the read (ms);
    ``user_missing``: the user has no row in Redis."""

    user: dict[str, Any]
    items: dict[str, np.ndarray]
    missing_items: int
    read_ms: float
    user_missing: bool = False

    @property
    def degraded(self) -> bool:
        """:func:`features_degraded` of this read."""
        n = len(self.items.get("item_id", ()))
        return features_degraded(self.user_missing, self.missing_items, n)


def features_degraded(user_missing: bool, missing_items: int, candidates: int) -> bool:
    """The rule: the user's row missing, or more than :data:`MISSING_ITEMS_SHARE` of the
    ``candidates`` without a row. A few missing candidates are normal (items newer than the
    last materialization); most of them missing, or the user's row, is a store that lost its
    data (a restart without persistence, a materialization that stopped half-way)."""
    return user_missing or missing_items > MISSING_ITEMS_SHARE * candidates


def read_features(
    settings: Settings,
    service: str,
    user_id: str,
    ids: list[str],
    cache: ItemFeatureCache | None = None,
) -> Hydrated:
    """One Redis round trip of HMGETs over Feast's layout, decoded straight into arrays.

    The same read as :func:`pipelines.features.online.online_features_fast` (its key layout,
    read plan and decoders) without building a DataFrame per request, which cost more than the
    read itself. With ``cache``, candidates' rows come from it and only its misses are read (see
    :class:`~serving.item_cache.ItemFeatureCache`); the user's row is always read.
    ``ConnectionError`` naming the URL when Redis does not answer.
    """
    plan = online.read_plan(settings, service)
    t0 = time.perf_counter()
    with online.connection_errors(settings.redis_url):
        if cache is None:
            commands = online.row_commands(plan, user_id, ids)
            replies = online.hmget_rows(online.redis_client(settings), commands)
            user_reply, item_replies = replies[0], replies[1:]
            cols, present = online.decode_item_rows(plan, item_replies)
            items = dict(zip(plan.names["item"], cols, strict=True))
        else:
            user_reply, items, present = cache.read(settings, plan, service, user_id, ids)
    user_missing = not any(user_reply)  # no field and no timestamp: no row at all
    user = online.decode_user_row(plan, user_reply)
    missing = int(len(ids) - np.count_nonzero(present))
    user, items = with_ranker_columns(user, items, ids)
    return Hydrated(user, items, missing, (time.perf_counter() - t0) * 1e3, user_missing)


def with_ranker_columns(
    user: dict[str, Any], items: dict[str, np.ndarray], ids: list[str]
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``user`` and ``items`` plus the columns the ranker reads beside the feature service's
    (:data:`pipelines.ranking.data.ID_FEATURES`): ``item_id`` ``(C,)`` the candidates' ids,
    ``user_age_band`` of ``user_age`` and ``slot`` = ``SERVING_POSITION`` (0: every candidate
    scored as if shown first). New dicts: the item cache's arrays are not modified. A ranker
    that reads none of these ignores them."""
    from pipelines.ranking.data import SERVING_POSITION, age_band

    user = {**user, "slot": SERVING_POSITION, "user_age_band": age_band(user.get("user_age"))}
    items = {**items, "item_id": np.asarray(ids, dtype=object)}
    return user, items


def read_user_features(
    settings: Settings, service: str, user_id: str, names: list[str] | None = None
) -> dict[str, Any] | None:
    """The user's online ``user_features`` values ``{feature: value}`` (``None`` where a field is
    absent) over ``service``'s user features (only ``names`` of them decoded, when given), in one
    HMGET; ``None`` when the online store has no row for the user at all (a brand-new user).
    ``ConnectionError`` naming the URL."""
    from pipelines.features.tables import FEATURE_TYPES

    plan = online.read_plan(settings, service)
    with online.connection_errors(settings.redis_url):
        [reply] = online.hmget_rows(
            online.redis_client(settings), online.row_commands(plan, user_id, [])
        )
    served = plan.names["user"]
    if not reply[len(served)] and not any(reply[: len(served)]):  # no _ts and no value: no row
        return None
    wanted = set(served if names is None else names)
    return {
        n: online.decode_column([raw], FEATURE_TYPES[n])[0]
        for n, raw in zip(served, reply, strict=False)
        if n in wanted
    }


def feature_service(bundle: LoadedBundle) -> str:
    """The feature service the bundle's ranker was trained on (``ranker_v1`` without one)."""
    if bundle.ranker is not None and getattr(bundle.ranker, "feature_service", ""):
        return str(bundle.ranker.feature_service)
    return "ranker_v1"


def tower_service(settings: Settings, bundle: LoadedBundle) -> str:
    """The feature service to read the user tower's features with: the ranker's when it has
    them all (one read plan warmed at load), else ``two_tower_v1``."""
    service = feature_service(bundle)
    assert bundle.user_tower is not None
    if set(bundle.user_tower.online) <= set(online.read_plan(settings, service).names["user"]):
        return service
    return "two_tower_v1"


@dataclass
class Pending:
    """A Redis read started on the hydrate pool (:func:`submit`): its ``future``, or the
    ``error`` that kept it from starting (the breaker open)."""

    future: Future | None
    error: str | None = None


def submit(engine: Engine, fn: Any, *args: Any) -> Pending:
    """Start ``fn(*args)`` on the hydrate pool now (unless the breaker is open); its answer is
    taken by :func:`join` within a budget. Lets a read overlap the caller's own work."""
    if engine.breaker.is_open():
        return Pending(None, "redis breaker open")
    return Pending(engine.hydrate_pool.submit(fn, *args))


def join(engine: Engine, pending: Pending, budget_ms: float) -> tuple[Any, str | None]:
    """``(answer, None)`` of a read started by :func:`submit` within ``budget_ms``, or ``(None,
    error)`` when the breaker was open or Redis is down, slow or failing (the breaker is then
    tripped)."""
    fut = pending.future
    if fut is None:
        return None, pending.error
    try:
        return fut.result(timeout=max(budget_ms, 1.0) / 1e3), None
    except FutureTimeout:
        fut.cancel()
        err = detail = f"redis read exceeded {budget_ms:.0f} ms"
    except ConnectionError as exc:
        err, detail = "redis unreachable", str(exc)
    except Exception as exc:  # noqa: BLE001 - anything else fails the stage the same way
        err, detail = "redis read failed", repr(exc)
    engine.breaker.trip(detail)
    log.warning("redis: %s; popularity answers for %.1fs", detail, engine.config.redis_cooldown_s)
    return None, err  # the response says what failed, not where Redis lives


def redis_call(engine: Engine, budget_ms: float, fn: Any, *args: Any) -> tuple[Any, str | None]:
    """``(fn(*args), None)`` run on the hydrate pool within ``budget_ms``, or ``(None, error)``
    when the breaker is open or Redis is down, slow or failing (the breaker is then tripped)."""
    return join(engine, submit(engine, fn, *args), budget_ms)


def read_sequence(settings: Settings, user_id: str) -> list[str]:
    """The user's online recent-item sequence (:mod:`pipelines.features.sequences`), oldest
    first, in one ``ZRANGE``; ``ConnectionError`` naming the URL."""
    from pipelines.features import sequences

    with online.connection_errors(settings.redis_url):
        return sequences.read(online.redis_client(settings), user_id)


def hydrate(
    engine: Engine, bundle: LoadedBundle, user_id: str, ids: list[str], budget_ms: float
) -> tuple[Hydrated | None, str | None]:
    """``(Hydrated, None)`` of the candidates ``ids``, or ``(None, error)`` (Redis down, slow or
    failing: breaker tripped)."""
    args = (engine.settings, feature_service(bundle), user_id, ids, engine.item_cache)
    return redis_call(engine, budget_ms, read_features, *args)
