"""The HTTP routes, registered on the app by :func:`register_routes` (see ``serving.app`` for the
API). Every handler answers JSON; a rejected request (4xx) is counted as ``bad_request``.

Limits read from the config the app was built with: bodies over ``max_body_bytes`` → 413,
not all there within ``body_timeout_s`` → 408 (the guard reads ``/recommend`` and ``/feedback``
bodies before they take an in-flight slot, :mod:`serving.guard`); malformed JSON, or JSON nested
deeper than :data:`MAX_JSON_DEPTH` → 400 (never a 500: the parser's ``RecursionError`` is a 400);
invalid fields → 422 (:mod:`serving.api_models`). The admin token is compared in constant time.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from typing import Any

import anyio
import pandas as pd
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ValidationError

from serving.api_models import ExperimentBody, FeedbackBody, recommend_body, validation_errors
from serving.engine import Engine
from serving.feedback import FeedbackRejected, record_feedback
from serving.logging import request_row
from serving.pipeline import NoChampion, recommend
from serving.pipeline import Request as RecRequest

log = logging.getLogger("recloop.serving.app")

Arrival = tuple[float, pd.Timestamp]
"""When a handler started: ``(time.perf_counter(), UTC wall clock)``."""


def register_routes(app: FastAPI, engine: Engine, limiter: anyio.CapacityLimiter) -> None:
    """All of the service's routes and its HTTP error handler; ``limiter`` bounds the
    ``/recommend`` worker threads."""

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return bad(engine, exc.status_code, exc.detail)

    register_recommend_routes(app, engine, limiter)
    register_feedback_route(app, engine)
    register_health_routes(app, engine)
    register_admin_routes(app, engine)


def bad(engine: Engine, status: int, detail: Any, retry_after_s: int | None = None) -> JSONResponse:
    """A rejection (``{"detail": ...}`` with ``status``, and ``Retry-After`` when
    ``retry_after_s``), counted as ``bad_request``."""
    engine.metrics.count_request("none", "bad_request")
    headers = None if retry_after_s is None else {"Retry-After": str(retry_after_s)}
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects a request body may have (the API's is 3)."""


