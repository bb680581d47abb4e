"""The ASGI app: ``create_app(settings, config)`` → a FastAPI application (run by uvicorn).

Endpoints:

- ``POST /recommend`` ``{"user_id": str, "k": int, "context": {"categories": [str]},
  "exclude": [str]}`` and ``GET /recommend?user_id=..&k=..&categories=a,b`` → the response of
  :func:`serving.pipeline.recommend` (items with scores, positions and propensities,
  ``request_id``, ``arm``, bundle versions, ``degraded``, ``fallbacks``, ``timings_ms``).
- ``POST /feedback`` ``{"request_id", "item_id", "event": "click"|"purchase", "value"}`` → logs
  the outcome against the request (404 unknown request, 422 item not shown in it).
- ``GET /health/live`` (the process answers), ``GET /health/ready`` (a champion bundle is
  loaded and its index answers; else 503), ``GET /metrics`` (Prometheus text).
- ``POST /admin/reload`` (check the registry aliases now), ``GET|POST /admin/experiment``
  (challenger share and salt): need ``Authorization: Bearer $RECLOOP_ADMIN_TOKEN``; without a
  configured token they answer 404 (off).

Limits: bodies over ``max_body_bytes`` → 413; malformed JSON → 400; invalid fields (empty,
over-long or odd user id, ``k`` outside [1, k_max], too many categories) → 422; more than
``max_in_flight`` requests at once → 503 at once (no queue). No champion loaded → 503.

Background (started by the lifespan): the alias check every ``reload_interval_s`` and the
impression-log and request-log flush every ``log_flush_s``; both logs are flushed at shutdown.
Once started (bundles loaded), the lifespan moves every object alive to the garbage collector's
permanent generation (``gc.freeze``): the ~0.5 M objects of the imported libraries and the bundle
are then not traversed by full collections, which otherwise stall a worker ~0.1-0.2 s (past the
hydrate deadline: a tripped Redis breaker and seconds of degraded answers).

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
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import anyio
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.core.settings import Settings
from serving import shared
from serving.bundle import BundleManager
from serving.config import ServingConfig

log = logging.getLogger("recloop.serving.app")

USER_ID_PATTERN = r"^[A-Za-z0-9_.:@\-]+$"
_PROTECTED = ("/recommend", "/feedback")


class InFlightGuard:
    """Pure ASGI middleware: at most ``limit`` requests to the recommendation endpoints at once;
    the next one gets 503 immediately. Also refuses a declared body over ``max_body`` (413)."""

    def __init__(self, app: Any, engine: Any) -> None:
        self.app = app
        self.engine = engine

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(_PROTECTED):
            await self.app(scope, receive, send)
            return
        cfg = self.engine.config
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if not value.isdigit() or int(value) > cfg.max_body_bytes:
                    await _send_json(send, 413, {"detail": f"body over {cfg.max_body_bytes} bytes"})
                    return
        metrics = self.engine.metrics
        if metrics.in_flight >= cfg.max_in_flight:
            metrics.count_request("none", "rejected")
            await _send_json(
                send, 503, {"detail": f"overloaded: {cfg.max_in_flight} requests in flight"},
                headers=[(b"retry-after", b"1")],
            )  # fmt: skip
            return
        metrics.in_flight += 1  # the event loop is one thread: no lock needed
        try:
            await self.app(scope, receive, send)
        finally:
            metrics.in_flight -= 1


async def _send_json(send: Any, status: int, body: dict, headers: list | None = None) -> None:
    raw = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(raw)).encode()), *(headers or [])],
        }
    )  # fmt: skip
    await send({"type": "http.response.body", "body": raw})


def create_app(settings: Settings, config: ServingConfig | None = None, load: bool = True) -> Any:
    """The FastAPI app. ``load``: check the registry aliases at startup (the lifespan does it);
    tests may pass ``False`` and fill ``app.state.engine.bundles`` themselves."""
    import numpy as np
    import pandas as pd

    from serving.logging import (
        ImpressionLog,
        RequestLog,
        feedback_row,
        impressions_dir,
        request_row,
        requests_dir,
    )
    from serving.metrics import Metrics
    from serving.pipeline import Breaker, Engine, ItemFeatureCache, NoChampion, recommend
    from serving.pipeline import Request as RecRequest

    cfg = config or ServingConfig.from_env()
    engine = Engine(
        settings=settings,
        config=cfg,
        bundles=BundleManager(settings, cfg.smoke_users),
        impressions=ImpressionLog(impressions_dir(settings.home), cfg.log_flush_rows),
        metrics=Metrics(),
        breaker=Breaker(cfg.redis_cooldown_s),
        hydrate_pool=ThreadPoolExecutor(max(4, cfg.max_in_flight), thread_name_prefix="hydrate"),
        rng=np.random.default_rng(cfg.seed),
        requests=RequestLog(requests_dir(settings.home), cfg.log_flush_rows),
        item_cache=(
            ItemFeatureCache(cfg.item_cache_ttl_s, cfg.item_cache_max)
            if cfg.item_cache_ttl_s > 0 and cfg.item_cache_max > 0
            else None
        ),
    )
    limiter = anyio.CapacityLimiter(cfg.workers)

    class Context(BaseModel):
        model_config = ConfigDict(extra="forbid")
        categories: list[str] = Field(default_factory=list, max_length=cfg.max_categories)

    class RecommendBody(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user_id: str = Field(min_length=1, max_length=cfg.max_user_id_len, pattern=USER_ID_PATTERN)
        k: int = Field(default=cfg.k_default, ge=1, le=cfg.k_max)
        context: Context = Field(default_factory=Context)
        exclude: list[str] = Field(default_factory=list, max_length=1000)

    class FeedbackBody(BaseModel):
        model_config = ConfigDict(extra="forbid")
        request_id: str = Field(min_length=1, max_length=64)
        item_id: str = Field(min_length=1, max_length=256)
        event: Literal["click", "purchase"] = "click"
        value: float = Field(default=1.0, ge=0.0, le=1e6)

    async def periodic(every_s: float, fn: Any, what: str) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await anyio.to_thread.run_sync(fn)
            except Exception:  # noqa: BLE001 - a background failure must not end the loop
                log.exception("background %s failed", what)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if load:
            outcome = await anyio.to_thread.run_sync(engine.bundles.check)
            log.info("startup bundle check: %s", outcome)
        gc.collect()
        gc.freeze()  # long-lived startup objects: out of every later full collection

        def flush() -> None:
            engine.impressions.flush_due(cfg.log_flush_s)
            if engine.requests is not None:
                engine.requests.flush_due(cfg.log_flush_s)

        tasks = [asyncio.create_task(periodic(min(cfg.log_flush_s, 0.5), flush, "flush"))]
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

    app = FastAPI(title="recloop serving", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)  # fmt: skip
    app.state.engine = engine
    app.add_middleware(InFlightGuard, engine=engine)

    def bad(status: int, detail: Any) -> JSONResponse:
        engine.metrics.count_request("none", "bad_request")
        return JSONResponse({"detail": detail}, status_code=status)

    async def read_json(request: Request) -> Any:
        size, chunks = 0, []
        async for chunk in request.stream():
            size += len(chunk)
            if size > cfg.max_body_bytes:
                raise HTTPException(413, f"body over {cfg.max_body_bytes} bytes")
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError) as exc:
            raise HTTPException(400, f"malformed JSON: {exc}") from exc

    def errors(exc: ValidationError) -> list[dict[str, Any]]:
        return [
            {"field": ".".join(str(p) for p in e["loc"]) or "body", "error": e["msg"]}
            for e in exc.errors(include_url=False)
        ]

    def arrival() -> tuple[float, Any]:
        return time.perf_counter(), pd.Timestamp.now(tz="UTC")

    def log_request(start: tuple[float, Any], user_id: str, info: dict[str, Any], status: int,
                    out: dict[str, Any] | None = None) -> None:  # fmt: skip
        """One request-log row; latency = handler start to now (ms)."""
        if engine.requests is None:
            return
        latency_ms = (time.perf_counter() - start[0]) * 1e3
        engine.requests.add([request_row(
            info.get("request_id") or "", start[1], user_id, info.get("arm"),
            info.get("model_version"), status, latency_ms,
            degraded=bool(out and out["degraded"]), fallbacks=out["fallbacks"] if out else (),
            n_items=len(out["items"]) if out else 0,
        )])  # fmt: skip

    async def serve(body: RecommendBody, start: tuple[float, Any]) -> JSONResponse:
        req = RecRequest(
            user_id=body.user_id,
            k=body.k,
            categories=tuple(body.context.categories),
            exclude=tuple(body.exclude),
        )
        info: dict[str, Any] = {}
        try:
            out = await anyio.to_thread.run_sync(recommend, engine, req, info, limiter=limiter)
        except NoChampion as exc:
            engine.metrics.count_request("none", "unavailable")
            log_request(start, body.user_id, {"request_id": info.get("request_id")}, 503)
            return JSONResponse({"detail": str(exc)}, status_code=503)
        except Exception:  # noqa: BLE001 - answered 500, logged against the routed arm
            log.exception("recommend failed for request %s", info.get("request_id"))
            engine.metrics.count_request(info.get("arm") or "none", "error")
            log_request(start, body.user_id, info, 500)
            return JSONResponse(
                {"detail": "internal error", "request_id": info.get("request_id")},
                status_code=500,
            )
        engine.metrics.count_request(out["arm"], "degraded" if out["degraded"] else "ok")
        log_request(start, body.user_id, info, 200, out)
        return JSONResponse(out)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return bad(exc.status_code, exc.detail)

    @app.post("/recommend")
    async def recommend_post(request: Request) -> JSONResponse:
        start = arrival()
        payload = await read_json(request)
        try:
            body = RecommendBody.model_validate(payload)
        except ValidationError as exc:
            return bad(422, errors(exc))
        return await serve(body, start)

    @app.get("/recommend")
    async def recommend_get(request: Request) -> JSONResponse:
        start = arrival()
        q = request.query_params
        unknown = set(q.keys()) - {"user_id", "k", "categories"}
        if unknown:
            return bad(422, [{"field": f, "error": "unknown parameter"} for f in sorted(unknown)])
        payload: dict[str, Any] = {"user_id": q.get("user_id", "")}
        if "k" in q:
            payload["k"] = q["k"]
        if q.get("categories"):
            payload["context"] = {"categories": [c for c in q["categories"].split(",") if c]}
        try:
            body = RecommendBody.model_validate(payload)
        except ValidationError as exc:
            return bad(422, errors(exc))
        return await serve(body, start)

    @app.post("/feedback")
    async def feedback(request: Request) -> JSONResponse:
        import pandas as pd

        payload = await read_json(request)
        try:
            body = FeedbackBody.model_validate(payload)
        except ValidationError as exc:
            return bad(422, errors(exc))
        shown = engine.lookup(body.request_id)
        multi = engine.config.processes > 1
        if shown is None and multi:  # served by another worker process: shared through Redis
            shown = await anyio.to_thread.run_sync(shared.fetch, engine.settings, body.request_id)
            if shown is not None:
                engine.remember(body.request_id, shown)
        if shown is None:
            return bad(404, f"unknown request_id {body.request_id!r} (expired or never served)")
        if body.item_id not in shown["items"]:
            return bad(422, f"item {body.item_id!r} was not shown in request {body.request_id!r}")
        key = (body.item_id, body.event)
        n = None
        if multi:
            n = await anyio.to_thread.run_sync(
                shared.feedback_index, engine.settings, body.request_id, body.item_id, body.event,
                engine.config.request_ttl_s,
            )  # fmt: skip
        if n is None:  # one process, or Redis down: this worker's own count
            n = shown["feedback"].get(key, 0)
        shown["feedback"][key] = n + 1
        row = feedback_row(shown, body.item_id, body.event, body.value,
                           pd.Timestamp.now(tz="UTC"), n)  # fmt: skip
        engine.impressions.add([row])
        return JSONResponse({"logged": row["event_id"]})

    @app.get("/health/live")
    async def live() -> dict:
        return {"status": "live"}

    @app.get("/health/ready")
    async def ready() -> JSONResponse:
        ok, why = engine.bundles.ready()
        return JSONResponse({"ready": ok, "detail": why}, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        b = engine.bundles
        text = engine.metrics.render(
            b.reloads, b.rejected, {a: (x.version if x else None) for a, x in b.arms.items()}
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    def admin(request: Request) -> JSONResponse | None:
        if not cfg.admin_enabled:
            return bad(404, "admin endpoints are off: set RECLOOP_ADMIN_TOKEN to enable them")
        got = request.headers.get("authorization", "")
        want = f"Bearer {cfg.admin_token}"
        if not hmac.compare_digest(got.encode(), want.encode()):
            return bad(401, "missing or wrong admin token")
        return None

    @app.post("/admin/reload")
    async def admin_reload(request: Request) -> JSONResponse:
        denied = admin(request)
        if denied is not None:
            return denied
        outcome = await anyio.to_thread.run_sync(engine.bundles.check)
        return JSONResponse({"outcome": outcome, "rejected": engine.bundles.rejected})

    @app.api_route("/admin/experiment", methods=["GET", "POST"])
    async def admin_experiment(request: Request) -> JSONResponse:
        denied = admin(request)
        if denied is not None:
            return denied
        if request.method == "POST":
            payload = await read_json(request)
            allowed = {"challenger_share", "salt", "experiment", "explore_rate"}
            if not isinstance(payload, dict) or set(payload) - allowed:
                return bad(422, f"expected an object with keys among {sorted(allowed)}")
            try:
                engine.config = engine.config.with_(**payload)
            except (ValueError, TypeError) as exc:
                return bad(422, str(exc))
        c = engine.config
        return JSONResponse({"experiment": c.experiment, "salt": c.salt,
                             "challenger_share": c.challenger_share,
                             "explore_rate": c.explore_rate})  # fmt: skip

    return app


def app_from_env() -> Any:
    """App factory for ``uvicorn --factory`` / several workers: settings and config from the
    environment (``RECLOOP_*``, ``RECLOOP_SERVE_*``, ``RECLOOP_ADMIN_TOKEN``); torch on one
    thread per process."""
    import torch

    torch.set_num_threads(1)
    settings = Settings.from_env()
    settings.ensure_dirs()
    return create_app(settings, ServingConfig.from_env())
