"""``POST /feedback``: an outcome (click, purchase, rating) logged against the request that showed
it — once.

The request's shown items are looked up in this worker's memory (``Engine.lookup``) and, when
the service runs several worker processes, in Redis (:mod:`serving.shared`): another worker may
have served it. The outcome goes to the impression log as a ``click``/``purchase``/``rating`` row
carrying the impression's position, arm, model version and propensity.

What cannot poison tomorrow's data (issue 17):

- **first only**: one row per (request, item, event). A repeat is answered 200 with the first
  row's ``event_id`` and ``"duplicate": true`` but not logged (counted in
  ``Engine.feedback_duplicates``). The first claim is this worker's own mark, made before any
  wait; with several processes, a Redis counter (HINCRBY, :func:`serving.shared.feedback_index`)
  tells whether another worker logged it already. When Redis does not answer, a worker only
  knows its own marks.
- **bounded values** (:func:`feedback_value`, 422 otherwise): a click is worth 1, a purchase
  (0, ``max_purchase_value``] (absent: 1), a rating [1, 5] (required).

A logged click, purchase or rating is also appended to the user's online recent-item sequence
(:func:`append_sequence`; kept whatever ``online_sequence`` says, so that turning the read on
finds it current), which the next request reads with ``online_sequence`` (seen items,
``covisit``); Redis down does not fail the feedback (logged, counted).
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import pandas as pd

from pipelines.features import sequences
from serving import shared
from serving.api_models import FeedbackBody
from serving.config import ServingConfig
from serving.engine import Engine
from serving.logging import EVENT_CODES, feedback_row

RATING_RANGE = (1.0, 5.0)
"""The ratings ``/feedback`` takes (the simulator's users rate 1..5)."""


RETRY_AFTER_S = 5
"""``Retry-After`` (s) of a 503 feedback answer (the shared request store unreachable)."""


POSITIVE_EVENTS = sequences.POSITIVE_EVENTS
"""Feedback events appended to the user's online sequence."""

log = logging.getLogger("recloop.serving.feedback")


class FeedbackRejected(Exception):
    """Feedback that cannot be logged: ``status`` (404 unknown request, 422 item not shown in
    it or a value out of range, 503 request not here and the shared store unreachable) and
    ``detail`` (the answer's message); ``retry_after_s``: when a retry may succeed (503)."""

    def __init__(self, status: int, detail: Any, retry_after_s: int | None = None) -> None:
        super().__init__(str(detail))
        self.status = status
        self.detail = detail
        self.retry_after_s = retry_after_s


def feedback_value(body: FeedbackBody, cfg: ServingConfig) -> float:
    """The value to log for ``body``: a click's is 1 (absent or 1), a purchase's in
    (0, ``cfg.max_purchase_value``] (absent: 1), a rating's in [1, 5] (required);
    :class:`FeedbackRejected` 422 otherwise."""
    v = body.value
    if body.event == "click":
        ok, why = v is None or v == 1.0, "a click's value is 1 (or absent)"
    elif body.event == "purchase":
        cap = cfg.max_purchase_value
        ok, why = v is None or 0.0 < v <= cap, f"a purchase's value is in (0, {cap:g}]"
    else:
        lo, hi = RATING_RANGE
        ok, why = v is not None and lo <= v <= hi, f"a rating's value is in [{lo:g}, {hi:g}]"
    if not ok:
        raise FeedbackRejected(422, [{"field": "value", "error": f"{why}, got {v!r}"}])
    return 1.0 if v is None else float(v)


async def _shown(engine: Engine, request_id: str) -> dict[str, Any]:
    """What request ``request_id`` showed (this worker's memory, else Redis when shared);
    :class:`FeedbackRejected` 404 when neither knows it, 503 (retry) when this worker does
    not and Redis does not answer: the request may have been served by another worker."""
    shown = engine.lookup(request_id)
    if shown is None and engine.config.processes > 1:  # served by another worker process
        try:
            shown = await anyio.to_thread.run_sync(shared.fetch, engine.settings, request_id)
        except shared.SharedUnavailable:
            raise FeedbackRejected(
                503,
                f"request_id {request_id!r} is not known to this worker and the shared request "
                "store (Redis) does not answer; retry later",
                retry_after_s=RETRY_AFTER_S,
            ) from None
        if shown is not None:
            engine.remember(request_id, shown)
    if shown is None:
        raise FeedbackRejected(404, f"unknown request_id {request_id!r} (expired or never served)")
    return shown


def _row(shown: dict[str, Any], item_id: str, event: str, value: float) -> dict[str, Any]:
    """The log row of the first ``event`` on ``item_id`` (``event_id``
    ``<request_id>-<position><code>``; a rating's code is ``r``)."""
    now = pd.Timestamp.now(tz="UTC")
    if event in EVENT_CODES:
        return feedback_row(shown, item_id, event, value, now, 0)
    row = feedback_row(shown, item_id, "click", value, now, 0)  # same impression facts
    return {**row, "event": event, "event_id": row["event_id"][:-1] + "r"}


async def record_feedback(engine: Engine, body: FeedbackBody) -> tuple[str, bool]:
    """Log one outcome unless it repeats one; returns its ``event_id`` in the impression log and
    whether it was a repeat (then nothing is logged and the id is the first one's).

    :class:`FeedbackRejected`: 422 for a value out of range or an item the request did not show,
    404 for an unknown (expired, never served) request."""
    value = feedback_value(body, engine.config)
    shown = await _shown(engine, body.request_id)
    if body.item_id not in shown["items"]:
        raise FeedbackRejected(
            422, f"item {body.item_id!r} was not shown in request {body.request_id!r}"
        )
    row = _row(shown, body.item_id, body.event, value)
    key = (body.item_id, body.event)
    marks = shown["feedback"]
    if key in marks:  # this worker saw it first: no wait between this check and the mark below
        engine.feedback_duplicates += 1
        return marks[key], True
    marks[key] = row["event_id"]
    if engine.config.processes > 1:
        before = await anyio.to_thread.run_sync(
            shared.feedback_index, engine.settings, body.request_id, body.item_id, body.event,
            engine.config.request_ttl_s,
        )  # fmt: skip
        if before:  # another worker logged it (None: Redis down, this worker's mark decides)
            engine.feedback_duplicates += 1
            return row["event_id"], True
    engine.impressions.add([row])
    if body.event in POSITIVE_EVENTS:  # the sequence is kept whether serving reads it or not
        when = sequences.epoch_ms(pd.Timestamp(row["ts"]))
        await anyio.to_thread.run_sync(
            append_sequence, engine, shown["user_id"], body.item_id, when
        )
    return row["event_id"], False


def append_sequence(engine: Engine, user_id: str, item_id: str, when_ms: int) -> bool:
    """Append ``item_id`` to ``user_id``'s online sequence (:func:`pipelines.features.sequences.
    append`: one round trip, atomic append + trim). Never raises: the breaker open or Redis
    failing (then the breaker is tripped) is logged and counted (``/metrics``:
    ``recloop_fallbacks_total{kind="sequence_append"}``) and the feedback stays logged."""
    from pipelines.features import online

    if engine.breaker.is_open():
        engine.metrics.count_fallback("sequence_append")
        return False
    length = sequences.SequenceSettings.from_env().length
    try:
        with online.connection_errors(engine.settings.redis_url):
            client = online.redis_client(engine.settings)
            sequences.append(client, user_id, item_id, when_ms, length)
        return True
    except Exception as exc:  # noqa: BLE001 - the feedback is logged whatever Redis does
        engine.breaker.trip(str(exc))
        engine.metrics.count_fallback("sequence_append")
        log.warning("feedback of %r not appended to the online sequence: %s", user_id, exc)
        return False
