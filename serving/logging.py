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

**Bounded, and never on the request path.** ``add`` only appends to the buffer (a request never
waits on the disk); the buffer holds at most ``max_pending_rows`` rows (default 20 x
``flush_rows``): rows beyond it are dropped and counted in ``dropped`` (a warning says how many,
at most every 30 s). A flush that fails (a full disk: ``OSError(ENOSPC)``) removes its partial
temporary file, puts the rows it did not write back at the head of the buffer (still within the
cap; the overflow is counted in ``dropped``) and counts the failure in ``errors``; the
background flush then waits (1, 2, 4 ... 60 s) before it tries again. Once written, a file is
fsynced before it is renamed into its partition.

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
import operator
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

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


class _Unwritten(Exception):
    """A flush stopped part way: ``rows`` (a list of the buffered dicts) were not written."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(rows)} rows not written")
        self.rows = rows


WARN_EVERY_S = 30.0
"""At most one warning about dropped rows or failed flushes per this many seconds."""
MAX_RETRY_S = 60.0
"""The longest wait of the background flush after failed flushes (1, 2, 4 ... s)."""


class ImpressionLog:
    """Thread-safe, bounded, buffered writer of INTERACTIONS rows (see the module docstring).

    Counters: ``rows_written``, ``files_written``, ``errors`` (failed flushes), ``dropped``
    (rows let go: buffer full)."""

    table_schema: pa.Schema = schema.INTERACTIONS
    what = "impression log"

    def __init__(
        self, root: Path, flush_rows: int = 2_000, max_pending_rows: int | None = None
    ) -> None:
        self.root = Path(root)
        self.flush_rows = flush_rows
        self.max_pending_rows = max_pending_rows or 20 * flush_rows
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self.rows_written = 0
        self.files_written = 0
        self.errors = 0
        self.dropped = 0
        self._failures_in_a_row = 0
        self._retry_at = 0.0
        self._warned_at = -WARN_EVERY_S
        self._last = time.monotonic()

    def add(self, rows: list[dict[str, Any]]) -> None:
        """Buffer rows (dicts with the INTERACTIONS columns); never writes (the app's background
        task does, :meth:`flush_due`). Rows that do not fit under ``max_pending_rows`` are
        dropped and counted in ``dropped``."""
        with self._lock:
            room = max(self.max_pending_rows - len(self._rows), 0)
            self._rows.extend(rows[:room])
            lost = max(len(rows) - room, 0)
            self.dropped += lost
        if lost:
            self._warn("%s: buffer full (%d rows): %d rows dropped, %d in all",
                       self.what, self.max_pending_rows, lost, self.dropped)  # fmt: skip

    def flush_due(self, every_s: float) -> list[Path]:
        """Flush when ``flush_rows`` rows wait or ``every_s`` passed since the last flush (not
        before the back-off after a failed flush has passed)."""
        if time.monotonic() < self._retry_at:
            return []
        if self.pending >= self.flush_rows or time.monotonic() - self._last >= every_s:
            return self.flush()
        return []

    @property
    def pending(self) -> int:
        return len(self._rows)

    def flush(self) -> list[Path]:
        """Write the buffered rows, one file per event date; returns the files written.

        On a write error the rows not written go back to the head of the buffer, within
        ``max_pending_rows`` (the rest counted in ``dropped``); the failure is counted in
        ``errors``."""
        with self._flush_lock:
            with self._lock:
                rows, self._rows = self._rows, []
            self._last = time.monotonic()
            if not rows:
                return []
            try:
                out = self._write(rows)
            except Exception as exc:  # noqa: BLE001 - a full disk must not lose the buffer
                self._failed(rows, exc)
                return []
            self._failures_in_a_row = 0
            self._retry_at = 0.0
            return out

    def _failed(self, rows: list[dict[str, Any]], exc: Exception) -> None:
        """Requeue what a failed flush did not write (bounded), count, back off, warn."""
        unwritten = exc.rows if isinstance(exc, _Unwritten) else rows
        cause = exc.__cause__ if isinstance(exc, _Unwritten) else exc
        with self._lock:
            merged = unwritten + self._rows
            self._rows = merged[: self.max_pending_rows]
            lost = len(merged) - len(self._rows)
            self.dropped += lost
        self.errors += 1
        self._failures_in_a_row += 1
        wait_s = min(2.0 ** (self._failures_in_a_row - 1), MAX_RETRY_S)
        self._retry_at = time.monotonic() + wait_s
        self._warn("%s: flush of %d rows failed (%s); %d kept for a retry in %.0f s, %d dropped "
                   "(%d in all)", self.what, len(unwritten), cause, self.pending, wait_s, lost,
                   self.dropped)  # fmt: skip

    def _warn(self, msg: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning(msg, *args)

    def _write(self, rows: list[dict[str, Any]]) -> list[Path]:
        """Write ``rows``, one file per event date; :class:`_Unwritten` (from the cause) with
        the rows of the dates not written when a write fails."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        groups = _day_tables(rows, self.table_schema)
        out = []
        for i, (day, _, table) in enumerate(groups):
            try:
                out.append(self._write_file(day, table, stamp))
            except Exception as exc:
                left = [rows[j] for _, at, _ in groups[i:] for j in at]
                raise _Unwritten(left) from exc
        log.info("%s: wrote %d rows to %d file(s)", self.what, len(rows), len(out))
        return out

    def _write_file(self, day: Any, table: pa.Table, stamp: str) -> Path:
        """One file of ``table`` (rows of event date ``day``) in its partition: written beside
        the partitions, fsynced, renamed in; the temporary file is removed on any failure."""
        folder = schema.partition_dir(self.root, day)
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{stamp}-{uuid.uuid4().hex[:12]}.parquet"
        tmp = self.root / f".tmp-{name}"  # beside the partitions, not inside one
        try:
            pq.write_table(table, tmp)
            schema.fsync_path(tmp)
            os.replace(tmp, folder / name)
        finally:
            tmp.unlink(missing_ok=True)
        schema.fsync_path(folder, directory=True)
        self.rows_written += table.num_rows
        self.files_written += 1
        return folder / name


def _day_tables(
    rows: list[dict[str, Any]], table_schema: pa.Schema
) -> list[tuple[Any, list[int], pa.Table]]:
    """``(UTC event date, the rows' positions, their table)`` for each date of ``rows``, dates
    in order. Built by pyarrow from the rows' values (~4 ms for 2,000 impression rows against
    ~12 through pandas: the flush runs on a thread of the serving process and holds the GIL the
    requests need, benchmarks/README.md, seventeenth session); rows it cannot take as they are
    (a column missing, a value of another type) go through :func:`pipelines.core.schema.conform`
    as before, which names the column it cannot read."""
    try:
        columns = zip(*map(operator.itemgetter(*table_schema.names), rows), strict=True)
        arrays = [pa.array(c, type=f.type) for c, f in zip(columns, table_schema, strict=True)]
        table = pa.Table.from_arrays(arrays, schema=table_schema)
    except (KeyError, TypeError, ValueError, pa.ArrowException):
        frame = pd.DataFrame(rows)
        frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
        groups = frame.groupby(frame["ts"].dt.date, sort=True)
        return [
            (day, part.index.tolist(), schema.conform(part.reset_index(drop=True), table_schema))
            for day, part in groups
        ]
    days = pc.cast(table["ts"], pa.date32()).to_pylist()
    at: dict[Any, list[int]] = {}
    for i, day in enumerate(days):
        at.setdefault(day, []).append(i)
    return [(day, at[day], table.take(at[day])) for day in sorted(at)]


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
