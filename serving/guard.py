"""The in-flight guard: an ASGI middleware in front of the recommendation endpoints.

For ``/recommend`` and ``/feedback``, in this order:

1. a declared body over ``max_body_bytes`` (or a malformed ``content-length``) gets 413 before
   it is read;
2. the whole body is read, within ``body_timeout_s`` seconds (all of it, not per chunk: a client
   trickling a byte now and then is cut off too) and ``max_body_bytes`` (chunked bodies): 408 /
   413 otherwise (``connection: close``), counted as ``bad_request`` (a 408 also in
   ``Engine.body_timeouts``); a client that disconnects meanwhile gets nothing;
3. only then is an in-flight slot taken: at most ``max_in_flight`` requests at once, the next one
   gets 503 (``retry-after: 1``) at once, with no queue, counted as ``rejected``.

Reading the body before taking a slot is what keeps slow clients from locking everyone out: 40
connections that send headers and half a body, then stall, hold no slot (a body is at most
``max_body_bytes``, so buffering it costs little). The handler then reads the buffered body.
Other paths pass through untouched.
"""

from __future__ import annotations

import json
from typing import Any

import anyio

from serving.engine import Engine

PROTECTED = ("/recommend", "/feedback")
"""Path prefixes the guard counts and limits."""


class BodyRefused(Exception):
    """A body that is not read to its end: ``status`` 408 (too slow) or 413 (too big)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def read_body(receive: Any, max_bytes: int, timeout_s: float) -> bytes | None:
    """The request body from ASGI ``receive``, whole; None when the client disconnected.

    :class:`BodyRefused` 413 past ``max_bytes`` bytes, 408 when it is not all there within
    ``timeout_s`` seconds."""
    chunks: list[bytes] = []
    size = 0
    try:
        with anyio.fail_after(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > max_bytes:
                    raise BodyRefused(413, f"body over {max_bytes} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError as exc:
        raise BodyRefused(408, f"request body not received within {timeout_s:g} s") from exc


def replay(body: bytes, receive: Any) -> Any:
    """An ASGI ``receive`` that gives ``body`` as one message, then defers to ``receive``
    (which reports the disconnect)."""
    sent = False

    async def receive_again() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again


class InFlightGuard:
    """Pure ASGI middleware: reads the body of the recommendation endpoints (bounded in bytes
    and time), then admits at most ``engine.config.max_in_flight`` of them at once."""

    def __init__(self, app: Any, engine: Engine) -> None:
        self.app = app
        self.engine = engine

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED):
            await self.app(scope, receive, send)
            return
        cfg = self.engine.config
        metrics = self.engine.metrics
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if not value.isdigit() or int(value) > cfg.max_body_bytes:
                    metrics.count_request("none", "bad_request")
                    await send_json(send, 413, {"detail": f"body over {cfg.max_body_bytes} bytes"})
                    return
        try:
            body = await read_body(receive, cfg.max_body_bytes, cfg.body_timeout_s)
        except BodyRefused as exc:
            metrics.count_request("none", "bad_request")
            if exc.status == 408:
                self.engine.body_timeouts += 1
            await send_json(send, exc.status, {"detail": exc.detail},
                            headers=[(b"connection", b"close")])  # fmt: skip
            return
        if body is None:  # the client left
            return
        if metrics.in_flight >= cfg.max_in_flight:
            metrics.count_request("none", "rejected")
            await send_json(
                send, 503, {"detail": f"overloaded: {cfg.max_in_flight} requests in flight"},
                headers=[(b"retry-after", b"1")],
            )  # fmt: skip
            return
        metrics.in_flight += 1  # the event loop is one thread: no lock needed
        try:
            await self.app(scope, replay(body, receive), send)
        finally:
            metrics.in_flight -= 1


async def send_json(send: Any, status: int, body: dict, headers: list | None = None) -> None:
    """Answer an ASGI request with ``body`` as JSON (``status``, extra ``headers``)."""
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
