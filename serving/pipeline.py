"""One recommendation request through the stages: route → retrieve → hydrate → rank → re-rank.

:func:`recommend` runs in a worker thread (the app hands it off the event loop) and returns the
response dict; every stage is timed (``timings_ms``) and has a fallback, so a request answers
(never raises) as long as a champion bundle is loaded:

- **route** (:func:`route`): sticky A/B arm from ``sha256(salt:experiment:user_id)``: the first
  8 bytes as a number in [0, 1) below ``challenger_share`` → ``challenger`` (when one is loaded).
- **retrieve**: the user's vector → FAISS top-``candidates`` with the user's seen items and
  excluded items removed. The vector: a user in the two-tower's vocabulary → the precomputed one;
  any other user, when ``new_users = "user_tower"`` (opt-in; default ``trending``) and the bundle
  has a feature-only user tower (:class:`serving.bundle.UserTower`) → their ``user_features`` row read from Redis (one HMGET, under the hydrate deadline and the
  breaker; once per user and bundle) encoded by the tower (cached by attribute values), flagged
  ``user_tower``. A user with no row in the online store (brand new), or any user of a bundle
  whose tower reads ids or history → **cold start**: trending items (popularity × trending from
  the item table), those of the context's categories first, flagged ``cold_start``; Redis failing
  on that read → the same, also flagged ``redis`` and ``degraded``. Index failure → the
  popularity order, flagged ``retrieve``.
- **hydrate**: user + candidate features from Redis (``online_features_fast``'s layout) in a
  separate thread with ``hydrate_deadline_ms`` (capped by what is left of ``deadline_ms``). The
  user's row is read on every request; candidates' rows come from the process's
  :class:`ItemFeatureCache` (item features change once a day, at materialization) and only its
  misses, and rows older than ``item_cache_ttl_s``, are read, in the same round trip as the
  user's row and the materialization marker (a new marker drops the cache). Redis down, slow or
  failing → a **popularity answer** (``degraded: true``) and Redis is not asked again for
  ``redis_cooldown_s`` (a breaker: no retry storm; the abandoned read ends at the client's 1 s
  socket timeout); the cache never answers for a Redis that does not.
- **rank**: the ranker scores all candidates in one batch, its input built as arrays (no
  DataFrame; text categories encoded once per distinct value and ranker); failure (or no ranker
  in the bundle) → the retrieval order and scores, flagged ``rank`` when it failed.
- **re-rank**: :mod:`serving.rerank` (fresh boost, category caps, exploration, propensities).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.settings import Settings
from serving import rerank, shared
from serving.bundle import BundleManager, LoadedBundle
from serving.config import ServingConfig
from serving.logging import ImpressionLog, RequestLog, impression_rows
from serving.metrics import Metrics

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


@dataclass
class Breaker:
    """Redis circuit breaker: open for ``cooldown_s`` after a failure."""

    cooldown_s: float
    open_until: float = 0.0
    failures: int = 0
    last_error: str | None = None

    def is_open(self) -> bool:
        return time.monotonic() < self.open_until

    def trip(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        self.open_until = time.monotonic() + self.cooldown_s


@dataclass
class Engine:
    """What the stages share: settings, config, bundles, the logs, metrics, breaker, pools.

    ``requests``: the per-request log (:class:`serving.logging.RequestLog`; None: not kept)."""

    settings: Settings
    config: ServingConfig
    bundles: BundleManager
    impressions: ImpressionLog
    metrics: Metrics
    breaker: Breaker
    hydrate_pool: ThreadPoolExecutor
    recent: dict[str, dict[str, Any]] = field(default_factory=dict)
    _recent_lock: threading.Lock = field(default_factory=threading.Lock)
    _rng_lock: threading.Lock = field(default_factory=threading.Lock)
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    requests: RequestLog | None = None
    item_cache: ItemFeatureCache | None = None

    def remember(self, request_id: str, shown: dict[str, Any]) -> None:
        """Keep the request's shown items for ``/feedback`` (oldest dropped beyond the cap)."""
        with self._recent_lock:
            self.recent[request_id] = shown
            while len(self.recent) > self.config.request_cache:
                self.recent.pop(next(iter(self.recent)))

    def lookup(self, request_id: str) -> dict[str, Any] | None:
        with self._recent_lock:
            return self.recent.get(request_id)


