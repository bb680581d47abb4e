"""The item-feature cache of the hydrate stage: candidates' online item features kept in the
process between requests (:class:`ItemFeatureCache`), read through
:mod:`pipelines.features.online`."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from pipelines.core.settings import Settings
from pipelines.features import online
from pipelines.features.tables import FEATURE_TYPES

log = logging.getLogger("recloop.serving.item_cache")


def _read_marked(
    settings: Settings, plan: online.ReadPlan, user_id: str, item_ids: list[str]
) -> tuple[bytes | None, list, list]:
    """``(materialization marker, user reply, item replies)`` in one round trip (the marker's
    ``GET`` first, so rows read after a marker are at least that fresh)."""
    commands = online.row_commands(plan, user_id, item_ids)
    marker, replies = online.hmget_rows_after_marker(online.redis_client(settings), commands)
    return marker, replies[0], replies[1:]


_UNSET = b"<unset>"


class _ItemRows:
    """Cached item rows of one feature service, from Redis under one materialization ``marker``:
    per feature a column array (``names`` order; capacity doubles), ``present`` (a row existed),
    ``stamp`` (``time.monotonic()`` of the read), ``row`` = item id → row. Its lock guards all."""

    def __init__(self, names: list[str], kinds: list[str], marker: bytes | None) -> None:
        self.names = list(names)
        self.marker = marker
        self.row: dict[str, int] = {}
        self.n = 0
        cap = 1024
        self.cols = [np.empty(cap, dtype=online.COLUMN_DTYPES[k]) for k in kinds]
        self.present = np.zeros(cap, dtype=bool)
        self.stamp = np.zeros(cap, dtype=np.float64)
        self.lock = threading.Lock()

    def lookup(self, ids: list[str], fresh_after: float) -> np.ndarray:
        """Rows ``(C,)`` int64 of ``ids``; ``-1`` where not cached or read before
        ``fresh_after`` (monotonic seconds)."""
        with self.lock:
            get = self.row.get
            rows = np.fromiter((get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
            hit = rows >= 0
            hit[hit] = self.stamp[rows[hit]] >= fresh_after
        return np.where(hit, rows, -1)

    def merge(
        self,
        rows: np.ndarray,
        miss_ids: list[str],
        fresh: list[np.ndarray],
        fresh_present: np.ndarray,
        now: float,
        store: bool,
        max_items: int,
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Candidates' columns ``{feature: (C,)}`` and ``present`` ``(C,)``: cached rows where
        ``rows >= 0``, the ``fresh`` values read for the others (in order); those are stored
        (when ``store`` and the table has room for ``max_items`` rows)."""
        hit = np.flatnonzero(rows >= 0)
        miss = np.flatnonzero(rows < 0)
        hr = rows[hit]
        n = len(rows)
        with self.lock:
            out: dict[str, np.ndarray] = {}
            for name, col, new in zip(self.names, self.cols, fresh, strict=True):
                a = np.empty(n, dtype=col.dtype)
                a[hit] = col[hr]
                a[miss] = new
                out[name] = a
            present = np.empty(n, dtype=bool)
            present[hit] = self.present[hr]
            present[miss] = fresh_present
            if store and miss_ids:
                self._store(miss_ids, fresh, fresh_present, now, max_items)
        return out, present

    def _store(self, ids, fresh, present, now: float, max_items: int) -> None:
        get = self.row.get
        rows = np.fromiter((get(i, -1) for i in ids), dtype=np.int64, count=len(ids))
        new = np.flatnonzero(rows < 0)
        if self.n + len(new) > max_items:  # full: serve reads uncached, keep what is cached
            keep = rows >= 0
            if not keep.any():
                return
            ids = [i for i, k in zip(ids, keep, strict=True) if k]
            rows, fresh, present = rows[keep], [c[keep] for c in fresh], present[keep]
            new = new[:0]
        if self.n + len(new) > len(self.present):
            cap = max(2 * len(self.present), self.n + len(new))
            self.cols = [np.concatenate([c, np.empty(cap - len(c), c.dtype)]) for c in self.cols]
            self.present = np.concatenate([self.present, np.zeros(cap - len(self.present), bool)])
            self.stamp = np.concatenate([self.stamp, np.zeros(cap - len(self.stamp))])
        rows[new] = np.arange(self.n, self.n + len(new))
        for k in new.tolist():
            self.row[ids[k]] = int(rows[k])
        self.n += len(new)
        for col, values in zip(self.cols, fresh, strict=True):
            col[rows] = values
        self.present[rows] = present
        self.stamp[rows] = now


