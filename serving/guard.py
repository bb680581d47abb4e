"""The in-flight guard: an ASGI middleware in front of the recommendation endpoints.

At most ``max_in_flight`` requests to ``/recommend`` and ``/feedback`` at once; the next one gets
503 (``retry-after: 1``) at once, with no queue, and is counted as ``rejected``. A declared body
over ``max_body_bytes`` (or a malformed ``content-length``) gets 413 before it is read. Other
paths pass through untouched.
"""

from __future__ import annotations

import json
from typing import Any

from serving.engine import Engine

PROTECTED = ("/recommend", "/feedback")
"""Path prefixes the guard counts and limits."""


class InFlightGuard:
    """Pure ASGI middleware: at most ``engine.config.max_in_flight`` requests to the
    recommendation endpoints at once; also refuses a declared body over ``max_body_bytes``."""

    def __init__(self, app: Any, engine: Engine) -> None:
        self.app = app
        self.engine = engine

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED):
            await self.app(scope, receive, send)
            return
        cfg = self.engine.config
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                if not value.isdigit() or int(value) > cfg.max_body_bytes:
                    await send_json(send, 413, {"detail": f"body over {cfg.max_body_bytes} bytes"})
                    return
        metrics = self.engine.metrics
        if metrics.in_flight >= cfg.max_in_flight:
            metrics.count_request("none", "rejected")
            await send_json(
                send, 503, {"detail": f"overloaded: {cfg.max_in_flight} requests in flight"},
                headers=[(b"retry-after", b"1")],
            )  # fmt: skip
            return
        metrics.in_flight += 1  # the event loop is one thread: no lock needed
        try:
            await self.app(scope, receive, send)
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
