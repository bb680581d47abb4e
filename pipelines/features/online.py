"""The online read path: Feast's Redis layout read directly, in one pipelined round trip.

Serving (``serving.hydrate``, ``serving.item_cache``) and :func:`online_features_fast` read the
online store through this module. :mod:`pipelines.features.store` writes it (Feast's
materialize), reads it through the Feast SDK (``online_features``), and uses this module's
client, error wrapper, read plans and result type.

Redis layout (Feast 0.67, ``feast/infra/online_stores/redis.py``): one hash per entity, key =
``serialize_entity_key(EntityKey)`` (v3) + project name (:func:`redis_key`); field = murmur3-32
of ``"<feature_view>:<feature>"`` (4 bytes, little endian: :func:`feature_field`) holding a
serialized ``ValueProto``, and ``"_ts:<feature_view>"`` holding a protobuf ``Timestamp``.
:data:`MARKER_KEY` (a plain string) holds the latest materialized date; :data:`PARTIAL_KEY`
the date being materialized, from the write's start until it completed (left behind by a failed
one: Redis then holds a mix of two days' rows until a rerun completes it).

One read, as serving does it (``C`` candidate items)::

    plan = read_plan(settings, "ranker_v1")              # from the registry, once per service
    commands = row_commands(plan, user_id, item_ids)     # 1 + C pre-packed HMGETs
    with connection_errors(settings.redis_url):
        replies = hmget_rows(redis_client(settings), commands)
    user = decode_user_row(plan, replies[0])             # {feature: value}, defaults filled
    cols, present = decode_item_rows(plan, replies[1:])  # per item feature a (C,) array

On a Redis Cluster (``RECLOOP_REDIS_URL=redis+cluster://...``,
:mod:`pipelines.features.redis_client`) the same keys (no hash tags: Feast's own, spread over the
slots) and the same commands, one write per node; the marker and partial keys hash to different
slots, so they are read with a ``GET`` each and written without a transaction
(:func:`complete_marker`).

Errors: a Redis that does not answer (refused, reset, hung past the 1 s socket timeouts)
surfaces as the builtin ``ConnectionError`` naming the URL, through the one wrapper
:func:`connection_errors`; callers catch ``ConnectionError``.

The read plans come from the Feast registry (:func:`pipelines.features.store.service_features`),
imported when a plan is first built: ``store`` imports this module, not the other way round.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.redact import redact_text, redact_url
from pipelines.core.settings import Settings
from pipelines.features import tables as ft
from pipelines.features.redis_client import cluster_round_trip, is_cluster_client

PROJECT = "recloop"
"""The Feast project: the suffix of every entity key in Redis."""
VIEWS = {"user": "user_features", "item": "item_features"}
"""Entity → its feature view."""
SOCKET_TIMEOUT_S = 1.0
"""Connect and read timeout of every Redis socket (s): a hung Redis fails fast."""
MARKER_KEY = f"recloop:{PROJECT}:materialized_date"
"""Redis string: the latest date materialized; an older date is not written over it."""
PARTIAL_KEY = f"recloop:{PROJECT}:materializing"
"""Redis string ``<date> <UTC start>``: a materialization under way or failed (cleared, with
:data:`MARKER_KEY` set, in one transaction when it completes: :func:`complete_marker`)."""
COLUMN_DTYPES = {"int64": np.int64, "float64": np.float64, "string": object}
"""Feature type (``pipelines.features.tables.FEATURE_TYPES``) → numpy dtype of its column."""

_lock = threading.Lock()
_clients: dict[str, Any] = {}
_plans: dict[tuple[Settings, str], ReadPlan] = {}
_decoders: dict[str, Any] = {}


# --- connection and errors ---------------------------------------------------------------


def redis_client(settings: Settings):
    """The process's redis-py client for ``settings.redis_url`` (one per URL): ``redis.Redis``,
    or ``RedisCluster`` for a ``redis+cluster://`` URL (:mod:`pipelines.features.redis_client`);
    1 s socket timeouts, no hidden retries."""
    from pipelines.features.redis_client import make_client

    with _lock:
        client = _clients.get(settings.redis_url)
    if client is None:  # built outside the lock: a cluster client connects to read its slot map
        client = make_client(settings.redis_url, SOCKET_TIMEOUT_S)
        with _lock:
            client = _clients.setdefault(settings.redis_url, client)
    return client


def forget_client(settings: Settings) -> None:
    """Drop the cached client of ``settings.redis_url`` (the next call builds a new one)."""
    with _lock:
        _clients.pop(settings.redis_url, None)


@contextlib.contextmanager
def connection_errors(url: str) -> Iterator[None]:
    """Within it, a Redis that does not answer raises ``ConnectionError`` naming ``url``
    (its password masked: :func:`pipelines.core.redact.redact_url`).

    Turned into it: redis-py's ``ConnectionError`` / ``TimeoutError`` (which wrap the socket's
    own errors) and socket-level ``ConnectionError`` / ``TimeoutError``. Anything else (a bad
    reply, a missing file) passes through unchanged."""
    import redis

    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError) as exc:
        shown = f"{redact_url(url)}: {redact_text(str(exc))}"  # the password never shown
        raise ConnectionError(f"Redis online store unreachable at {shown}") from exc


def check_redis(settings: Settings) -> None:
    """PING Redis; ``ConnectionError`` naming the URL within ~1 s if it does not answer."""
    with connection_errors(settings.redis_url):
        redis_client(settings).ping()


# --- key layout and read plans -----------------------------------------------------------


_PROJECT_BYTES = PROJECT.encode()
_ONE_STRING_KEY = struct.pack("<II", 1, 2)  # one join key, of ValueType STRING (= 2)


def redis_key(join_key: str, value: str) -> bytes:
    """Feast's Redis key of a single string entity (``serialize_entity_key`` v3 + project)."""
    k = join_key.encode()
    v = value.encode()
    return b"".join(
        (
            _ONE_STRING_KEY,
            struct.pack("<I", len(k)),
            k,
            struct.pack("<II", 2, len(v)),
            v,
            _PROJECT_BYTES,
        )
    )


