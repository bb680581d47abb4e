"""The ASGI app: ``create_app(settings, config)`` → a FastAPI application (run by uvicorn).

Endpoints:

- ``POST /recommend`` ``{"user_id": str, "k": int, "context": {"categories": [str]},
  "exclude": [str]}`` and ``GET /recommend?user_id=..&k=..&categories=a,b`` → the response of
  :func:`serving.pipeline.recommend` (items with scores, positions and propensities,
  ``request_id``, ``arm``, bundle versions, ``degraded``, ``fallbacks``, ``timings_ms``).
- ``POST /feedback`` ``{"request_id", "item_id", "event": "click"|"purchase"|"rating",
  "value"}`` → logs the outcome against the request, the first per (request, item, event) only
  (``{"logged": event_id, "duplicate": bool}``; a repeat is answered, not logged); 404 unknown
  request, 422 item not shown in it or a value out of range (click 1, purchase up to
  ``max_purchase_value``, rating 1..5): :mod:`serving.feedback`.
- ``GET /health/live`` (the process answers), ``GET /health/ready`` (a champion bundle is
  loaded and its index answers; else 503), ``GET /metrics`` (Prometheus text).
- ``POST /admin/reload`` (check the registry aliases now), ``GET|POST /admin/experiment``
  (challenger share and salt): need ``Authorization: Bearer $RECLOOP_ADMIN_TOKEN``; without a
  configured token they answer 404 (off). With several worker processes a change reaches all of
  them through Redis (:meth:`serving.engine.Engine.change_admin`; 503 and nothing changed when
  Redis does not take it).

Limits: bodies over ``max_body_bytes`` → 413; not all there within ``body_timeout_s`` → 408 (read
before the request takes an in-flight slot: a stalled client holds none); malformed JSON or JSON
nested deeper than 32 levels → 400; invalid fields (empty, over-long or odd user id, ``k``
outside [1, k_max], too many categories) → 422; more than ``max_in_flight`` requests at once →
503 at once (no queue). No champion loaded → 503. Requests remembered for ``/feedback`` are
bounded by ``request_cache`` entries and ``request_cache_bytes`` (evictions in ``/metrics``).

Background (started by the lifespan): the alias check every ``reload_interval_s`` and the
impression-log and request-log flush every ``log_flush_s``; both logs are flushed at shutdown.
Once started (bundles loaded), the lifespan moves every object alive to the garbage collector's
permanent generation (``gc.freeze``): the ~0.5 M objects of the imported libraries and the bundle
are then not traversed by full collections, which otherwise stall a worker ~0.1-0.2 s (past the
hydrate deadline: a tripped Redis breaker and seconds of degraded answers).

The app is assembled from: :mod:`serving.engine` (what the request stages share),
:mod:`serving.guard` (the in-flight guard), :mod:`serving.routes` (the handlers),
:mod:`serving.api_models` (request bodies), :mod:`serving.feedback` (``/feedback``) and
:mod:`serving.pipeline` (one ``/recommend`` through the stages).

Request log (:class:`serving.logging.RequestLog`, ``RECLOOP_HOME/serving/requests/``): one row
per ``/recommend`` call that passed validation and the in-flight guard: 200 (degraded or not),
500 (an unexpected failure after routing, logged with the routed arm; the body says only
"internal error"), 503 with a null arm (no champion loaded). Rejections before the pipeline (4xx,
413, overload 503) are only counted in ``/metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI

from pipelines.core.settings import Settings
from serving.config import ServingConfig

if TYPE_CHECKING:
    from serving.engine import Engine

log = logging.getLogger("recloop.serving.app")


def create_app(settings: Settings, config: ServingConfig | None = None, load: bool = True) -> Any:
    """The FastAPI app. ``load``: check the registry aliases at startup (the lifespan does it);
    tests may pass ``False`` and fill ``app.state.engine.bundles`` themselves."""
    from serving.engine import build_engine
    from serving.guard import InFlightGuard
    from serving.routes import register_routes

    cfg = config or ServingConfig.from_env()
    engine = build_engine(settings, cfg)
    app = FastAPI(title="recloop serving", version="1", lifespan=lifespan(engine, load),
                  docs_url=None, redoc_url=None, openapi_url=None)  # fmt: skip
    app.state.engine = engine
    app.add_middleware(InFlightGuard, engine=engine)
    register_routes(app, engine, anyio.CapacityLimiter(max(1, cfg.workers)))
    return app


def lifespan(engine: Engine, load: bool) -> Callable[[FastAPI], Any]:
    """The app's lifespan over ``engine``: at startup the shared admin state read (several
    processes), the alias check (when ``load``) and ``gc.freeze``; then the log flush every
    ``log_flush_s`` (at most 0.5 s), the admin state every ``ADMIN_SYNC_S`` (several processes)
    and the alias check every ``reload_interval_s`` (0: never); at shutdown both logs flushed
    and the hydrate pool shut down."""
    cfg = engine.config

    def flush() -> None:
        engine.impressions.flush_due(cfg.log_flush_s)
        if engine.requests is not None:
            engine.requests.flush_due(cfg.log_flush_s)

    @contextlib.asynccontextmanager
    async def run(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(engine.sync_admin)  # a restarted worker: the shared state
        if load:
            outcome = await anyio.to_thread.run_sync(engine.bundles.check)
            log.info("startup bundle check: %s", outcome)
        gc.collect()
        gc.freeze()  # long-lived startup objects: out of every later full collection
        tasks = [asyncio.create_task(periodic(min(cfg.log_flush_s, 0.5), flush, "flush"))]
        if engine.service is not None:  # several processes: the admin state through Redis
            from serving.engine import ADMIN_SYNC_S

            tasks.append(asyncio.create_task(periodic(ADMIN_SYNC_S, engine.sync_admin, "admin")))
        if cfg.reload_interval_s > 0:
            tasks.append(
                asyncio.create_task(periodic(cfg.reload_interval_s, engine.bundles.check, "reload"))
            )
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await anyio.to_thread.run_sync(engine.impressions.flush)
            if engine.requests is not None:
                await anyio.to_thread.run_sync(engine.requests.flush)
            engine.hydrate_pool.shutdown(wait=False, cancel_futures=True)

    return run


async def periodic(every_s: float, fn: Callable[[], Any], what: str) -> None:
    """Run ``fn`` on a worker thread every ``every_s`` seconds, for ever; a failure is logged
    and the loop goes on."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await anyio.to_thread.run_sync(fn)
        except Exception:  # noqa: BLE001 - a background failure must not end the loop
            log.exception("background %s failed", what)


def app_from_env() -> Any:
    """App factory for ``uvicorn --factory`` / several workers: settings and config from the
    environment (``RECLOOP_*``, ``RECLOOP_SERVE_*``, ``RECLOOP_ADMIN_TOKEN``); torch on one
    thread per process."""
    import torch

    torch.set_num_threads(1)
    settings = Settings.from_env()
    settings.ensure_dirs()
    return create_app(settings, ServingConfig.from_env())