def bucket(user_id: str, salt: str, experiment: str) -> float:
    """The user's sticky position in [0, 1) for ``experiment`` under ``salt``."""
    h = hashlib.sha256(f"{salt}:{experiment}:{user_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def route(engine: Engine, user_id: str) -> tuple[str, LoadedBundle | None]:
    """``(arm, bundle)``; the challenger only when loaded and the user's bucket falls in it."""
    cfg = engine.config
    challenger = engine.bundles.get("challenger")
    if challenger is not None and bucket(user_id, cfg.salt, cfg.experiment) < cfg.challenger_share:
        return "challenger", challenger
    return "champion", engine.bundles.get("champion")


class _Timer:
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


def _popular(bundle: LoadedBundle, n: int, drop: set[str], categories: tuple[str, ...]) -> tuple:
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


def _retrieve(
    bundle: LoadedBundle, query: np.ndarray, n: int, drop: set[str]
) -> tuple[list[str], np.ndarray]:
    """FAISS top-``n`` ids (``list[str]``) and scores ``(n,)`` for one user vector ``query``
    ``(1, D)`` float32, ``drop`` (seen and excluded ids) removed."""
    ids, scores = bundle.index.search(query, min(n + len(drop), bundle.index.n_items))
    ids, scores = ids[0].astype(str), scores[0].astype(np.float64)
    keep = (ids != "") & np.isfinite(scores)
    if drop:
        keep &= ~np.isin(ids, np.fromiter(drop, dtype=ids.dtype, count=len(drop)))
    ids, scores = ids[keep][:n], scores[keep][:n]
    return ids.tolist(), scores


@dataclass
class Hydrated:
    """Online features of one request: ``user`` {feature: value}, ``items`` {feature: ``(C,)``
    array}, defaults (``pipelines.features.tables.DEFAULTS``) filled where Redis has no value;
    ``missing_items`` = candidates with no row in Redis."""

    user: dict[str, Any]
    items: dict[str, np.ndarray]
    missing_items: int
    read_ms: float


def read_features(
    settings: Settings,
    service: str,
    user_id: str,
    ids: list[str],
    cache: ItemFeatureCache | None = None,
) -> Hydrated:
    """One Redis pipeline of HMGETs over Feast's layout, decoded straight into arrays.

    The same read as ``pipelines.features.store.online_features_fast`` (its key layout, read plan
    and decoders are reused) without building a DataFrame per request, which cost more than the
    read itself. With ``cache``, candidates' rows come from it and only its misses are read (see
    :class:`ItemFeatureCache`); the user's row is always read. ``ConnectionError`` naming the URL
    when Redis does not answer.
    """
    import redis

    from pipelines.features import store as fs

    plan = fs._plan(settings, service)
    t0 = time.perf_counter()
    try:
        if cache is None:
            replies = fs._hmget_pipeline(fs.redis_client(settings), _commands(plan, user_id, ids))
            user_reply, item_replies = replies[0], replies[1:]
            cols, present = _decode_items(plan, item_replies)
            items = dict(zip(plan.names["item"], cols, strict=True))
        else:
            user_reply, items, present = cache.read(settings, plan, service, user_id, ids)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ConnectionError(
            f"Redis online store unreachable at {settings.redis_url}: {exc}"
        ) from exc
    user = _decode_user(plan, user_reply)
    missing = int(len(ids) - np.count_nonzero(present))
    return Hydrated(user, items, missing, (time.perf_counter() - t0) * 1e3)


def _commands(plan: Any, user_id: str, item_ids: list[str]) -> list:
    """The pre-packed HMGETs of the user's row and each item's row (``_hmget_pipeline``)."""
    from pipelines.features import store as fs

    return [(plan.packed["user"], fs.redis_key("user_id", user_id))] + [
        (plan.packed["item"], fs.redis_key("item_id", i)) for i in item_ids
    ]


def _decode_user(plan: Any, reply: list) -> dict[str, Any]:
    """The user's HMGET reply → ``{feature: value}`` (defaults where absent), one protobuf parse
    per value type rather than per feature."""
    from pipelines.features import store as fs
    from pipelines.features.tables import DEFAULTS, FEATURE_TYPES

    names = plan.names["user"]
    by_kind: dict[str, list[int]] = {}
    for j, name in enumerate(names):
        by_kind.setdefault(FEATURE_TYPES[name], []).append(j)
    values: dict[int, Any] = {}
    for kind, cols in by_kind.items():
        decoded = fs._decode_column([reply[j] for j in cols], kind)
        values.update(zip(cols, decoded, strict=True))
    return {n: DEFAULTS[n] if values[j] is None else values[j] for j, n in enumerate(names)}


_DTYPES = {"int64": np.int64, "float64": np.float64, "string": object}


def _decode_items(plan: Any, replies: list) -> tuple[list[np.ndarray], np.ndarray]:
    """Items' HMGET replies (``M`` of them) → per item feature (``plan.names["item"]`` order) an
    ``(M,)`` array (int64, float64 or object; defaults where absent), and ``present`` ``(M,)``
    bool (the item has a row in Redis)."""
    from pipelines.features import store as fs
    from pipelines.features.tables import DEFAULTS, FEATURE_TYPES

    cols: list[np.ndarray] = []
    for j, name in enumerate(plan.names["item"]):
        kind = FEATURE_TYPES[name]
        vals = fs._decode_column([r[j] for r in replies], kind)
        default = DEFAULTS[name]
        cols.append(np.array([default if v is None else v for v in vals], dtype=_DTYPES[kind]))
    ts_col = len(plan.names["item"])
    present = np.fromiter((bool(r[ts_col]) for r in replies), dtype=bool, count=len(replies))
    return cols, present


def _read_marked(
    settings: Settings, plan: Any, user_id: str, item_ids: list[str]
) -> tuple[bytes | None, list, list]:
    """``(materialization marker, user reply, item replies)`` in one write: ``GET`` of the
    marker first, then the HMGETs (so rows read after a marker are at least that fresh)."""
    from pipelines.features import store as fs

    key = fs.MARKER_KEY.encode()
    head = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(key), key)
    commands = _commands(plan, user_id, item_ids)
    payload = head + b"".join(
        b"%s$%d\r\n%s\r\n%s" % (h, len(k), k, fields) for (h, fields), k in commands
    )
    pool = fs.redis_client(settings).connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([payload])
        marker = conn.read_response()
        replies = [conn.read_response() for _ in commands]
    except BaseException:
        conn.disconnect()  # a half-read reply stream must not go back to the pool
        raise
    finally:
        pool.release(conn)
    return marker, replies[0], replies[1:]