def feature_field(view: str, feature: str) -> bytes:
    """The hash field (4 bytes) holding ``feature`` of ``view`` in an entity's Redis hash."""
    from feast.infra.online_stores.helpers import _mmh3  # Feast's own hash, not public API

    return _mmh3(f"{view}:{feature}")


@dataclass
class ReadPlan:
    """What one feature service reads, built from the registry once (:func:`read_plan`).

    Per entity (``"user"``, ``"item"``): ``names`` the service's features (service order),
    ``fields`` their hash fields in that order followed by ``b"_ts:<view>"`` (so a reply has
    ``len(names) + 1`` values, the timestamp last), ``ttl`` the view's ttl, and ``packed`` the
    RESP bytes of ``HMGET`` before the key and of the fields after it.
    """

    names: dict[str, list[str]]
    fields: dict[str, list[bytes]]
    ttl: dict[str, dt.timedelta]
    packed: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)


def read_plan(settings: Settings, service: str) -> ReadPlan:
    """The :class:`ReadPlan` of ``service``, read from the registry once per (settings, service)
    (applying the repository first if the registry does not exist)."""
    from pipelines.features import store

    key = (settings, service)
    with _lock:
        plan = _plans.get(key)
    if plan is None:
        names = store.service_features(settings, service)
        fields = {
            e: [feature_field(VIEWS[e], n) for n in names[e]] + [f"_ts:{VIEWS[e]}".encode()]
            for e in ("user", "item")
        }
        plan = ReadPlan(names=names, fields=fields, ttl=store.view_ttls(settings))
        for e, fl in fields.items():
            head = b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(fl))
            plan.packed[e] = (head, b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in fl))
        with _lock:
            _plans[key] = plan
    return plan


def forget_plans(settings: Settings) -> None:
    """Drop the cached read plans of ``settings`` (after ``apply``: the services may differ)."""
    with _lock:
        for key in [k for k in _plans if k[0] == settings]:
            _plans.pop(key)


# --- one round trip ----------------------------------------------------------------------

Command = tuple[tuple[bytes, bytes], bytes]
"""One HMGET: ``(plan.packed[entity], key)``."""


