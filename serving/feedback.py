"""``POST /feedback``: an outcome (click, purchase) logged against the request that showed it.

The request's shown items are looked up in this worker's memory (``Engine.lookup``) and, when
the service runs several worker processes, in Redis (:mod:`serving.shared`): another worker may
have served it. The outcome goes to the impression log as a ``click``/``purchase`` row carrying
the impression's position, arm, model version and propensity. Repeated feedback on the same item
and event is numbered (``event_id`` suffix ``-2``, ``-3``, ...), counted across workers in Redis,
or by this worker alone when there is one process or Redis does not answer.
"""

from __future__ import annotations

from typing import Any

import anyio
import pandas as pd

from serving import shared
from serving.api_models import FeedbackBody
from serving.engine import Engine
from serving.logging import feedback_row


class FeedbackRejected(Exception):
    """Feedback that cannot be logged: ``status`` (404 unknown request, 422 item not shown in
    it) and ``detail`` (the answer's message)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def _shown(engine: Engine, request_id: str) -> dict[str, Any]:
    """What request ``request_id`` showed (this worker's memory, else Redis when shared);
    :class:`FeedbackRejected` (404) when neither knows it."""
    shown = engine.lookup(request_id)
    if shown is None and engine.config.processes > 1:  # served by another worker process
        shown = await anyio.to_thread.run_sync(shared.fetch, engine.settings, request_id)
        if shown is not None:
            engine.remember(request_id, shown)
    if shown is None:
        raise FeedbackRejected(404, f"unknown request_id {request_id!r} (expired or never served)")
    return shown


async def record_feedback(engine: Engine, body: FeedbackBody) -> str:
    """Log one outcome; returns its ``event_id`` in the impression log.

    :class:`FeedbackRejected`: 404 for an unknown (expired, never served) request, 422 for an
    item the request did not show."""
    shown = await _shown(engine, body.request_id)
    if body.item_id not in shown["items"]:
        raise FeedbackRejected(
            422, f"item {body.item_id!r} was not shown in request {body.request_id!r}"
        )
    n = None
    if engine.config.processes > 1:
        n = await anyio.to_thread.run_sync(
            shared.feedback_index, engine.settings, body.request_id, body.item_id, body.event,
            engine.config.request_ttl_s,
        )  # fmt: skip
    key = (body.item_id, body.event)
    if n is None:  # one process, or Redis down: this worker's own count
        n = shown["feedback"].get(key, 0)
    shown["feedback"][key] = n + 1
    now = pd.Timestamp.now(tz="UTC")
    row = feedback_row(shown, body.item_id, body.event, body.value, now, n)
    engine.impressions.add([row])
    return row["event_id"]
