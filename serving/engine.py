"""What the request stages share: the :class:`Engine` (settings, config, bundles, logs, metrics,
the Redis :class:`Breaker`, the hydrate pool, the exploration generator, the item-feature cache),
built once per app by :func:`build_engine`."""

from __future__ import annotations

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
    _recent_sizes: dict[str, int] = field(default_factory=dict)
    _recent_lock: threading.Lock = field(default_factory=threading.Lock)

    def remember(self, request_id: str, shown: dict[str, Any]) -> None:
        """Keep the request's shown items for ``/feedback``; the oldest are dropped (and
        counted) beyond ``request_cache`` entries or ``request_cache_bytes`` bytes."""
        size = record_bytes(request_id, shown)
        cfg = self.config
        with self._recent_lock:
            self._forget(request_id)
            self.recent[request_id] = shown
            self._recent_sizes[request_id] = size
            self.recent_bytes += size
            while self.recent and (
                len(self.recent) > cfg.request_cache or self.recent_bytes > cfg.request_cache_bytes
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
    return Engine(
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
