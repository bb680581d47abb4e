"""The impression and feedback log: what the service showed, with propensities, and outcomes.

Rows follow the interactions contract (``pipelines.core.schema.INTERACTIONS``) so the daily pipeline
ingests them as tomorrow's events: an ``impression`` row per shown item (``value`` 1,
``position`` 0-based slot, ``arm``, ``model_version`` = ``bundle-<version>``, ``propensity`` in
(0, 1]) and a ``click`` / ``purchase`` row per feedback, carrying the impression's position, arm,
model version and propensity. Event ids are ``<request_id>-<position><i|c|p>`` (a second click
on the same item gets ``-2``, ``-3``, ... appended).

:class:`ImpressionLog` buffers rows in memory and flushes them from the app's background task (checked twice a second: when ``flush_rows``
rows wait or ``flush_s`` seconds passed; and at shutdown) into
``RECLOOP_HOME/serving/impressions/date=D/part-<time>-<uuid>.parquet``, one new file per flush
and per event date, written beside the partition and renamed into it (atomic: a reader never
sees half a file). Copy or point the pipeline's ``data/interactions/date=D/`` at these files
to close the loop.

**The request log** (:class:`RequestLog`, the A/B analysis's service-guardrail feed): one row per
``/recommend`` call that reached the pipeline (validated and admitted; :data:`REQUESTS`
columns) in ``RECLOOP_HOME/serving/requests/date=D/part-<time>-<uuid>.parquet``, partitioned by
the wall-clock UTC date of the request's arrival, buffered and flushed exactly like the impression
log (same background task and schedule, flushed at shutdown, atomic renames). ``status`` is the
HTTP status answered: 200 (also when degraded), 500 (an unexpected failure after routing: ``arm``
and ``model_version`` are those of the routed bundle) or 503 with ``arm`` / ``model_version``
null (no champion bundle loaded, nothing to route to). Requests refused *before* the pipeline
(4xx for bad input, 413, the overload 503 of the in-flight guard) are not logged here: they are
only counted (``recloop_requests_total`` with ``arm="none"``), having no arm to charge them to.
``latency_ms`` is the server's total for the request: from the handler's start (the body read)
to the response being built, including the wait for a worker thread; ``fallbacks`` is the
comma-joined list of the response's fallbacks (``""`` for none).
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from pipelines.core import layout, schema
from pipelines.core.settings import Settings

log = logging.getLogger("recloop.serving.log")

EVENT_CODES = {"impression": "i", "click": "c", "purchase": "p"}


REQUESTS = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),  # arrival, wall clock
        pa.field("arm", pa.string()),  # champion | challenger; null: not routed (503)
        pa.field("model_version", pa.string()),  # bundle-<v>; null when not routed
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("status", pa.int32(), nullable=False),  # HTTP status answered
        pa.field("latency_ms", pa.float64(), nullable=False),  # server total, milliseconds
        pa.field("degraded", pa.bool_(), nullable=False),
        pa.field("fallbacks", pa.string(), nullable=False),  # comma-joined, "" for none
        pa.field("n_items", pa.int32(), nullable=False),  # items answered (0 on errors)
    ]
)
"""Columns of the request log (one row per ``/recommend`` call that reached the pipeline)."""


def impressions_dir(home: Path) -> Path:
    """``RECLOOP_HOME/serving/impressions`` (partitions ``date=D`` below it), for the workspace
    at ``home``: :func:`pipelines.core.layout.impressions_dir`."""
    return layout.impressions_dir(Settings(home=Path(home)))


def requests_dir(home: Path) -> Path:
    """``RECLOOP_HOME/serving/requests`` (partitions ``date=D`` below it, wall-clock dates), for
    the workspace at ``home``: :func:`pipelines.core.layout.requests_dir`."""
    return layout.requests_dir(Settings(home=Path(home)))


class ImpressionLog:
    """Thread-safe buffered writer of INTERACTIONS rows (see the module docstring)."""

    table_schema: pa.Schema = schema.INTERACTIONS
    what = "impression log"

    def __init__(self, root: Path, flush_rows: int = 2_000) -> None:
        self.root = Path(root)
        self.flush_rows = flush_rows
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self.rows_written = 0
        self.files_written = 0
        self.errors = 0
        self._last = time.monotonic()

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Buffer rows (dicts with the INTERACTIONS columns). Writing is left to
        :meth:`flush_due` (the app's background task), off the request path; only a buffer 20
        times over ``flush_rows`` (a stalled writer) is flushed here, bounding memory."""
        with self._lock:
            self._rows.extend(rows)
            overfull = len(self._rows) >= 20 * self.flush_rows
        if overfull:
            self.flush()

    def flush_due(self, every_s: float) -> list[Path]:
        """Flush when ``flush_rows`` rows wait or ``every_s`` passed since the last flush."""
        if self.pending >= self.flush_rows or time.monotonic() - self._last >= every_s:
            return self.flush()
        return []

    @property
    def pending(self) -> int:
        return len(self._rows)

    def flush(self) -> list[Path]:
        """Write the buffered rows, one file per event date; returns the files written.

        On a write error the rows go back to the buffer (counted in ``errors``)."""
        with self._flush_lock:
            with self._lock:
                rows, self._rows = self._rows, []
            self._last = time.monotonic()
            if not rows:
                return []
            try:
                return self._write(rows)
            except Exception:
                self.errors += 1
                log.exception("%s: flush of %d rows failed; kept for retry", self.what, len(rows))
                with self._lock:
                    self._rows = rows + self._rows
                return []

    def _write(self, rows: list[dict[str, Any]]) -> list[Path]:
        frame = pd.DataFrame(rows)
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
        out = []
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        for day, part in frame.groupby(frame["ts"].dt.date, sort=True):
            table = schema.conform(part.reset_index(drop=True), self.table_schema)
            folder = schema.partition_dir(self.root, day)
            folder.mkdir(parents=True, exist_ok=True)
            name = f"part-{stamp}-{uuid.uuid4().hex[:12]}.parquet"
            tmp = self.root / f".tmp-{name}"  # beside the partitions, not inside one
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)
            os.replace(tmp, folder / name)
            out.append(folder / name)
            self.rows_written += table.num_rows
            self.files_written += 1
        log.info("%s: wrote %d rows to %d file(s)", self.what, len(rows), len(out))
        return out


