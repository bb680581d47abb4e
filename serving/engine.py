"""What the request stages share: the :class:`Engine` (settings, config, bundles, logs, metrics,
the Redis :class:`Breaker`, the hydrate pool, the exploration generator, the item-feature cache),
built once per app by :func:`build_engine`."""

from __future__ import annotations

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
    ``/feedback`` (:meth:`remember`, :meth:`lookup`)."""

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
    _recent_lock: threading.Lock = field(default_factory=threading.Lock)

    def remember(self, request_id: str, shown: dict[str, Any]) -> None:
        """Keep the request's shown items for ``/feedback`` (oldest dropped beyond the cap)."""
        with self._recent_lock:
            self.recent[request_id] = shown
            while len(self.recent) > self.config.request_cache:
                self.recent.pop(next(iter(self.recent)))

    def lookup(self, request_id: str) -> dict[str, Any] | None:
        with self._recent_lock:
            return self.recent.get(request_id)


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
