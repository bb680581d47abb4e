"""What the request stages share: the :class:`Engine` (settings, config, bundles, logs, metrics,
the Redis :class:`Breaker`, the hydrate pool, the exploration generator, the item-feature cache),
built once per app by :func:`build_engine`.

**Admin state across worker processes.** ``/admin`` changes (:data:`EXPERIMENT_KEYS`, reload
requests) reach one process; with ``config.processes > 1`` they go through Redis
(:func:`serving.shared.write_admin`) and every process applies them (:meth:`Engine.sync_admin`:
before answering ``/admin/experiment``, at startup, and every :data:`ADMIN_SYNC_S` seconds for
routing): all workers route a user to the same arm, one second after a change at most."""

from __future__ import annotations

import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.core.settings import Settings
from serving.bundle import BundleManager
from serving.config import ServingConfig
from serving.item_cache import ItemFeatureCache
from serving.logging import ImpressionLog, RequestLog
from serving.metrics import Metrics

log = logging.getLogger("recloop.serving.engine")

EXPERIMENT_KEYS = frozenset({"challenger_share", "salt", "experiment", "explore_rate"})
"""What ``POST /admin/experiment`` may change (shared by every worker process)."""
ADMIN_SYNC_S = 1.0
"""Seconds between reads of the shared admin state by each worker process (several processes)."""


@dataclass
class Breaker:
    """Redis circuit breaker: open for ``cooldown_s`` seconds after a failure."""

    cooldown_s: float
    open_until: float = 0.0
    """``time.monotonic()`` until which Redis is not asked."""
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

    ``requests``: the per-request log (:class:`serving.logging.RequestLog`; None: not kept).
    ``rng``: the exploration draws; a numpy ``Generator`` is not thread-safe, so every draw
    holds ``rng_lock``. ``item_cache``: candidates' online item features kept between requests
    (None: every candidate read from Redis). ``recent``: request id → what was shown, for
    ``/feedback`` (:meth:`remember`, :meth:`lookup`), bounded by ``config.request_cache`` entries
    and ``config.request_cache_bytes`` (``recent_bytes``: their estimated size,
    :func:`record_bytes`; ``recent_evicted``: how many were dropped for either bound).
    ``feedback_duplicates``: repeated feedback answered but not logged; ``body_timeouts``:
    request bodies cut off by ``config.body_timeout_s`` (both in ``/metrics``)."""

    settings: Settings
    config: ServingConfig
    bundles: BundleManager
    impressions: ImpressionLog
    metrics: Metrics
    breaker: Breaker
    hydrate_pool: ThreadPoolExecutor
    recent: dict[str, dict[str, Any]] = field(default_factory=dict)
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    rng_lock: threading.Lock = field(default_factory=threading.Lock)
    requests: RequestLog | None = None
    item_cache: ItemFeatureCache | None = None
    recent_bytes: int = 0
    recent_evicted: int = 0
    feedback_duplicates: int = 0
    body_timeouts: int = 0
    service: str | None = None
    """Id of the admin state shared through Redis (:func:`serving.shared.service_id`); None:
    one process, nothing shared."""
    admin_reloads: int = 0
    """The shared reload-request counter last acted on."""
    admin_error: str | None = None
    """The last shared-state Redis error (None: the last read worked)."""
    _recent_sizes: dict[str, int] = field(default_factory=dict)
    _recent_lock: threading.Lock = field(default_factory=threading.Lock)

    def remember(self, request_id: str, shown: dict[str, Any]) -> None:
        """Keep the request's shown items for ``/feedback``; the oldest are dropped (and
        counted) beyond ``config.local_requests`` entries (``request_cache``, or
        ``request_cache_shared`` when Redis holds a copy) or ``request_cache_bytes`` bytes."""
        size = record_bytes(request_id, shown)
        cfg = self.config
        with self._recent_lock:
            self._forget(request_id)
            self.recent[request_id] = shown
            self._recent_sizes[request_id] = size
            self.recent_bytes += size
            while self.recent and (
                len(self.recent) > cfg.local_requests or self.recent_bytes > cfg.request_cache_bytes
            ):
                self._forget(next(iter(self.recent)))
                self.recent_evicted += 1

    def _forget(self, request_id: str) -> None:
        """Drop one remembered request (holding ``_recent_lock``); no-op when unknown."""
        if self.recent.pop(request_id, None) is not None:
            self.recent_bytes -= self._recent_sizes.pop(request_id)

    def lookup(self, request_id: str) -> dict[str, Any] | None:
        with self._recent_lock:
            return self.recent.get(request_id)

    def change_admin(self, changes: dict[str, Any], reload: bool = False) -> None:
        """Apply an ``/admin`` change here and, with several processes, share it first:
        ``ValueError`` / ``TypeError`` (nothing changed) for invalid values; a Redis error is
        raised before anything is applied (an experiment change must reach every process or
        none). ``reload``: a reload request (the caller runs the check here)."""
        new = self.config.with_(**changes)  # validated before anything is shared
        if self.service is not None:
            from serving import shared

            state = shared.write_admin(self.settings, self.service, changes, reload=reload)
            self.admin_reloads = max(self.admin_reloads, int(state.get("reload", 0)))
            new = self.config.with_(**experiment_changes(self.config, state))
        self.config = new

    def sync_admin(self) -> bool:
        """Apply the shared admin state (several processes only): experiment settings, and a
        bundle check when another process took a reload request. False when Redis did not
        answer (logged once per outage; this process keeps its state)."""
        if self.service is None:
            return True
        from serving import shared

        try:
            state = shared.read_admin(self.settings, self.service)
        except Exception as exc:  # noqa: BLE001 - keep serving with what this process has
            if self.admin_error is None:
                log.warning("admin state not read from Redis (kept as is): %r", exc)
            self.admin_error = repr(exc)
            return False
        self.admin_error = None
        changes = experiment_changes(self.config, state)
        if changes:
            try:
                self.config = self.config.with_(**changes)
            except (ValueError, TypeError) as exc:
                log.error("shared admin state not applied: %s", exc)
        reloads = int(state.get("reload", 0))
        if reloads > self.admin_reloads:
            self.admin_reloads = reloads
            log.info("admin reload requested through another worker: %s", self.bundles.check())
        return True


def experiment_changes(config: ServingConfig, state: dict[str, Any]) -> dict[str, Any]:
    """The :data:`EXPERIMENT_KEYS` of a shared admin ``state`` that differ from ``config``."""
    return {k: v for k, v in state.items() if k in EXPERIMENT_KEYS and getattr(config, k) != v}


RECORD_OVERHEAD = 200
"""Bytes per remembered request beyond its objects' own sizes: its slots in the two dicts."""