class RequestLog(ImpressionLog):
    """Thread-safe buffered writer of :data:`REQUESTS` rows (one per ``/recommend`` call that
    reached the pipeline), partitioned by the wall-clock date of ``ts``; same buffering, flush
    schedule and atomic writes as :class:`ImpressionLog`."""

    table_schema = REQUESTS
    what = "request log"


def request_row(
    request_id: str,
    ts: pd.Timestamp,
    user_id: str,
    arm: str | None,
    model_version: str | None,
    status: int,
    latency_ms: float,
    degraded: bool = False,
    fallbacks: list[str] | tuple[str, ...] = (),
    n_items: int = 0,
) -> dict[str, Any]:
    """One :data:`REQUESTS` row (``latency_ms`` in milliseconds, ``fallbacks`` comma-joined)."""
    return {
        "request_id": request_id,
        "ts": ts,
        "arm": arm,
        "model_version": model_version,
        "user_id": user_id,
        "status": int(status),
        "latency_ms": float(latency_ms),
        "degraded": bool(degraded),
        "fallbacks": ",".join(fallbacks),
        "n_items": int(n_items),
    }


def impression_rows(
    request_id: str,
    ts: pd.Timestamp,
    user_id: str,
    item_ids: list[str],
    propensities: list[float],
    arm: str,
    model_version: str,
) -> list[dict[str, Any]]:
    """One ``impression`` row per shown item, slot = list position (0-based)."""
    return [
        {
            "event_id": f"{request_id}-{pos}i",
            "ts": ts,
            "user_id": user_id,
            "item_id": item,
            "event": "impression",
            "value": 1.0,
            "request_id": request_id,
            "position": pos,
            "arm": arm,
            "model_version": model_version,
            "propensity": float(p),
        }
        for pos, (item, p) in enumerate(zip(item_ids, propensities, strict=True))
    ]


def feedback_row(
    shown: dict[str, Any], item_id: str, event: str, value: float, ts: pd.Timestamp, n: int
) -> dict[str, Any]:
    """A ``click``/``purchase`` row for ``item_id`` of the request ``shown`` (its remembered
    impression facts); ``n`` = how many feedback rows of this kind the item already has."""
    pos = shown["items"].index(item_id)
    suffix = "" if n == 0 else f"-{n + 1}"
    return {
        "event_id": f"{shown['request_id']}-{pos}{EVENT_CODES[event]}{suffix}",
        "ts": ts,
        "user_id": shown["user_id"],
        "item_id": item_id,
        "event": event,
        "value": float(value),
        "request_id": shown["request_id"],
        "position": pos,
        "arm": shown["arm"],
        "model_version": shown["model_version"],
        "propensity": float(shown["propensities"][pos]),
    }
