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

**Apart from the online features.** These records live in their own Redis database,
:func:`shared_url`: ``RECLOOP_SERVE_SHARED_REDIS_URL`` when set (another instance, e.g. one with
``maxmemory`` and ``allkeys-lru``), else the feature store's server with database 1 (on a Redis
Cluster, which has only database 0, the cluster itself). Every key here expires; the online
features (no TTL) are never written or evicted by them (``infra/redis.sh`` and
``infra/redis-cluster.sh`` run Redis with ``maxmemory`` and ``volatile-ttl``: only expiring keys
are evicted).

**Admin state** (:func:`write_admin`, :func:`read_admin`): what ``/admin`` changed (A/B share,
salt, experiment, exploration rate; a reload request counter) is a Redis hash
``recloop:admin:<service id>`` in the same database, read by every worker process
(:func:`service_id`: one id per ``recloop serve``, shared by its workers).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlparse, urlunparse

from pipelines.core.settings import Settings

log = logging.getLogger("recloop.serving.shared")

PREFIX = "recloop:served:"
FEEDBACK_PREFIX = "recloop:feedback:"
ADMIN_PREFIX = "recloop:admin:"
ADMIN_TTL_S = 7 * 86_400
"""Seconds an admin state outlives the last worker that read it (refreshed at every read)."""
SHARED_DB = 1
"""Database of the request records on the feature store's server (features: its own, 0)."""
_FIELDS = ("request_id", "user_id", "items", "propensities", "arm", "model_version")
WARN_EVERY_S = 10.0
"""Seconds between two warnings of one kind while Redis keeps failing (the others are counted)."""
_warned: dict[str, tuple[float, int]] = {}  # kind -> (monotonic time of its last warning, skipped)
_warn_lock = threading.Lock()


def _warn(kind: str, msg: str, *args: object) -> None:
    """``log.warning(msg, *args)`` at most once per :data:`WARN_EVERY_S` for one ``kind`` of
    failure; the ones left out are counted and reported with the next warning or when Redis
    answers again (:func:`_answered`): a Redis outage at 100 req/s is a few lines, not one a
    request."""
    now = time.monotonic()
    with _warn_lock:
        last, skipped = _warned.get(kind, (float("-inf"), 0))
        if now - last < WARN_EVERY_S:
            _warned[kind] = (last, skipped + 1)
            return
        _warned[kind] = (now, 0)
    extra = f" ({skipped} more not logged in the last {WARN_EVERY_S:.0f} s)" if skipped else ""
    log.warning(msg + "%s", *args, extra)


def _answered(kind: str) -> None:
    """Redis answered a ``kind`` call: report the failures not logged since the last warning and
    warn at once on the next failure."""
    if kind not in _warned:  # the common case, no lock
        return
    with _warn_lock:
        _, skipped = _warned.pop(kind, (0.0, 0))
    if skipped:
        log.warning("Redis answers again (%s): %d failures not logged since the last warning",
                    kind, skipped)  # fmt: skip


def shared_url(settings: Settings, env: Mapping[str, str] | None = None) -> str:
    """Where request records, feedback counters and admin state live:
    ``RECLOOP_SERVE_SHARED_REDIS_URL``, else ``settings.redis_url`` with database
    :data:`SHARED_DB` (credentials and host kept); a Redis Cluster's own URL (database 0, the
    only one; every key here expires, and ``infra/redis-cluster.sh`` evicts only those)."""
    from pipelines.features.redis_client import is_cluster_url

    env = os.environ if env is None else env
    if env.get("RECLOOP_SERVE_SHARED_REDIS_URL"):
        return env["RECLOOP_SERVE_SHARED_REDIS_URL"]
    if is_cluster_url(settings.redis_url):
        return settings.redis_url
    return urlunparse(urlparse(settings.redis_url)._replace(path=f"/{SHARED_DB}"))


def _client(settings: Settings):
    from pipelines.features.online import redis_client

    return redis_client(dataclasses.replace(settings, redis_url=shared_url(settings)))


def publish(settings: Settings, shown: dict[str, Any], ttl_s: float) -> bool:
    """Write one served request to Redis; False (logged) when Redis does not take it."""
    record = {k: list(shown[k]) if k in ("items", "propensities") else shown[k] for k in _FIELDS}
    try:
        _client(settings).set(PREFIX + shown["request_id"], json.dumps(record), ex=int(ttl_s))
    except Exception as exc:  # noqa: BLE001 - never fail a request for this
        _warn("publish", "served request %s not shared through Redis: %r", shown["request_id"], exc)
        return False
    _answered("publish")
    return True


class SharedUnavailable(RuntimeError):
    """The shared request store (Redis) did not answer: a request may exist there unseen."""


def fetch(settings: Settings, request_id: str, retries: int = 3, wait_s: float = 0.02):
    """The served request from Redis (``items``/``propensities`` as tuples, ``feedback`` {}), or
    None when Redis answers that it has none (retried briefly, since the serving worker writes
    it off the request path). :class:`SharedUnavailable` when Redis does not answer: the
    request may exist, so the caller must not call it unknown."""
    for attempt in range(retries + 1):
        try:
            raw = _client(settings).get(PREFIX + request_id)
        except Exception as exc:  # noqa: BLE001
            _warn("fetch", "Redis unavailable looking up request %s: %r", request_id, exc)
            raise SharedUnavailable(f"the shared request store did not answer: {exc!r}") from exc
        _answered("fetch")
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
    except Exception as exc:  # noqa: BLE001
        _warn("feedback", "Redis unavailable counting feedback of %s: %r", request_id, exc)
        return None
    _answered("feedback")
    return int(n) - 1


def service_id() -> str:
    """One id per ``recloop serve``, the same in all its worker processes:
    ``RECLOOP_SERVE_ID`` when set, else the parent process (uvicorn's supervisor, which started
    the workers) as ``<pid>-<start time in clock ticks>`` (a pid alone is reused). A new
    ``recloop serve`` starts from its configuration; a worker restarted by the supervisor takes
    the running service's state."""
    if os.environ.get("RECLOOP_SERVE_ID"):
        return os.environ["RECLOOP_SERVE_ID"]
    ppid = os.getppid()
    try:
        with open(f"/proc/{ppid}/stat") as f:
            started = f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "0"
    return f"{ppid}-{started}"


def write_admin(settings: Settings, service: str, changes: Mapping[str, Any],
                reload: bool = False) -> dict[str, Any]:  # fmt: skip
    """Merge ``changes`` (JSON values) into the service's admin state (and count one reload
    request when ``reload``); returns the whole state. Redis errors are raised: an admin change
    that would reach one worker only is refused, not half applied."""
    key = ADMIN_PREFIX + service
    pipe = _client(settings).pipeline()
    if changes:
        pipe.hset(key, mapping={k: json.dumps(v) for k, v in changes.items()})
    if reload:
        pipe.hincrby(key, "reload", 1)
    pipe.expire(key, ADMIN_TTL_S)
    pipe.hgetall(key)
    return _decode(pipe.execute()[-1])


def read_admin(settings: Settings, service: str) -> dict[str, Any]:
    """The service's admin state (``{}``: nothing changed yet); its TTL refreshed. Redis errors
    are raised (the caller keeps what it has)."""
    key = ADMIN_PREFIX + service
    pipe = _client(settings).pipeline()
    pipe.hgetall(key)
    pipe.expire(key, ADMIN_TTL_S)
    return _decode(pipe.execute()[0])


def _decode(raw: Mapping[bytes, bytes]) -> dict[str, Any]:
    return {k.decode(): json.loads(v) for k, v in raw.items()}