class ItemFeatureCache:
    """Candidates' online item features, kept in the process between requests.

    Item features change once a day (materialization), yet every request hydrates hundreds of
    candidates: their decoded rows are kept per feature service, by item id, and a request reads
    from Redis only its user's row, the materialization state (``online.MARKER_KEY`` and
    ``online.PARTIAL_KEY``, :func:`~pipelines.features.online.marker_state`)
    and the candidates not cached or cached more than ``ttl_s`` seconds ago, in one round trip.
    A marker different from the one the cache was filled under (a new day materialized, Redis
    flushed) drops every cached row and the request reads all its candidates again; the TTL
    bounds the staleness of rows rewritten without a new marker (a forced re-materialization).
    At most ``max_items`` rows per service (beyond: read uncached). Thread-safe; ``hits`` /
    ``misses`` count candidate rows, ``resets`` the drops."""

    def __init__(self, ttl_s: float = 60.0, max_items: int = 2_000_000) -> None:
        self.ttl_s = ttl_s
        self.max_items = max_items
        self.marker: bytes | None = _UNSET
        self.hits = 0
        self.misses = 0
        self.resets = 0
        self._tables: dict[str, _ItemRows] = {}
        self._lock = threading.Lock()

    @property
    def partial(self) -> str | None:
        """``<date> <UTC start>`` of a materialization under way or failed part way, as the
        last read saw the store (:func:`pipelines.features.online.partial_of`)."""
        return None if self.marker is _UNSET else online.partial_of(self.marker)

    def sizes(self) -> dict[str, int]:
        """Item rows held per feature service (at most ``max_items`` each)."""
        with self._lock:
            tables = dict(self._tables)
        return {service: t.n for service, t in tables.items()}

    def _table(self, service: str, plan: online.ReadPlan) -> _ItemRows:
        names = plan.names["item"]
        with self._lock:
            t = self._tables.get(service)
            if t is None or t.names != names:
                t = _ItemRows(names, [FEATURE_TYPES[n] for n in names], self.marker)
                self._tables[service] = t
            return t

    def _reset(self, marker: bytes | None) -> None:
        with self._lock:
            if self.marker != marker:
                if self.marker is not _UNSET:
                    log.info("item feature cache: materialization %r -> %r, %d services dropped",
                             self.marker, marker, len(self._tables))  # fmt: skip
                if partial := online.partial_of(marker):
                    log.warning("online store: materialization %s under way or failed part way; "
                                "rows are a mix of days until it completes", partial)  # fmt: skip
                self.marker = marker
                self._tables = {}
                self.resets += 1

    def read(
        self, settings: Settings, plan: online.ReadPlan, service: str, user_id: str, ids: list[str]
    ) -> tuple[list, dict[str, np.ndarray], np.ndarray]:
        """``(user's HMGET reply, {item feature: (C,) array}, present (C,) bool)`` of ``ids``.
        Redis errors propagate (the caller's deadline and breaker apply as without a cache)."""
        for attempt in range(2):
            table = self._table(service, plan)
            now = time.monotonic()
            rows = table.lookup(ids, now - self.ttl_s)
            miss_ids = [ids[i] for i in np.flatnonzero(rows < 0)]
            marker, user_reply, item_replies = _read_marked(settings, plan, user_id, miss_ids)
            if marker == table.marker:
                break
            self._reset(marker)  # cached rows are of another materialization: read them all
            if attempt == 0:
                continue
            rows = np.full(len(ids), -1, dtype=np.int64)  # changed again meanwhile: no cache
            miss_ids, (marker, user_reply, item_replies) = (
                ids,
                _read_marked(settings, plan, user_id, ids),
            )
        fresh, fresh_present = online.decode_item_rows(plan, item_replies)
        store = marker == table.marker
        items, present = table.merge(
            rows, miss_ids, fresh, fresh_present, now, store, self.max_items
        )
        self.hits += len(ids) - len(miss_ids)  # approximate under threads: statistics only
        self.misses += len(miss_ids)
        return user_reply, items, present