async def read_json(request: Request, max_bytes: int, timeout_s: float) -> Any:
    """The request body as JSON, read in chunks: ``HTTPException`` 413 past ``max_bytes``
    bytes, 408 when not all there within ``timeout_s`` seconds, 400 when it is not JSON or is
    nested deeper than :data:`MAX_JSON_DEPTH`."""
    size, chunks = 0, []
    try:
        with anyio.fail_after(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise HTTPException(413, f"body over {max_bytes} bytes")
                chunks.append(chunk)
    except TimeoutError as exc:
        raise HTTPException(408, f"request body not received within {timeout_s:g} s") from exc
    try:
        payload = json.loads(b"".join(chunks))
    except RecursionError as exc:
        raise HTTPException(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"malformed JSON: {exc}") from exc
    if nesting_over(payload, MAX_JSON_DEPTH):
        raise HTTPException(400, f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    return payload


def nesting_over(value: Any, limit: int) -> bool:
    """Whether ``value`` (parsed JSON) nests lists / dicts more than ``limit`` deep; iterative,
    so any depth is safe to ask about."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return False


# --- /recommend ---------------------------------------------------------------------------


def register_recommend_routes(app: FastAPI, engine: Engine, limiter: anyio.CapacityLimiter) -> None:
    """``POST /recommend`` (JSON body) and ``GET /recommend?user_id=..&k=..&categories=a,b``."""
    cfg = engine.config
    body_model = recommend_body(cfg)

    @app.post("/recommend")
    async def recommend_post(request: Request) -> JSONResponse:
        start = arrival()
        payload = await read_json(request, cfg.max_body_bytes, cfg.body_timeout_s)
        try:
            body = body_model.model_validate(payload)
        except ValidationError as exc:
            return bad(engine, 422, validation_errors(exc))
        return await serve(engine, limiter, body, start)

    @app.get("/recommend")
    async def recommend_get(request: Request) -> JSONResponse:
        start = arrival()
        q = request.query_params
        unknown = set(q.keys()) - {"user_id", "k", "categories"}
        if unknown:
            errors = [{"field": f, "error": "unknown parameter"} for f in sorted(unknown)]
            return bad(engine, 422, errors)
        payload: dict[str, Any] = {"user_id": q.get("user_id", "")}
        if "k" in q:
            payload["k"] = q["k"]
        if q.get("categories"):
            payload["context"] = {"categories": [c for c in q["categories"].split(",") if c]}
        try:
            body = body_model.model_validate(payload)
        except ValidationError as exc:
            return bad(engine, 422, validation_errors(exc))
        return await serve(engine, limiter, body, start)


def arrival() -> Arrival:
    return time.perf_counter(), pd.Timestamp.now(tz="UTC")


async def serve(
    engine: Engine, limiter: anyio.CapacityLimiter, body: BaseModel, start: Arrival
) -> JSONResponse:
    """Run :func:`serving.pipeline.recommend` for a validated body on a worker thread (on the
    event loop's own thread with ``RECLOOP_SERVE_THREADS=0``): 200 with
    its answer, 503 without a champion, 500 (logged, body says only "internal error") when it
    fails; counted and written to the request log either way."""
    req = RecRequest(
        user_id=body.user_id,
        k=body.k,
        categories=tuple(body.context.categories),
        exclude=tuple(body.exclude),
    )
    info: dict[str, Any] = {}
    try:
        if engine.config.workers == 0:  # on the event loop's thread: no hand-off
            await asyncio.sleep(0)  # one turn of the loop first: arrivals reach the guard
            out = recommend(engine, req, info)
        else:
            out = await anyio.to_thread.run_sync(recommend, engine, req, info, limiter=limiter)
    except NoChampion as exc:
        engine.metrics.count_request("none", "unavailable")
        log_request(engine, start, body.user_id, {"request_id": info.get("request_id")}, 503)
        return JSONResponse({"detail": str(exc)}, status_code=503)
    except Exception:  # noqa: BLE001 - answered 500, logged against the routed arm
        log.exception("recommend failed for request %s", info.get("request_id"))
        engine.metrics.count_request(info.get("arm") or "none", "error")
        log_request(engine, start, body.user_id, info, 500)
        return JSONResponse(
            {"detail": "internal error", "request_id": info.get("request_id")},
            status_code=500,
        )
    engine.metrics.count_request(out["arm"], "degraded" if out["degraded"] else "ok")
    log_request(engine, start, body.user_id, info, 200, out)
    return JSONResponse(out)


def log_request(engine: Engine, start: Arrival, user_id: str, info: dict[str, Any], status: int,
                out: dict[str, Any] | None = None) -> None:  # fmt: skip
    """One request-log row (when the engine keeps one); latency = handler start to now (ms)."""
    if engine.requests is None:
        return
    latency_ms = (time.perf_counter() - start[0]) * 1e3
    engine.requests.add([request_row(
        info.get("request_id") or "", start[1], user_id, info.get("arm"),
        info.get("model_version"), status, latency_ms,
        degraded=bool(out and out["degraded"]), fallbacks=out["fallbacks"] if out else (),
        n_items=len(out["items"]) if out else 0,
    )])  # fmt: skip


# --- /feedback, health, metrics -----------------------------------------------------------


def register_feedback_route(app: FastAPI, engine: Engine) -> None:
    """``POST /feedback`` (:func:`serving.feedback.record_feedback`): ``{"logged": event_id,
    "duplicate": bool}`` (a repeat is answered with the first one's id and not logged)."""
    cfg = engine.config

    @app.post("/feedback")
    async def feedback(request: Request) -> JSONResponse:
        payload = await read_json(request, cfg.max_body_bytes, cfg.body_timeout_s)
        try:
            body = FeedbackBody.model_validate(payload)
        except ValidationError as exc:
            return bad(engine, 422, validation_errors(exc))
        try:
            event_id, duplicate = await record_feedback(engine, body)
        except FeedbackRejected as exc:
            return bad(engine, exc.status, exc.detail, exc.retry_after_s)
        return JSONResponse({"logged": event_id, "duplicate": duplicate})


def register_health_routes(app: FastAPI, engine: Engine) -> None:
    """``GET /health/live``, ``GET /health/ready`` (503 until a champion answers) and
    ``GET /metrics`` (Prometheus text, with :func:`guard_metrics`)."""

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
        text = text.rstrip("\n") + "\n" + guard_metrics(engine)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


def features_partial(engine: Engine) -> str | None:
    """``<date> <UTC start>`` of a materialization under way or failed part way, as the last
    online read saw it (the item cache's marker state; None without a cache or a read)."""
    cache = engine.item_cache
    return None if cache is None else cache.partial


def guard_metrics(engine: Engine) -> str:
    """Prometheus lines of the request cache (entries, estimated bytes, evictions), the
    feedback repeats answered but not logged, the request bodies cut off by the deadline, and
    whether the online store holds a partial materialization (a mix of days)."""
    out = []
    for name, kind, value, what in (
        ("recloop_request_cache_entries", "gauge", len(engine.recent), "Requests kept for /feedback."),
        ("recloop_request_cache_bytes", "gauge", engine.recent_bytes, "Their estimated bytes."),
        ("recloop_request_cache_evicted_total", "counter", engine.recent_evicted,
         "Requests dropped from the cache (entry or byte bound)."),
        ("recloop_feedback_duplicates_total", "counter", engine.feedback_duplicates,
         "Repeated feedback answered but not logged."),
        ("recloop_body_timeouts_total", "counter", engine.body_timeouts,
         "Request bodies not received within the body deadline (408)."),
        ("recloop_features_partial", "gauge", int(features_partial(engine) is not None),
         "1 while the online store holds a materialization under way or failed part way."),
    ):  # fmt: skip
        out += [f"# HELP {name} {what}", f"# TYPE {name} {kind}", f"{name} {value}"]
    return "\n".join(out) + "\n"


# --- /admin -------------------------------------------------------------------------------


def register_admin_routes(app: FastAPI, engine: Engine) -> None:
    """``POST /admin/reload`` and ``GET|POST /admin/experiment``: ``Authorization: Bearer
    <admin token>``; 404 when the config has no admin token (off), 401 for a wrong one.

    With several worker processes a change is shared through Redis before it is applied
    (:meth:`serving.engine.Engine.change_admin`): every process answers and routes with it
    (503, nothing changed, when Redis does not take it); a GET reads the shared state first.
    Answers carry the answering process's ``pid``."""
    cfg = engine.config

    def denied(request: Request) -> JSONResponse | None:
        if not cfg.admin_enabled:
            off = "admin endpoints are off: set RECLOOP_ADMIN_TOKEN to enable them"
            return bad(engine, 404, off)
        got = request.headers.get("authorization", "")
        want = f"Bearer {cfg.admin_token}"
        if not hmac.compare_digest(got.encode(), want.encode()):
            return bad(engine, 401, "missing or wrong admin token")
        return None

    @app.post("/admin/reload")
    async def admin_reload(request: Request) -> JSONResponse:
        if (refused := denied(request)) is not None:
            return refused
        shared = True
        try:  # the other processes check at their next sync
            await anyio.to_thread.run_sync(lambda: engine.change_admin({}, reload=True))
        except Exception as exc:  # noqa: BLE001 - this process still checks
            log.warning("reload request not shared with the other workers: %r", exc)
            shared = False
        outcome = await anyio.to_thread.run_sync(engine.bundles.check)
        return JSONResponse({"outcome": outcome, "rejected": engine.bundles.rejected,
                             "all_workers": shared, "pid": os.getpid()})  # fmt: skip

    @app.api_route("/admin/experiment", methods=["GET", "POST"])
    async def admin_experiment(request: Request) -> JSONResponse:
        if (refused := denied(request)) is not None:
            return refused
        if request.method == "POST":
            payload = await read_json(request, cfg.max_body_bytes, cfg.body_timeout_s)
            try:  # what may change, and as what: api_models.ExperimentBody
                changes = ExperimentBody.model_validate(payload).changes()
            except ValidationError as exc:
                return bad(engine, 422, validation_errors(exc))
            try:
                await anyio.to_thread.run_sync(engine.change_admin, changes)
            except (ValueError, TypeError) as exc:
                return bad(engine, 422, str(exc))
            except Exception as exc:  # noqa: BLE001 - Redis: refused rather than half applied
                log.error("admin change not shared with the other workers: %r", exc)
                detail = "the change could not be shared with every worker (Redis); nothing changed"
                return JSONResponse({"detail": detail}, status_code=503)
        else:
            await anyio.to_thread.run_sync(engine.sync_admin)
        c = engine.config
        return JSONResponse({"experiment": c.experiment, "salt": c.salt,
                             "challenger_share": c.challenger_share,
                             "explore_rate": c.explore_rate, "pid": os.getpid()})  # fmt: skip
