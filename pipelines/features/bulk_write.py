"""Bulk materialization: D's feature tables written into Feast's Redis layout from Arrow.

Feast's ``store.materialize`` turns every value into a ``ValueProto`` object in Python and
hands redis-py a dict per row (~4k rows/s at ``large``). This module writes the same bytes
(``RECLOOP_MATERIALIZE_WRITER=bulk``, :func:`pipelines.features.store.materialize_date`):

- key: ``serialize_entity_key`` v3 of the one string join key + project (as
  :func:`pipelines.features.online.redis_key`): built per column by Arrow kernels;
- fields: ``_ts:<view>`` (a serialized ``google.protobuf.Timestamp``: seconds, nanos) first,
  then murmur3 of ``"<view>:<feature>"`` per feature in the view's order, each holding a
  serialized ``ValueProto``. Scalars are encoded a column at a time: a tag byte and a
  base-128 varint (``int64_val``), 8 little-endian bytes (``double_val``) or a length varint
  and the UTF-8 bytes (``string_val``); a null (or NaN) is an empty ``ValueProto`` (``b""``),
  as Feast writes it;
- ``EXPIRE key <key_ttl_seconds>`` after each row's ``HSET`` when the online store config
  sets one (recloop's does not: Feast then sets no expiry, and neither does this).

Each chunk of rows (``chunk_rows``) becomes one RESP payload (``HSET key f1 v1 ...`` per row),
assembled by ``binary_join_element_wise`` with no Python loop over rows, sent as one write,
and its replies read (an error reply, e.g. Redis out of memory, raises). On a Redis Cluster
the chunk's rows are grouped by the master serving their key's slot, one write per master
(:func:`pipelines.features.redis_client.cluster_round_trip`).

Rows written: D's table (``features/<entity>/date=D/part-0.parquet``) restricted to Feast's
window ``[start, end]`` (both inclusive, as Feast's file offline store filters) and, should an
id occur twice, its latest row by ``(event_timestamp, created)``, as Feast keeps it. Feast reads
every partition of the source; recloop's tables hold only their own day's timestamp, so the
rows are the same. :func:`supported` says when a view is outside what this writes (another
feature type, a non-string or composite entity key, versioned view names): the caller then
uses Feast.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.features import online
from pipelines.features.redis_client import cluster_round_trip, is_cluster_client

log = logging.getLogger(__name__)

CHUNK_ROWS = 5_000
"""Rows per pipelined write (one RESP payload, ~2-3 MB at recloop's ~25 features)."""
KINDS = {"Int64": "int64", "Float64": "double", "String": "string"}
"""Feast feature dtype (``str(field.dtype)``) → the encoder of its ``ValueProto`` field."""
_TAG = {"int64": 0x20, "double": 0x29, "string": 0x12}  # field number << 3 | wire type
_MAX_VARINT = 10  # bytes of a 64-bit varint


@dataclass(frozen=True)
class ViewLayout:
    """What one feature view writes: ``view`` (its name: ``_ts`` field and hash prefix),
    ``join_key`` (the one string entity column), ``features`` ``((name, kind), ...)`` in the
    view's order (kind a value of :data:`KINDS`), ``key_ttl_s`` (``EXPIRE`` seconds, or None)."""

    view: str
    join_key: str
    features: tuple[tuple[str, str], ...]
    key_ttl_s: int | None = None


def supported(store: Any, view_name: str) -> ViewLayout | str:
    """The :class:`ViewLayout` of ``view_name`` in ``store``'s registry, or why it cannot be
    written in bulk (a sentence; the caller falls back to Feast's ``materialize``)."""
    config = store.config
    if getattr(config.registry, "enable_online_feature_view_versioning", False):
        return "versioned feature view names"
    if config.entity_key_serialization_version != 3:
        return f"entity_key_serialization_version {config.entity_key_serialization_version}"
    view = store.get_feature_view(view_name)
    columns = view.entity_columns
    if len(columns) != 1 or str(columns[0].dtype) != "String":
        return f"{view_name}: entity key {[(c.name, str(c.dtype)) for c in columns]}"
    if view.batch_source.field_mapping:
        return f"{view_name}: a source field mapping"
    features = []
    for f in view.features:
        if str(f.dtype) not in KINDS:
            return f"{view_name}.{f.name}: type {f.dtype}"
        features.append((f.name, KINDS[str(f.dtype)]))
    ttl = getattr(config.online_store, "key_ttl_seconds", None)
    return ViewLayout(view_name, columns[0].name, tuple(features), ttl or None)


# --- protobuf bytes, a column at a time ----------------------------------------------------


def _ragged(matrix: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """A binary array whose row ``i`` is ``matrix[i, :lengths[i]]`` (``matrix``: (n, w) uint8)."""
    keep = np.arange(matrix.shape[1]) < lengths[:, None]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    data = np.ascontiguousarray(matrix[keep])
    return pa.Array.from_buffers(
        pa.binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def tagged_varints(tag: int, values: np.ndarray, keep: np.ndarray) -> pa.Array:
    """Per row the tag byte and the base-128 varint of ``values`` (int64, negative ones as
    their 64-bit two's complement, as protobuf writes ``int64``), or ``b""`` where not ``keep``."""
    v = values.astype(np.int64).view(np.uint64)
    width = max(1, -(-int(v.max(initial=0)).bit_length() // 7))  # varint bytes of the largest
    groups = np.empty((len(v), 1 + width), dtype=np.uint8)
    groups[:, 0] = tag
    nbytes = np.ones(len(v), dtype=np.int64)
    for k in range(width):
        rest = v >> np.uint64(7 * k)
        groups[:, 1 + k] = (rest & np.uint64(0x7F)).astype(np.uint8)
        if k < width - 1:
            nbytes += (rest >> np.uint64(7)) > 0
    more = np.arange(width) < (nbytes - 1)[:, None]  # continuation bit on all but the last
    groups[:, 1:] |= more.astype(np.uint8) << 7
    return _ragged(groups, np.where(keep, 1 + nbytes, 0))


def encode_values(column: pa.Array | pa.ChunkedArray, kind: str) -> pa.Array:
    """Serialized ``ValueProto`` per row of ``column`` (``kind`` ``int64``, ``double`` or
    ``string``); ``b""`` (an empty ``ValueProto``) where null, and for a NaN double."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    valid = ~np.asarray(column.is_null(), dtype=bool)
    if kind == "int64":
        ints = pc.fill_null(column, 0).to_numpy(zero_copy_only=False)
        return tagged_varints(_TAG[kind], ints, valid)
    if kind == "double":
        floats = pc.fill_null(column.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False)
        rows = np.empty((len(floats), 9), dtype=np.uint8)
        rows[:, 0] = _TAG[kind]
        rows[:, 1:] = floats.astype("<f8").view(np.uint8).reshape(-1, 8)
        return _ragged(rows, np.where(valid & ~np.isnan(floats), 9, 0))
    if kind == "string":
        text = pc.fill_null(column.cast(pa.string()), "").cast(pa.binary())
        sizes = pc.binary_length(text).to_numpy(zero_copy_only=False)
        head = tagged_varints(_TAG[kind], sizes, valid)
        return pc.binary_join_element_wise(head, text, _b(b""))
    raise ValueError(f"no bulk encoder for {kind!r}: expected one of {sorted(_TAG)}")


def encode_stamps(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Serialized ``google.protobuf.Timestamp`` per row of a timestamp column: what Feast's
    ``Timestamp.FromDatetime`` of the row's (microsecond) datetime writes."""
    micros = pc.cast(column, pa.timestamp("us", tz="UTC"), safe=False).cast(pa.int64())
    us = np.asarray(micros.to_numpy(zero_copy_only=False), dtype=np.int64)
    seconds, nanos = np.divmod(us, 1_000_000)
    nanos *= 1_000
    return pc.binary_join_element_wise(
        tagged_varints(0x08, seconds, seconds != 0),
        tagged_varints(0x10, nanos, nanos != 0),
        _b(b""),
    )


def _b(value: bytes) -> pa.Scalar:
    return pa.scalar(value, pa.binary())


def entity_keys(ids: pa.Array | pa.ChunkedArray, join_key: str) -> pa.Array:
    """Feast's Redis key per id: ``serialize_entity_key`` v3 of one string key + project
    (byte for byte :func:`pipelines.features.online.redis_key`)."""
    text = ids.cast(pa.string()).cast(pa.binary())
    sizes = pc.binary_length(text).to_numpy(zero_copy_only=False).astype("<u4")
    size_bytes = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(4), len(sizes), [None, pa.py_buffer(sizes.tobytes())]
    ).cast(pa.binary())
    head = online.redis_key(join_key, "")[: -len(online.PROJECT) - 4]  # all but len(v), v, project
    return pc.binary_join_element_wise(
        _b(head), size_bytes, text, _b(online.PROJECT.encode()), _b(b"")
    )


# --- RESP commands ---------------------------------------------------------------------------


def _bulk(values: pa.Array) -> list[Any]:
    r"""The pieces of RESP bulk strings ``$<len>\r\n<value>\r\n``, per row (for :func:`_join`)."""
    sizes = pc.binary_length(values).cast(pa.string()).cast(pa.binary())
    return [b"$", sizes, b"\r\n", values, b"\r\n"]


def _bulk_const(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _join(pieces: list[Any]) -> pa.Array:
    """Row-wise concatenation of ``pieces`` (binary arrays, and bytes repeated on every row),
    adjacent constants merged first: one pass over the data."""
    merged: list[Any] = []
    for piece in pieces:
        if isinstance(piece, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += piece
        else:
            merged.append(piece)
    return pc.binary_join_element_wise(
        *(_b(x) if isinstance(x, bytes) else x for x in merged), _b(b"")
    )


def row_commands(batch: pa.Table | pa.RecordBatch, layout: ViewLayout) -> tuple[pa.Array, int]:
    """``(commands, replies per row)``: per row of ``batch`` the RESP bytes of Feast's write,
    ``HSET key _ts:<view> ts f1 v1 ...`` (then ``EXPIRE key ttl`` if ``layout.key_ttl_s``)."""
    from feast.infra.online_stores.helpers import _mmh3  # Feast's field hash (as online.py)

    keys = _bulk(entity_keys(batch.column(layout.join_key), layout.join_key))
    n_args = 2 + 2 * (1 + len(layout.features))
    pieces: list[Any] = [b"*%d\r\n$4\r\nHSET\r\n" % n_args, *keys]
    pieces += [_bulk_const(f"_ts:{layout.view}".encode())]
    pieces += _bulk(encode_stamps(batch.column("event_timestamp")))
    for name, kind in layout.features:
        pieces.append(_bulk_const(_mmh3(f"{layout.view}:{name}")))
        pieces += _bulk(encode_values(batch.column(name), kind))
    if layout.key_ttl_s:
        ttl = _bulk_const(str(int(layout.key_ttl_s)).encode())
        pieces += [b"*3\r\n$6\r\nEXPIRE\r\n", *keys, ttl]
    return _join(pieces), 2 if layout.key_ttl_s else 1


def _payload(commands: pa.Array) -> bytes:
    """The concatenated bytes of a binary array's rows."""
    offsets = np.frombuffer(commands.buffers()[1], dtype=np.int32)
    lo, hi = int(offsets[commands.offset]), int(offsets[commands.offset + len(commands)])
    return commands.buffers()[2].slice(lo, hi - lo).to_pybytes()


def stream(client: Any, payloads: Iterator[tuple[bytes, int]]) -> None:
    """Send each ``(payload, number of replies)`` on one connection of a single Redis and read
    its replies, the next payload built (by the iterator) while Redis executes the last one:
    payload ``k + 1`` is taken before the replies of ``k`` are read. An error reply raises
    (redis-py's ``ResponseError``; the connection, half read, is dropped)."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        waiting = 0
        for payload, replies in payloads:
            for _ in range(waiting):
                conn.read_response()
            conn.send_packed_command([payload])
            waiting = replies
        for _ in range(waiting):
            conn.read_response()
    except BaseException:
        conn.disconnect()
        raise
    finally:
        pool.release(conn)


def send_cluster(client: Any, commands: pa.Array, keys: list[bytes], per_row: int) -> None:
    """Send one chunk's row commands (``per_row`` commands each; ``keys``: the rows' keys) to a
    Redis Cluster, one write per master serving their slots, and read every reply
    (:func:`pipelines.features.redis_client.cluster_round_trip`: a moved slot map is read
    again and the chunk, idempotent, sent once more)."""

    def pack(idx: list[int]) -> bytes:  # a row's commands share its key's slot: same group
        rows = sorted({i // per_row for i in idx})
        return _payload(commands.take(pa.array(rows, pa.int64())))

    cluster_round_trip(client, [k for k in keys for _ in range(per_row)], pack)


# --- tables -----------------------------------------------------------------------------------


def read_rows(path: Path, join_key: str, start: dt.datetime, end: dt.datetime) -> pa.Table:
    """The rows of one feature table that Feast's materialize over ``[start, end]`` writes:
    ``event_timestamp`` within the window (both ends included), then per id the latest row by
    ``(event_timestamp, created)`` (the last in the file on a tie)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    ts = table.column("event_timestamp")
    inside = pc.and_(
        pc.greater_equal(ts, pa.scalar(start, ts.type)), pc.less_equal(ts, pa.scalar(end, ts.type))
    )
    table = table.filter(inside)
    if pc.count_distinct(table.column(join_key)).as_py() == table.num_rows:
        return table
    order = [(join_key, "ascending"), ("event_timestamp", "ascending")]
    if "created" in table.column_names:
        order.append(("created", "ascending"))
    table = table.append_column("__row", pa.array(np.arange(table.num_rows)))
    table = table.sort_by([*order, ("__row", "ascending")])
    ids = table.column(join_key).combine_chunks()
    last = pc.not_equal(ids.slice(0, len(ids) - 1), ids.slice(1))
    keep = pa.concat_arrays([last, pa.array([True])])
    return table.filter(keep).drop_columns(["__row"])


def write_table(client: Any, table: pa.Table, layout: ViewLayout, chunk_rows: int) -> int:
    """Write every row of ``table`` (a feature table: the join key, the features,
    ``event_timestamp``) into Redis in Feast's layout, ``chunk_rows`` rows per write.
    Returns the rows written."""

    def chunks() -> Iterator[tuple[pa.RecordBatch, pa.Array, int]]:
        for lo in range(0, table.num_rows, chunk_rows):
            part = table.slice(lo, chunk_rows).combine_chunks().to_batches()[0]
            yield part, *row_commands(part, layout)

    if not is_cluster_client(client):
        stream(client, ((_payload(c), n * len(c)) for _, c, n in chunks()))
        return table.num_rows
    for part, commands, per_row in chunks():
        keys = entity_keys(part.column(layout.join_key), layout.join_key).to_pylist()
        send_cluster(client, commands, keys, per_row)
    return table.num_rows


def materialize_tables(
    store: Any,
    client: Any,
    sources: list[tuple[Path, ViewLayout]],
    start: dt.datetime,
    end: dt.datetime,
    chunk_rows: int = CHUNK_ROWS,
) -> int:
    """What ``store.materialize(start, end, views)`` does, in bulk: each ``(table path,
    layout)``'s rows (:func:`read_rows`) written into Redis, then the view's materialization
    interval recorded in the registry as Feast records it. Returns the rows written."""
    total = 0
    for path, layout in sources:
        t0 = time.perf_counter()
        rows = write_table(client, read_rows(path, layout.join_key, start, end), layout, chunk_rows)
        view = store.get_feature_view(layout.view)
        store.registry.apply_materialization(view, store.project, start, end)
        seconds = time.perf_counter() - t0
        log.info("bulk materialize %s: %d rows in %.2fs (%.0f rows/s)", layout.view, rows,
                 seconds, rows / seconds if seconds > 0 else 0.0)  # fmt: skip
        total += rows
    return total