_UNSET = b"<unset>"


class _ItemRows:
    """Cached item rows of one feature service, from Redis under one materialization ``marker``:
    per feature a column array (``names`` order; capacity doubles), ``present`` (a row existed),
    ``stamp`` (``time.monotonic()`` of the read), ``row`` = item id → row. Its lock guards all."""

    def __init__(self, names: list[str], kinds: list[str], marker: bytes | None) -> None:
        self.names = list(names)
        self.marker = marker
        self.row: dict[str, int] = {}
        self.n = 0
        cap = 1024
        self.cols = [np.empty(cap, dtype=_DTYPES[k]) for k in kinds]
        self.present = np.zeros(cap, dtype=bool)
        self.stamp = np.zeros(cap, dtype=np.float64)
        self.lock = threading.Lock()

    def lookup(self, ids: list[str], fresh_after: float) -> np.ndarray:
        """Rows ``(C,)`` int64 of ``ids``; ``-1`` where not cached or read before
        ``fresh_after`` (monotonic seconds)."""
        with self.lock:
            get = self.row.get
            rows = np.fromiter((get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
            hit = rows >= 0
            hit[hit] = self.stamp[rows[hit]] >= fresh_after
        return np.where(hit, rows, -1)

    def merge(
        self,
        rows: np.ndarray,
        miss_ids: list[str],
        fresh: list[np.ndarray],
        fresh_present: np.ndarray,
        now: float,
        store: bool,
        max_items: int,
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Candidates' columns ``{feature: (C,)}`` and ``present`` ``(C,)``: cached rows where
        ``rows >= 0``, the ``fresh`` values read for the others (in order); those are stored
        (when ``store`` and the table has room for ``max_items`` rows)."""
        hit = np.flatnonzero(rows >= 0)
        miss = np.flatnonzero(rows < 0)
        hr = rows[hit]
        n = len(rows)
        with self.lock:
            out: dict[str, np.ndarray] = {}
            for name, col, new in zip(self.names, self.cols, fresh, strict=True):
                a = np.empty(n, dtype=col.dtype)
                a[hit] = col[hr]
                a[miss] = new
                out[name] = a
            present = np.empty(n, dtype=bool)
            present[hit] = self.present[hr]
            present[miss] = fresh_present
            if store and miss_ids:
                self._store(miss_ids, fresh, fresh_present, now, max_items)
        return out, present

    def _store(self, ids, fresh, present, now: float, max_items: int) -> None:
        get = self.row.get
        rows = np.fromiter((get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
        new = np.flatnonzero(rows < 0)
        if self.n + len(new) > max_items:  # full: serve reads uncached, keep what is cached
            keep = rows >= 0
            if not keep.any():
                return
            ids = [i for i, k in zip(ids, keep, strict=True) if k]
            rows, fresh, present = rows[keep], [c[keep] for c in fresh], present[keep]
            new = new[:0]
        if self.n + len(new) > len(self.present):
            cap = max(2 * len(self.present), self.n + len(new))
            self.cols = [np.concatenate([c, np.empty(cap - len(c), c.dtype)]) for c in self.cols]
            self.present = np.concatenate([self.present, np.zeros(cap - len(self.present), bool)])
            self.stamp = np.concatenate([self.stamp, np.zeros(cap - len(self.stamp))])
        rows[new] = np.arange(self.n, self.n + len(new))
        for k in new.tolist():
            self.row[ids[k]] = int(rows[k])
        self.n += len(new)
        for col, values in zip(self.cols, fresh, strict=True):
            col[rows] = values
        self.present[rows] = present
        self.stamp[rows] = now


class ItemFeatureCache:
    """Candidates' online item features, kept in the process between requests.

    Item features change once a day (materialization), yet every request hydrates hundreds of
    candidates: their decoded rows are kept per feature service, by item id, and a request reads
    from Redis only its user's row, the materialization marker (``feature_store.MARKER_KEY``)
    and the candidates not cached or cached more than ``ttl_s`` seconds ago, in one round trip.
    A marker different from the one the cache was filled under (a new day materialized, Redis
    flushed) drops every cached row and the request reads all its candidates again; the TTL
    bounds the staleness of rows rewritten without a new marker (a forced re-materialization).
    At most ``max_items`` rows per service (beyond: read uncached). Thread-safe; ``hits`` /
    ``misses`` count candidate rows, ``resets`` the drops."""

    def __init__(self, ttl_s: float = 60.0, max_items: int = 2_000_000) -> None:
        self.ttl_s = ttl_s
        self.max_items = max_items
        self.marker: bytes | None = _UNSET
        self.hits = 0
        self.misses = 0
        self.resets = 0
        self._tables: dict[str, _ItemRows] = {}
        self._lock = threading.Lock()

    def _table(self, service: str, plan: Any) -> _ItemRows:
        from pipelines.features.tables import FEATURE_TYPES

        names = plan.names["item"]
        with self._lock:
            t = self._tables.get(service)
            if t is None or t.names != names:
                t = _ItemRows(names, [FEATURE_TYPES[n] for n in names], self.marker)
                self._tables[service] = t
            return t

    def _reset(self, marker: bytes | None) -> None:
        with self._lock:
            if self.marker != marker:
                if self.marker is not _UNSET:
                    log.info("item feature cache: materialization %r -> %r, %d services dropped",
                             self.marker, marker, len(self._tables))  # fmt: skip
                self.marker = marker
                self._tables = {}
                self.resets += 1

    def read(
        self, settings: Settings, plan: Any, service: str, user_id: str, ids: list[str]
    ) -> tuple[list, dict[str, np.ndarray], np.ndarray]:
        """``(user's HMGET reply, {item feature: (C,) array}, present (C,) bool)`` of ``ids``.
        Redis errors propagate (the caller's deadline and breaker apply as without a cache)."""
        for attempt in range(2):
            table = self._table(service, plan)
            now = time.monotonic()
            rows = table.lookup(ids, now - self.ttl_s)
            miss_ids = [ids[i] for i in np.flatnonzero(rows < 0)]
            marker, user_reply, item_replies = _read_marked(settings, plan, user_id, miss_ids)
            if marker == table.marker:
                break
            self._reset(marker)  # cached rows are of another materialization: read them all
            if attempt == 0:
                continue
            rows = np.full(len(ids), -1, dtype=np.int64)  # changed again meanwhile: no cache
            miss_ids, (marker, user_reply, item_replies) = (
                ids,
                _read_marked(settings, plan, user_id, ids),
            )
        fresh, fresh_present = _decode_items(plan, item_replies)
        store = marker == table.marker
        items, present = table.merge(
            rows, miss_ids, fresh, fresh_present, now, store, self.max_items
        )
        self.hits += len(ids) - len(miss_ids)  # approximate under threads: statistics only
        self.misses += len(miss_ids)
        return user_reply, items, present


def read_user_features(
    settings: Settings, service: str, user_id: str, names: list[str] | None = None
) -> dict[str, Any] | None:
    """The user's online ``user_features`` values ``{feature: value}`` (``None`` where a field is
    absent) over ``service``'s user features (only ``names`` of them decoded, when given), in one
    HMGET; ``None`` when the online store has no row for the user at all (a brand-new user).
    ``ConnectionError`` naming the URL."""
    import redis

    from pipelines.features import store as fs
    from pipelines.features.tables import FEATURE_TYPES

    plan = fs._plan(settings, service)
    try:
        [reply] = fs._hmget_pipeline(
            fs.redis_client(settings), [(plan.packed["user"], fs.redis_key("user_id", user_id))]
        )
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ConnectionError(
            f"Redis online store unreachable at {settings.redis_url}: {exc}"
        ) from exc
    served = plan.names["user"]
    if not reply[len(served)] and not any(reply[: len(served)]):  # no _ts and no value: no row
        return None
    wanted = set(served if names is None else names)
    return {
        n: fs._decode_column([raw], FEATURE_TYPES[n])[0]
        for n, raw in zip(served, reply, strict=False)
        if n in wanted
    }


def _service(bundle: LoadedBundle) -> str:
    if bundle.ranker is not None and getattr(bundle.ranker, "feature_service", ""):
        return str(bundle.ranker.feature_service)
    return "ranker_v1"


def _tower_service(settings: Settings, bundle: LoadedBundle) -> str:
    """The feature service to read the user tower's features with: the ranker's when it has
    them all (one read plan warmed at load), else ``two_tower_v1``."""
    from pipelines.features import store as fs

    service = _service(bundle)
    assert bundle.user_tower is not None
    if set(bundle.user_tower.online) <= set(fs._plan(settings, service).names["user"]):
        return service
    return "two_tower_v1"


def _redis_call(engine: Engine, budget_ms: float, fn: Any, *args: Any) -> tuple[Any, str | None]:
    """``(fn(*args), None)`` run on the hydrate pool within ``budget_ms``, or ``(None, error)``
    when the breaker is open or Redis is down, slow or failing (the breaker is then tripped)."""
    if engine.breaker.is_open():
        return None, "redis breaker open"
    fut = engine.hydrate_pool.submit(fn, *args)
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


def _hydrate(engine: Engine, bundle: LoadedBundle, user_id: str, ids: list[str], budget_ms: float):
    """``(Hydrated, None)`` or ``(None, error)`` (Redis down/slow/failing: breaker tripped)."""
    args = (engine.settings, _service(bundle), user_id, ids, engine.item_cache)
    return _redis_call(engine, budget_ms, read_features, *args)


def _new_user_vector(
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
        service = _tower_service(engine.settings, bundle)
        return read_user_features(engine.settings, service, user_id, tower.online)

    values, err = _redis_call(engine, budget_ms, read)
    if err is not None or values is None:
        return None, err
    try:
        vector = tower.vectors([values])
    except Exception as exc:  # noqa: BLE001 - a user the tower cannot encode gets cold start
        log.error("user tower of bundle %s failed for %r: %r", bundle.version, values, exc)
        return None, None
    tower.remember(user_id, values)
    return vector, None


def _rank(bundle: LoadedBundle, online: Hydrated) -> np.ndarray:
    """Click probabilities ``(C,)`` of the hydrated candidates, in one batch.

    Dense columns go straight into the float32 matrix the network takes (raw values: the
    network normalizes them and replaces non-finite ones), sparse ones through the ranker's own
    vocabulary/hash encoding (:func:`_sparse_codes`); the result equals
    ``ranker.predict_proba`` on the same rows."""
    import torch

    ranker = bundle.ranker
    n = len(next(iter(online.items.values()))) if online.items else 0
    dense = np.empty((n, len(ranker.dense_features)), dtype=np.float32)
    for j, name in enumerate(ranker.dense_features):
        col = online.items.get(name)
        dense[:, j] = online.user[name] if col is None else col
    sparse = _sparse_codes(ranker, online, n)
    logits = ranker.predict_logits(torch.from_numpy(dense), torch.from_numpy(sparse))
    return torch.sigmoid(logits).cpu().numpy().astype(np.float64)


_codes_lock = threading.Lock()
_codes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_CODES_MAX = 200_000
"""Distinct values remembered per sparse feature and ranker (beyond: forgotten, recomputed)."""


def _sparse_codes(ranker: Any, online: Hydrated, n: int) -> np.ndarray:
    """The ranker's bucket indices ``(n, F)`` int64 of the candidates' sparse features.

    Text columns (object arrays, and a user's text value repeated) are encoded once per
    distinct value and ranker (``ranker.encode_sparse`` on the new values; remembered): a text
    category's code does not depend on the other rows. Numeric categories, whose text depends
    on the whole column (whole floats as integers), go through ``encode_sparse`` as a column."""
    names = ranker.sparse_features
    with _codes_lock:
        memo = _codes.get(ranker)
        if memo is None:
            memo = _codes[ranker] = {name: {} for name in names}
    out = np.empty((n, len(names)), dtype=np.int64)
    numeric: dict[str, np.ndarray] = {}
    for j, name in enumerate(names):
        col = online.items.get(name)
        if col is None:  # a user feature: one value for every row
            v = online.user[name]
            if isinstance(v, str):
                out[:, j] = _text_codes(ranker, memo[name], j, [v])[0]
            else:
                numeric[name] = np.full(n, v, dtype=np.float64)
        elif col.dtype == object:
            out[:, j] = _text_codes(ranker, memo[name], j, col)
        else:
            numeric[name] = col
    if numeric:
        zeros = np.zeros(n, dtype=np.float64)
        frame = pd.DataFrame({name: numeric.get(name, zeros) for name in names})
        idx = ranker.encode_sparse(frame)
        for j, name in enumerate(names):
            if name in numeric:
                out[:, j] = idx[:, j]
    return out


def _text_codes(ranker: Any, memo: dict, j: int, values: Any) -> np.ndarray:
    """Codes ``(len(values),)`` of sparse feature ``j`` for object ``values``, via ``memo``."""
    get = memo.get
    codes = [get(v, -1) for v in values]
    if -1 in codes:
        new = list(dict.fromkeys(v for v, c in zip(values, codes, strict=True) if c == -1))
        frame = pd.DataFrame(
            {name: pd.Series(new, dtype=object) for name in ranker.sparse_features}
        )
        found = ranker.encode_sparse(frame)[:, j].tolist()
        learnt = dict(zip(new, found, strict=True))
        with _codes_lock:
            if len(memo) + len(learnt) > _CODES_MAX:
                memo.clear()
            memo.update(learnt)
        codes = [learnt[v] if c == -1 else c for v, c in zip(values, codes, strict=True)]
    return np.asarray(codes, dtype=np.int64)


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
    fallbacks: list[str] = []
    degraded = False
    err: str | None = None
    row = bundle.user_row(req.user_id)
    query = bundle.user_vecs[row : row + 1] if row >= 0 else None
    if query is None and bundle.user_tower is not None and cfg.new_users == "user_tower":
        budget = min(cfg.hydrate_deadline_ms, cfg.deadline_ms - timer.elapsed_ms())
        query, err = _new_user_vector(engine, bundle, req.user_id, budget)
        if err is not None:  # Redis failed: the cold-start answer, flagged
            fallbacks.append("redis")
            degraded = True
        elif query is not None:
            fallbacks.append("user_tower")
    cold = query is None
    drop = bundle.seen_items(row) | set(cfg.excluded_items) | set(req.exclude)
    n = cfg.candidates
    if cold:
        ids, rscores = _popular(bundle, n, drop, req.categories)
        fallbacks.append("cold_start")
    else:
        try:
            ids, rscores = _retrieve(bundle, query, n, drop)
        except Exception as exc:  # noqa: BLE001
            log.error("retrieve failed for bundle %s: %r", bundle.version, exc)
            ids, rscores = _popular(bundle, n, drop, ())
            fallbacks.append("retrieve")
            degraded = True
    timer.lap("retrieve")

    budget = min(cfg.hydrate_deadline_ms, cfg.deadline_ms - timer.elapsed_ms())
    # a cold-start answer needs no features: categories and ages come from the item table
    hydrate = ids and not cold
    online = None
    if hydrate:
        online, err = _hydrate(engine, bundle, req.user_id, ids, budget)
    timer.lap("hydrate")
    table = bundle.item_table
    trows = table.rows(ids)
    known = trows >= 0
    cats = np.where(known, table.category[np.maximum(trows, 0)], "unknown")
    ages = np.where(known, table.age_days[np.maximum(trows, 0)], -1)
    if hydrate and online is None:  # Redis unavailable: the popularity answer
        ids, scores = _popular(bundle, n, drop, req.categories)
        trows = table.rows(ids)
        cats, ages = table.category[trows], table.age_days[trows]
        fallbacks.append("redis")
        degraded = True
        timer.lap("rank")
    else:
        if online is not None:
            if "item_category" in online.items:
                cats = online.items["item_category"].astype(str)
            if "item_age_days" in online.items:
                ages = online.items["item_age_days"]
        scores = rscores
        if bundle.ranker is not None and online is not None and not cold:
            try:
                scores = _rank(bundle, online)
            except Exception as exc:  # noqa: BLE001
                log.error("rank failed for bundle %s: %r", bundle.version, exc)
                scores = rscores
                fallbacks.append("rank")
                degraded = True
        timer.lap("rank")

    k = min(req.k, len(ids))
    boosted = rerank.boosted_scores(scores, ages, cfg.fresh_days, cfg.fresh_boost)
    exploit = rerank.exploit_list(
        boosted, cats, k, cfg.category_cap, uncapped=frozenset(req.categories)
    )
    order = np.argsort(-boosted, kind="stable")
    pool_rows = order[~np.isin(order, exploit)][: cfg.explore_pool]
    prows = trows[pool_rows] if len(pool_rows) else np.zeros(0, np.int64)
    a0, b0 = cfg.explore_prior
    clicks = np.where(prows >= 0, table.clicks[np.maximum(prows, 0)], 0.0)
    imps = np.where(prows >= 0, table.impressions[np.maximum(prows, 0)], 0.0)
    alpha = a0 + clicks
    beta = b0 + np.maximum(imps - clicks, 0.0)
    with engine._rng_lock:
        slate = rerank.explore(
            exploit, boosted[exploit], pool_rows.astype(np.int64), alpha, beta, k,
            cfg.explore_rate, engine.rng, cfg.explore_grid,
        )  # fmt: skip
    timer.lap("rerank")

    shown = [ids[r] for r in slate.rows]
    ts = pd.Timestamp.now(tz="UTC")
    rows = impression_rows(
        request_id, ts, req.user_id, shown, slate.propensity.tolist(), arm, bundle.model_version
    )
    engine.impressions.add(rows)
    engine.metrics.count_impressions(len(rows))
    record = {
        "request_id": request_id,
        "user_id": req.user_id,
        "items": tuple(shown),  # immutable: the collector can stop tracking the record
        "propensities": tuple(slate.propensity.tolist()),
        "arm": arm,
        "model_version": bundle.model_version,
        "feedback": {},
    }
    engine.remember(request_id, record)
    if cfg.processes > 1:  # another worker may get its /feedback: share it, off the request path
        engine.hydrate_pool.submit(shared.publish, engine.settings, record, cfg.request_ttl_s)
    timer.lap("log")
    timer.ms["total"] = round(timer.elapsed_ms(), 3)
    for kind in fallbacks:
        engine.metrics.count_fallback(kind)
    engine.metrics.observe_stages(timer.ms)
    return {
        "request_id": request_id,
        "user_id": req.user_id,
        "arm": arm,
        "bundle": bundle.versions,
        "degraded": degraded,
        "cold_start": cold,
        "fallbacks": fallbacks,
        "items": [
            {
                "item_id": item,
                "score": float(s),
                "position": pos,
                "propensity": float(p),
                "explore": bool(x),
            }
            for pos, (item, s, p, x) in enumerate(
                zip(shown, slate.scores, slate.propensity, slate.explore, strict=True)
            )
        ],
        "timings_ms": timer.ms,
        "error": err,
    }