def row_commands(plan: ReadPlan, user_id: str, item_ids: list[str]) -> list[Command]:
    """The HMGETs of the user's row, then each item's row (``1 + C`` commands)."""
    return [(plan.packed["user"], redis_key("user_id", user_id))] + [
        (plan.packed["item"], redis_key("item_id", i)) for i in item_ids
    ]


def _pack(commands: list[Command]) -> bytes:
    return b"".join(
        b"%s$%d\r\n%s\r\n%s" % (head, len(key), key, fields) for (head, fields), key in commands
    )


def _exchange(client: Any, payload: bytes, n_replies: int) -> list:
    """Send ``payload`` as one write on a pooled connection and read ``n_replies`` replies."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([payload])
        return [conn.read_response() for _ in range(n_replies)]
    except BaseException:
        conn.disconnect()  # a half-read reply stream must not go back to the pool
        raise
    finally:
        pool.release(conn)


def hmget_rows(client: Any, commands: list[Command]) -> list[list[bytes | None]]:
    """Replies of ``commands`` (one per command: ``len(names) + 1`` raw values, ``None`` where
    absent), sent as one pre-packed write.

    The same commands a redis-py pipeline sends (so the same as Feast's read), with the constant
    field list encoded once per service instead of once per key. On a Redis Cluster, one write
    per node serving the keys' slots (:func:`pipelines.features.redis_client.cluster_round_trip`).
    redis-py errors propagate (wrap the call in :func:`connection_errors`)."""
    if is_cluster_client(client):
        keys = [key for _, key in commands]
        return cluster_round_trip(client, keys, lambda idx: _pack([commands[i] for i in idx]))
    return _exchange(client, _pack(commands), len(commands))


def marker_state(marker: bytes | None, partial: bytes | None) -> bytes | None:
    """One value for the online store's materialization state: ``marker`` (the latest date
    materialized) and, while a materialization is under way or after one failed, ``" ~"`` and
    :data:`PARTIAL_KEY`'s value. Equal states: the same rows (bar a forced rewrite)."""
    return marker if partial is None else (marker or b"") + b" ~" + partial


def partial_of(state: bytes | None) -> str | None:
    """The ``<date> <UTC start>`` of the materialization under way or failed in a
    :func:`marker_state` value, None when there is none."""
    if not state or b" ~" not in state:
        return None
    return state.split(b" ~", 1)[1].decode(errors="replace")