def record_bytes(request_id: str, shown: dict[str, Any]) -> int:
    """Estimated bytes a remembered request holds (``sys.getsizeof`` of the record, its values,
    the items of its tuples, its id, plus :data:`RECORD_OVERHEAD`); ~10 KB at 100 items."""
    size = sys.getsizeof(shown) + sys.getsizeof(request_id) + RECORD_OVERHEAD
    for value in shown.values():
        size += sys.getsizeof(value)
        if isinstance(value, tuple | list):
            size += sum(sys.getsizeof(x) for x in value)
    return size


def build_engine(settings: Settings, cfg: ServingConfig) -> Engine:
    """The engine of one app: no bundle loaded yet (the app's lifespan checks the registry);
    logs under ``settings.home``; a hydrate pool of ``max(4, max_in_flight)`` threads."""
    from serving.logging import impressions_dir, requests_dir

    cache = None
    if cfg.item_cache_ttl_s > 0 and cfg.item_cache_max > 0:
        cache = ItemFeatureCache(cfg.item_cache_ttl_s, cfg.item_cache_max)
    service = None
    if cfg.processes > 1:
        from serving.shared import service_id

        service = service_id()
    return Engine(
        service=service,
        settings=settings,
        config=cfg,
        bundles=BundleManager(settings, cfg.smoke_users),
        impressions=ImpressionLog(impressions_dir(settings.home), cfg.log_flush_rows),
        metrics=Metrics(),
        breaker=Breaker(cfg.redis_cooldown_s),
        hydrate_pool=ThreadPoolExecutor(max(4, cfg.max_in_flight), thread_name_prefix="hydrate"),
        rng=np.random.default_rng(cfg.seed),
        requests=RequestLog(requests_dir(settings.home), cfg.log_flush_rows),
        item_cache=cache,
    )
