"""Served requests shared between worker processes through Redis, for ``/feedback``.

Each uvicorn worker keeps the requests it served in memory (``Engine.remember``); with several
worker processes a ``/feedback`` call can reach another worker than the one that served the
request. When the service runs more than one process (``ServingConfig.processes > 1``) every
served request is also written to Redis, off the request path (the engine's thread pool),
under ``recloop:served:<request_id>`` (JSON: request_id, user_id, items, propensities, arm,
model_version; expires after ``request_ttl_s``), and a feedback call that misses locally reads it
from there. The per-item feedback counter that makes repeated clicks distinct events
(``event_id`` suffix) is then a Redis hash ``recloop:feedback:<request_id>`` (HINCRBY), so two
workers never number the same click twice.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from pipelines.core.settings import Settings

log = logging.getLogger("recloop.serving.shared")

PREFIX = "recloop:served:"
FEEDBACK_PREFIX = "recloop:feedback:"
_FIELDS = ("request_id", "user_id", "items", "propensities", "arm", "model_version")


def _client(settings: Settings):
    from pipelines.features.online import redis_client

    return redis_client(settings)


def publish(settings: Settings, shown: dict[str, Any], ttl_s: float) -> bool:
    """Write one served request to Redis; False (logged) when Redis does not take it."""
    record = {k: list(shown[k]) if k in ("items", "propensities") else shown[k] for k in _FIELDS}
    try:
        _client(settings).set(PREFIX + shown["request_id"], json.dumps(record), ex=int(ttl_s))
        return True
    except Exception as exc:  # noqa: BLE001 - never fail a request for this
        log.warning("served request %s not shared through Redis: %r", shown["request_id"], exc)
        return False


def fetch(settings: Settings, request_id: str, retries: int = 3, wait_s: float = 0.02):
    """The served request from Redis (``items``/``propensities`` as tuples, ``feedback`` {}), or
    None; retried briefly, since the serving worker writes it off the request path."""
    for attempt in range(retries + 1):
        try:
            raw = _client(settings).get(PREFIX + request_id)
        except Exception as exc:  # noqa: BLE001
            log.warning("Redis unavailable looking up request %s: %r", request_id, exc)
            return None
        if raw is not None:
            rec = json.loads(raw)
            rec["items"], rec["propensities"] = tuple(rec["items"]), tuple(rec["propensities"])
            rec["feedback"] = {}
            return rec
        if attempt < retries:
            time.sleep(wait_s)
    return None


def feedback_index(settings: Settings, request_id: str, item_id: str, event: str,
                   ttl_s: float) -> int | None:  # fmt: skip
    """How many ``event`` feedbacks ``item_id`` of the request had before this one, counted
    across workers in Redis; None when Redis does not answer (the caller counts locally)."""
    key = FEEDBACK_PREFIX + request_id
    try:
        pipe = _client(settings).pipeline()
        pipe.hincrby(key, f"{item_id}|{event}", 1)
        pipe.expire(key, int(ttl_s))
        n, _ = pipe.execute()
        return int(n) - 1
    except Exception as exc:  # noqa: BLE001
        log.warning("Redis unavailable counting feedback of %s: %r", request_id, exc)
        return None