def hmget_rows_after_marker(
    client: Any, commands: list[Command]
) -> tuple[bytes | None, list[list[bytes | None]]]:
    """``(materialization state, replies of commands)`` in one write: ``MGET`` of
    :data:`MARKER_KEY` and :data:`PARTIAL_KEY` first (:func:`marker_state`), so rows read after
    a state are at least that fresh. On a Redis Cluster (the two keys hash to different slots)
    a ``GET`` of each instead of the ``MGET``, in the same round trip."""
    keys = [MARKER_KEY.encode(), PARTIAL_KEY.encode()]
    if is_cluster_client(client):
        gets = [b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n" % (len(k), k) for k in keys]

        def pack(idx: list[int]) -> bytes:  # the GETs (indices 0 and 1) first, then HMGETs
            return b"".join(gets[i] for i in idx if i < 2) + _pack(
                [commands[i - 2] for i in idx if i > 1]
            )

        replies = cluster_round_trip(client, keys + [key for _, key in commands], pack)
        return marker_state(replies[0], replies[1]), replies[2:]
    head = b"*3\r\n$4\r\nMGET\r\n" + b"".join(b"$%d\r\n%s\r\n" % (len(k), k) for k in keys)
    replies = _exchange(client, head + _pack(commands), 1 + len(commands))
    return marker_state(*replies[0]), replies[1:]


def read_marker(client: Any) -> tuple[bytes | None, bytes | None]:
    """``(MARKER_KEY, PARTIAL_KEY)`` values (``None`` where absent) in one round trip: one
    ``MGET``, or on a Redis Cluster a ``GET`` per key (different slots)."""
    if is_cluster_client(client):
        marker, partial = client.mget_nonatomic(MARKER_KEY, PARTIAL_KEY)
    else:
        marker, partial = client.mget(MARKER_KEY, PARTIAL_KEY)
    return marker, partial


def complete_marker(client: Any, date: str | None) -> None:
    """A materialization completed: :data:`MARKER_KEY` set to ``date`` (unless None: an older
    date does not go over a newer one) and :data:`PARTIAL_KEY` deleted, in one ``MULTI``/``EXEC``.

    On a Redis Cluster the two keys hash to different slots and no transaction spans slots:
    ``SET`` then ``DEL``, in that order, so a reader sees at worst the new marker still beside
    the partial key (for one round trip; :func:`marker_state` then reads as a change, and again
    when the key is gone), never the old marker without it (a finished day not announced)."""
    if is_cluster_client(client):
        if date is not None:
            client.set(MARKER_KEY, date)
        client.delete(PARTIAL_KEY)
        return
    tx = client.pipeline(transaction=True)
    if date is not None:
        tx.set(MARKER_KEY, date)
    tx.delete(PARTIAL_KEY)
    tx.execute()


# --- decoding ----------------------------------------------------------------------------


def decode_value(raw: bytes | None) -> Any:
    """A serialized ``ValueProto`` (scalar) → Python value; ``None`` for absent or null."""
    if not raw:
        return None
    from feast.protos.feast.types.Value_pb2 import Value

    val = Value.FromString(raw)
    kind = val.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    return getattr(val, kind)


_COLUMN_FIELDS = {"int64": "int64_val", "float64": "double_val", "string": "string_val"}


def column_decoders() -> tuple[Any, Any]:
    """Two protobuf message classes that decode many Feast values in one C-level parse (built
    once per process; ``serving.bundle.warm_up`` builds them at load).

    ``Column`` repeats every scalar field of ``feast.types.Value`` under the same number,
    unpacked: the concatenation of N serialized ``Value`` messages of one type is a valid
    ``Column`` whose repeated field holds the N values in order. ``Stamps`` holds repeated
    ``google.protobuf.Timestamp`` submessages (each raw ``_ts`` value framed as field 1).
    """
    with _lock:
        if not _decoders:
            _decoders.update(_build_decoders())
    return _decoders["Column"], _decoders["Stamps"]


def _build_decoders() -> dict[str, Any]:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

    fp = descriptor_pb2.FieldDescriptorProto
    ts_file = descriptor_pb2.FileDescriptorProto()
    timestamp_pb2.DESCRIPTOR.CopyToProto(ts_file)
    f = descriptor_pb2.FileDescriptorProto(
        name="recloop_fastpath.proto", package="recloop.fastpath", syntax="proto3"
    )
    f.dependency.append(ts_file.name)
    col = f.message_type.add(name="Column")
    for number, name, kind in (
        (1, "bytes_val", fp.TYPE_BYTES),
        (2, "string_val", fp.TYPE_STRING),
        (3, "int32_val", fp.TYPE_INT32),
        (4, "int64_val", fp.TYPE_INT64),
        (5, "double_val", fp.TYPE_DOUBLE),
        (6, "float_val", fp.TYPE_FLOAT),
        (7, "bool_val", fp.TYPE_BOOL),
    ):
        fld = col.field.add(name=name, number=number, type=kind, label=fp.LABEL_REPEATED)
        fld.options.packed = False
    f.message_type.add(name="Stamps").field.add(
        name="ts",
        number=1,
        type=fp.TYPE_MESSAGE,
        type_name=".google.protobuf.Timestamp",
        label=fp.LABEL_REPEATED,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(ts_file)
    pool.Add(f)
    find = pool.FindMessageTypeByName
    return {
        name: message_factory.GetMessageClass(find(f"recloop.fastpath.{name}"))
        for name in ("Column", "Stamps")
    }


def decode_column(raws: list[bytes | None], dtype: str) -> list[Any]:
    """Serialized ``Value``s of one feature of type ``dtype`` (``"int64"``, ``"float64"``,
    ``"string"``; ``None``/empty = absent) → Python values (``None`` where absent), in order."""
    column_cls, _ = column_decoders()
    present = [r for r in raws if r]
    values: list[Any] = []
    if present:
        try:
            parsed = column_cls.FromString(b"".join(present))
            values = list(getattr(parsed, _COLUMN_FIELDS[dtype]))
        except Exception:  # noqa: BLE001 - any surprise: decode one by one below
            values = []
        if len(values) != len(present):  # another type or a null value: the exact, slow way
            return [decode_value(r) for r in raws]
    if len(present) == len(raws):
        return values
    it = iter(values)
    return [next(it) if r else None for r in raws]


def decode_stamps(raws: list[bytes | None]) -> list[int | None]:
    """Serialized ``Timestamp``s (``None``/empty = absent) → ns since the epoch or ``None``."""
    _, stamps_cls = column_decoders()
    present = [r for r in raws if r]
    framed = b"".join(b"\x0a" + bytes((len(r),)) + r for r in present)  # each < 128 bytes
    nanos = [t.seconds * 1_000_000_000 + t.nanos for t in stamps_cls.FromString(framed).ts]
    if len(nanos) == len(raws):
        return nanos
    stamps = iter(nanos)
    return [next(stamps) if r else None for r in raws]


def decode_user_row(plan: ReadPlan, reply: list[bytes | None]) -> dict[str, Any]:
    """The user's HMGET reply → ``{feature: value}`` over ``plan.names["user"]``, defaults
    (``tables.DEFAULTS``) where absent; one protobuf parse per value type, not per feature."""
    names = plan.names["user"]
    by_kind: dict[str, list[int]] = {}
    for j, name in enumerate(names):
        by_kind.setdefault(ft.FEATURE_TYPES[name], []).append(j)
    values: dict[int, Any] = {}
    for kind, cols in by_kind.items():
        decoded = decode_column([reply[j] for j in cols], kind)
        values.update(zip(cols, decoded, strict=True))
    return {n: ft.DEFAULTS[n] if values[j] is None else values[j] for j, n in enumerate(names)}


def decode_item_rows(
    plan: ReadPlan, replies: list[list[bytes | None]]
) -> tuple[list[np.ndarray], np.ndarray]:
    """Items' HMGET replies (``M`` of them) → per item feature (``plan.names["item"]`` order) an
    ``(M,)`` array (dtype from :data:`COLUMN_DTYPES`; defaults where absent), and ``present``
    ``(M,)`` bool (the item has a row in Redis: its timestamp field is set)."""
    cols: list[np.ndarray] = []
    for j, name in enumerate(plan.names["item"]):
        kind = ft.FEATURE_TYPES[name]
        vals = decode_column([r[j] for r in replies], kind)
        default = ft.DEFAULTS[name]
        filled = [default if v is None else v for v in vals]
        cols.append(np.array(filled, dtype=COLUMN_DTYPES[kind]))
    ts_col = len(plan.names["item"])
    present = np.fromiter((bool(r[ts_col]) for r in replies), dtype=bool, count=len(replies))
    return cols, present


# --- the DataFrame result (both read paths) ----------------------------------------------


@dataclass
class OnlineFeatures:
    """Online features of one user and its candidate items, with freshness flags.

    ``user``: feature name → value (defaults filled when missing). ``items``: one row per
    requested item in request order: ``item_id``, the item features, ``event_timestamp``
    (UTC, NaT when missing), ``missing`` (no row in Redis: defaults filled) and ``stale``
    (the row is older than the view's ttl at ``now``; Feast does not apply ttl online).
    ``read_ms``: the Redis read (ms); ``path``: ``"feast"`` or ``"fast"``.
    """

    user_id: str
    user: dict[str, Any]
    user_event_timestamp: pd.Timestamp | None
    user_missing: bool
    user_stale: bool
    items: pd.DataFrame
    now: pd.Timestamp
    read_ms: float = 0.0
    path: str = "feast"
    ttl: dt.timedelta = field(default=dt.timedelta(days=2))

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def n_missing_items(self) -> int:
        return int(self.items["missing"].sum())

    @property
    def n_stale_items(self) -> int:
        return int(self.items["stale"].sum())


_PANDAS_DTYPE = {"int64": "int64", "float64": "float64", "string": object}


def utc_now(now: dt.datetime | pd.Timestamp | None) -> pd.Timestamp:
    """``now`` as a UTC timestamp (naive = UTC); the wall clock when ``None``."""
    if now is None:
        return pd.Timestamp.now(tz="UTC")
    ts = pd.Timestamp(now)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def assemble_features(
    user_id: str,
    item_ids: list[str],
    plan: ReadPlan,
    user_vals: dict[str, Any],
    user_ts: pd.Timestamp | None,
    item_cols: dict[str, list[Any]],
    item_ts_ns: list[int | None],
    now: pd.Timestamp,
) -> OnlineFeatures:
    """Fill defaults, compute missing/stale flags (ttl from ``plan``), build the result.

    ``user_vals``: raw user values (``None`` = absent); ``item_cols``: per item feature the
    ``C`` raw values; ``item_ts_ns``: each item's event timestamp in ns since the epoch,
    ``None`` if missing.
    """
    names, ttl = plan.names, plan.ttl
    user_missing = user_ts is None
    user = {
        n: (ft.DEFAULTS[n] if user_vals.get(n) is None else user_vals[n]) for n in names["user"]
    }
    user_stale = (not user_missing) and (now - user_ts) > ttl["user"]
    data: dict[str, Any] = {"item_id": pd.Series(item_ids, dtype=object)}
    for n in names["item"]:
        col = item_cols[n]
        if any(v is None for v in col):
            default = ft.DEFAULTS[n]
            col = [default if v is None else v for v in col]
        data[n] = pd.Series(col, dtype=_PANDAS_DTYPE[ft.FEATURE_TYPES[n]])
    nat = np.iinfo(np.int64).min  # numpy's NaT
    ns = np.array([nat if v is None else v for v in item_ts_ns], dtype=np.int64)
    ts = pd.Series(pd.DatetimeIndex(ns.view("M8[ns]")).tz_localize("UTC"))
    data["event_timestamp"] = ts
    data["missing"] = ts.isna().to_numpy()
    data["stale"] = ((now - ts) > ttl["item"]).fillna(False).to_numpy().astype(bool)
    return OnlineFeatures(
        user_id=user_id,
        user=user,
        user_event_timestamp=user_ts,
        user_missing=user_missing,
        user_stale=bool(user_stale),
        items=pd.DataFrame(data),
        now=now,
        ttl=ttl["item"],
    )


def online_features_fast(
    settings: Settings,
    user_id: str,
    item_ids: list[str],
    now: dt.datetime | None = None,
    service: str = "serving_v1",
) -> OnlineFeatures:
    """Same result as :func:`pipelines.features.store.online_features`, read as one Redis
    pipeline of HMGETs (``path = "fast"``).

    ``item_ids``: the ``C`` candidates (duplicates allowed, order kept); ``now`` (default: the
    wall clock) decides staleness. Builds Feast's keys and hashed field names itself (see the
    module docstring) and decodes the ``ValueProto`` bytes; the registry is read once per
    (settings, service). ``ConnectionError`` naming the URL when Redis does not answer.
    """
    item_ids = [str(i) for i in item_ids]
    user_id = str(user_id)
    plan = read_plan(settings, service)
    t0 = time.perf_counter()
    with connection_errors(settings.redis_url):
        replies = hmget_rows(redis_client(settings), row_commands(plan, user_id, item_ids))
    u_names, i_names = plan.names["user"], plan.names["item"]
    user_reply = replies[0]
    user_vals = {
        n: decode_column([b], ft.FEATURE_TYPES[n])[0]
        for n, b in zip(u_names, user_reply, strict=False)
    }
    user_ns = decode_stamps([user_reply[-1]])[0]
    user_ts = None if user_ns is None else pd.Timestamp(user_ns, unit="ns", tz="UTC")
    item_replies = replies[1:]
    item_cols = {
        n: decode_column([r[j] for r in item_replies], ft.FEATURE_TYPES[n])
        for j, n in enumerate(i_names)
    }
    item_ts = decode_stamps([r[len(i_names)] for r in item_replies])
    out = assemble_features(
        user_id, item_ids, plan, user_vals, user_ts, item_cols, item_ts, utc_now(now)
    )
    out.read_ms = (time.perf_counter() - t0) * 1e3
    out.path = "fast"
    return out
