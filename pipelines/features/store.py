"""The Feast feature store of a workspace: apply, materialize, point-in-time training data, reads.

Everything runs in-process through the Feast SDK (the ``feast`` CLI costs ~6 s of start-up per
call). The store is built in code from :class:`~pipelines.core.settings.Settings` by
:func:`repo_config` — registry ``RECLOOP_HOME/features/registry.db``, file offline store over
``RECLOOP_HOME/features/{user,item}/date=D/``, Redis online store from ``RECLOOP_REDIS_URL`` with
1 s socket timeouts — and cached per settings in the process (:func:`get_store`).

The daily DAG calls, for a logical date D::

    compute_features(settings, D)          # pipelines.features.tables: D's tables
    apply_repo(settings)                   # register entities / views / services
    materialize_date(settings, D)          # D's rows -> Redis

Online reads (:func:`online_features`, Feast's ``get_online_features``) and the fast path
(:func:`online_features_fast`, one Redis pipeline over Feast's own key layout) return the same
:class:`OnlineFeatures`; ``benchmarks/bench_features.py`` measures both.

Redis layout (Feast 0.67, ``feast/infra/online_stores/redis.py``): one hash per entity, key =
``serialize_entity_key(EntityKey)`` (v3) + project name; field = murmur3-32 of
``"<feature_view>:<feature>"`` (4 bytes, little endian) holding a serialized ``ValueProto``, and
``"_ts:<feature_view>"`` holding a protobuf ``Timestamp``.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import pandas as pd

from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.features import tables as ft

log = logging.getLogger(__name__)

REPO_DIR = Path(__file__).resolve().parents[2] / "feature_repo"
PROJECT = "recloop"
VIEWS = {"user": "user_features", "item": "item_features"}
KEYS = {"user": "user_id", "item": "item_id"}
SERVICES = ("ranker_v1", "two_tower_v1", "serving_v1")
SOCKET_TIMEOUT_S = 1.0
MARKER_KEY = f"recloop:{PROJECT}:materialized_date"
"""Redis string: the latest date materialized; an older date is not written over it."""

_lock = threading.Lock()
_stores: dict[Settings, Any] = {}
_plans: dict[tuple[Settings, str], _Plan] = {}
_clients: dict[str, Any] = {}
_definitions_module: Any = None


# --- configuration -----------------------------------------------------------------------


def redis_connection_string(url: str, timeout_s: float = SOCKET_TIMEOUT_S) -> str:
    """``redis://[:pw@]host:port/db`` → Feast's ``host:port,db=N[,password=..],timeouts``.

    Feast passes the ``key=value`` parts (JSON-decoded) to ``redis.Redis(**kwargs)``.
    """
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", ""):
        raise ValueError(f"RECLOOP_REDIS_URL={url!r}: expected redis://host:port/db")
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    db = int(parsed.path.strip("/") or 0) if parsed.path.strip("/").isdigit() else 0
    parts = [f"{host}:{port}", f"db={db}"]
    if parsed.password:
        parts.append(f"password={unquote(parsed.password)}")
    # retry=null: redis-py's default (3 retries, exponential backoff) turns a refused connection
    # into ~6 s of waiting; the DAG task retries instead, and serving fails fast.
    parts += [f"socket_connect_timeout={timeout_s}", f"socket_timeout={timeout_s}", "retry=null"]
    return ",".join(parts)


def registry_path(settings: Settings) -> Path:
    """``RECLOOP_HOME/features/registry.db``."""
    return settings.features_dir / "registry.db"


def repo_config(settings: Settings):
    """The Feast ``RepoConfig`` of this workspace (what feature_repo/feature_store.yaml says)."""
    from feast.repo_config import RepoConfig

    config = RepoConfig(
        project=PROJECT,
        provider="local",
        registry={
            "registry_type": "file",
            "path": str(registry_path(settings)),
            "cache_ttl_seconds": 60,
        },
        online_store={
            "type": "redis",
            "connection_string": redis_connection_string(settings.redis_url),
            "skip_dedup": True,
        },
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
    )
    config.repo_path = REPO_DIR
    return config


def feature_store_yaml(settings: Settings) -> str:
    """A feature_store.yaml equivalent to :func:`repo_config` (for the ``feast`` CLI)."""
    return (
        f"project: {PROJECT}\n"
        "registry:\n"
        "    registry_type: file\n"
        f"    path: {registry_path(settings)}\n"
        "    cache_ttl_seconds: 60\n"
        "provider: local\n"
        "online_store:\n"
        "    type: redis\n"
        f'    connection_string: "{redis_connection_string(settings.redis_url)}"\n'
        "    skip_dedup: true\n"
        "offline_store:\n"
        "    type: file\n"
        "entity_key_serialization_version: 3\n"
        "auth:\n"
        "    type: no_auth\n"
    )


def definitions(settings: Settings) -> dict:
    """The Feast objects of ``feature_repo/definitions.py`` for this workspace's features folder."""
    global _definitions_module
    with _lock:
        if _definitions_module is None:
            path = REPO_DIR / "definitions.py"
            spec = importlib.util.spec_from_file_location("recloop_feature_definitions", path)
            if spec is None or spec.loader is None:
                raise FileNotFoundError(f"cannot load Feast definitions from {path}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            _definitions_module = module
    return _definitions_module.build(settings.features_dir)


def get_store(settings: Settings):
    """The ``feast.FeatureStore`` of ``settings``, built once per process and settings."""
    # Feast logs every registry refresh at INFO; keep the pipeline's logs readable.
    logging.getLogger("feast.infra.registry.registry").setLevel(logging.WARNING)
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # Feast imports faiss lazily
    with _lock:
        store = _stores.get(settings)
    if store is None:
        from feast import FeatureStore

        t0 = time.perf_counter()
        settings.features_dir.mkdir(parents=True, exist_ok=True)
        store = FeatureStore(config=repo_config(settings), repo_path=str(REPO_DIR))
        log.debug("feast store for %s built in %.2fs", settings.home, time.perf_counter() - t0)
        with _lock:
            store = _stores.setdefault(settings, store)
    return store


def forget_store(settings: Settings) -> None:
    """Drop the cached store, read plans and Redis client of ``settings``."""
    with _lock:
        _stores.pop(settings, None)
        _clients.pop(settings.redis_url, None)
        for key in [k for k in _plans if k[0] == settings]:
            _plans.pop(key)


def apply_repo(settings: Settings) -> dict:
    """Register the repository's objects in the workspace registry (``feast apply``, in-process).

    Idempotent. Returns ``{"entities", "feature_views", "feature_services", "seconds"}``.
    """
    t0 = time.perf_counter()
    store = get_store(settings)
    objects = definitions(settings)
    store.apply(list(objects.values()))
    with _lock:
        for key in [k for k in _plans if k[0] == settings]:
            _plans.pop(key)
    out = {
        "entities": sorted(e.name for e in store.list_entities()),
        "feature_views": sorted(v.name for v in store.list_feature_views()),
        "feature_services": sorted(s.name for s in store.list_feature_services()),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    log.info(
        "feast apply: %s in %.2fs (registry %s)",
        out["feature_views"],
        out["seconds"],
        registry_path(settings),
    )
    return out


# --- Redis --------------------------------------------------------------------------------


def redis_client(settings: Settings):
    """A redis-py client for ``settings.redis_url``: 1 s socket timeouts, no hidden retries."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    with _lock:
        client = _clients.get(settings.redis_url)
        if client is None:
            client = redis.Redis.from_url(
                settings.redis_url,
                socket_timeout=SOCKET_TIMEOUT_S,
                socket_connect_timeout=SOCKET_TIMEOUT_S,
                retry=Retry(NoBackoff(), 0),
            )
            _clients[settings.redis_url] = client
    return client


def check_redis(settings: Settings) -> None:
    """PING Redis; ``ConnectionError`` naming the URL within ~1 s if it does not answer."""
    import redis

    try:
        redis_client(settings).ping()
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        raise ConnectionError(
            f"Redis online store unreachable at {settings.redis_url}: {exc}"
        ) from exc


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.ConnectionError, redis.TimeoutError)


# --- materialization ----------------------------------------------------------------------


def _table_rows(settings: Settings, entity: str, date: dt.date) -> int:
    import pyarrow.parquet as pq

    path = ft.table_path(settings, entity, date)
    if not path.exists():
        raise FileNotFoundError(
            f"refusing to materialize {date}: no {entity} feature table at {path} "
            "(run `recloop features compute --date D` first); Redis keeps its current values"
        )
    return pq.read_metadata(path).num_rows


def materialize_window(date: str | dt.date) -> tuple[dt.datetime, dt.datetime]:
    """``(start, end)`` holding exactly D's feature rows: ``(end - 1 day, end]``, end = D+1 00:00."""
    end = ft.feature_time(date)
    return end - dt.timedelta(days=1) + dt.timedelta(seconds=1), end


def materialize_date(settings: Settings, date: str | dt.date, force: bool = False) -> dict:
    """Load D's feature rows into Redis with ``store.materialize`` over D's window.

    Refuses (``FileNotFoundError`` / ``ValueError``) when D's user or item table is missing or
    empty: Redis keeps the values it has. A date older than the latest materialized one is
    skipped (Redis keeps the newer values) unless ``force``. Rematerializing D rewrites the same
    keys with the same values. Applies the repository first if the registry does not exist.
    Returns ``{"date", "users", "items", "rows", "seconds", "rows_per_s", "skipped"}``.
    """
    d = schema.parse_date(date)
    counts = {e: _table_rows(settings, e, d) for e in ("user", "item")}
    for entity, n in counts.items():
        if n == 0:
            raise ValueError(
                f"refusing to materialize {d}: the {entity} feature table "
                f"{ft.table_path(settings, entity, d)} is empty; Redis keeps its current values"
            )
    check_redis(settings)
    client = redis_client(settings)
    latest_raw = client.get(MARKER_KEY)
    latest = dt.date.fromisoformat(latest_raw.decode()) if latest_raw else None
    summary = {"date": d.isoformat(), "users": counts["user"], "items": counts["item"]}
    if latest is not None and d < latest and not force:
        log.warning("materialize %s skipped: Redis already holds %s (newer)", d, latest)
        return {**summary, "rows": 0, "seconds": 0.0, "rows_per_s": 0.0, "skipped": True}
    if not registry_path(settings).exists():
        apply_repo(settings)
    store = get_store(settings)
    start, end = materialize_window(d)
    t0 = time.perf_counter()
    try:
        store.materialize(start_date=start, end_date=end, feature_views=list(VIEWS.values()))
    except _redis_errors() as exc:
        raise ConnectionError(
            f"Redis online store unreachable at {settings.redis_url}: {exc}"
        ) from exc
    seconds = time.perf_counter() - t0
    if latest is None or d > latest:
        client.set(MARKER_KEY, d.isoformat())
    rows = counts["user"] + counts["item"]
    log.info(
        "materialized %s: %d users + %d items into %s in %.2fs",
        d,
        counts["user"],
        counts["item"],
        settings.redis_url,
        seconds,
    )
    return {
        **summary,
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds, 1) if seconds > 0 else 0.0,
        "skipped": False,
    }


# --- training data ------------------------------------------------------------------------


def service_features(settings: Settings, service: str) -> dict[str, list[str]]:
    """``{"user": [feature, ...], "item": [...]}`` of a feature service, from the registry."""
    if not registry_path(settings).exists():
        apply_repo(settings)
    fs = get_store(settings).get_feature_service(service)
    out: dict[str, list[str]] = {"user": [], "item": []}
    by_view = {v: e for e, v in VIEWS.items()}
    for projection in fs.feature_view_projections:
        entity = by_view[projection.name]
        out[entity] += [f.name for f in projection.features]
    return out


def training_frame(
    settings: Settings, events: pd.DataFrame, service: str = "ranker_v1", fill: bool = True
) -> pd.DataFrame:
    """Join labelled events with the features known at each event's time (point-in-time).

    ``events``: one row per event with ``user_id``, ``item_id`` (strings) and
    ``event_timestamp`` (UTC; naive values are read as UTC), plus any label columns, which
    are kept. Each row gets, per feature view of ``service``, the latest feature row with
    ``event_timestamp <=`` the event's and no older than the view's ttl, through Feast's
    ``get_historical_features``. Returns the rows in input order (``event_timestamp`` as UTC)
    with the service's features and ``user_missing`` / ``item_missing`` (no feature row in
    time); with ``fill`` the missing values read :data:`pipelines.features.tables.DEFAULTS`.

    Feast is asked once per feature view for the distinct ``(entity id, event_timestamp)``
    pairs of ids that have feature rows, and the answer merged back. Feast 0.67's file (dask)
    offline store drops an entity row whose entity has feature rows but none in time,
    collapses rows that share an entity id and timestamp (the impressions of one slate), and
    can fail sorting the null ``created`` of ids with no row at all; asking this way, no
    event is lost and the values are the same.
    """
    need = {"user_id", "item_id", "event_timestamp"}
    if not need <= set(events.columns):
        raise ValueError(f"events need columns {sorted(need)}; got {list(events.columns)}")
    out = events.copy().reset_index(drop=True)
    out["user_id"] = out["user_id"].astype(str)
    out["item_id"] = out["item_id"].astype(str)
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True)
    names = service_features(settings, service)
    store = get_store(settings)
    t0 = time.perf_counter()
    for entity, cols in names.items():
        if not cols:
            continue
        key = KEYS[entity]
        clash = [c for c in cols if c in out.columns]
        if clash:
            raise ValueError(f"events already have feature columns {clash}")
        pairs = out[[key, "event_timestamp"]].drop_duplicates()
        pairs = pairs[pairs[key].isin(_known_ids(settings, entity))].reset_index(drop=True)
        got = pd.DataFrame(columns=[key, "event_timestamp", *cols])
        if len(pairs):
            refs = [f"{VIEWS[entity]}:{c}" for c in cols]
            got = store.get_historical_features(entity_df=pairs, features=refs).to_df()
            got["event_timestamp"] = pd.to_datetime(got["event_timestamp"], utc=True)
            got = got[[key, "event_timestamp", *cols]].drop_duplicates([key, "event_timestamp"])
        out = out.merge(got, on=[key, "event_timestamp"], how="left", validate="many_to_one")
        out[f"{entity}_missing"] = out[cols].isna().all(axis=1)
        if fill:
            for c in cols:
                if out[c].isna().any():
                    out[c] = out[c].fillna(ft.DEFAULTS[c])
                if ft.FEATURE_TYPES[c] == "int64":
                    out[c] = out[c].astype("int64")
    log.info(
        "training frame: %d events x %d features (%s) in %.2fs",
        len(out),
        sum(len(c) for c in names.values()),
        service,
        time.perf_counter() - t0,
    )
    return out


def _known_ids(settings: Settings, entity: str) -> set[str]:
    """Ids with at least one row in any of ``entity``'s feature tables (DuckDB scan of one column)."""
    import duckdb

    root = ft.table_dir(settings, entity)
    if not any(root.glob("date=*/*.parquet")):
        return set()
    glob = str(root / "date=*" / "*.parquet").replace("'", "''")
    key = KEYS[entity]
    with duckdb.connect() as con:
        rows = con.execute(f"SELECT DISTINCT {key} FROM read_parquet('{glob}')").fetchall()
    return {r[0] for r in rows}


# --- online reads -------------------------------------------------------------------------


@dataclass
class OnlineFeatures:
    """Online features of one user and its candidate items, with freshness flags.

    ``user``: feature name → value (defaults filled when missing). ``items``: one row per
    requested item in request order: ``item_id``, the item features, ``event_timestamp``
    (UTC, NaT when missing), ``missing`` (no row in Redis: defaults filled) and ``stale``
    (the row is older than the view's ttl at ``now``; Feast does not apply ttl online).
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


def _now(now: dt.datetime | pd.Timestamp | None) -> pd.Timestamp:
    if now is None:
        return pd.Timestamp.now(tz="UTC")
    ts = pd.Timestamp(now)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _ttl(settings: Settings) -> dict[str, dt.timedelta]:
    """Each entity's view ttl, as registered."""
    store = get_store(settings)
    return {e: store.get_feature_view(v).ttl for e, v in VIEWS.items()}


def _assemble(
    user_id: str,
    item_ids: list[str],
    names: dict[str, list[str]],
    user_vals: dict[str, Any],
    user_ts: pd.Timestamp | None,
    item_cols: dict[str, list[Any]],
    item_ts_ns: list[int | None],
    now: pd.Timestamp,
    ttl: dict[str, dt.timedelta],
) -> OnlineFeatures:
    """Fill defaults, compute missing/stale flags, build the result (shared by both paths).

    ``item_ts_ns``: each item's event timestamp in ns since the epoch, ``None`` if missing.
    """
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


_PANDAS_DTYPE = {"int64": "int64", "float64": "float64", "string": object}


def online_features(
    settings: Settings,
    user_id: str,
    item_ids: list[str],
    now: dt.datetime | None = None,
    service: str = "serving_v1",
) -> OnlineFeatures:
    """Online features through Feast's ``get_online_features`` (one call, user + items).

    ``item_ids``: up to ~1,000 candidates (duplicates allowed, order kept). ``now`` (default:
    the wall clock) decides staleness. Raises ``ConnectionError`` naming the URL when Redis
    does not answer (1 s socket timeouts).
    """
    item_ids = [str(i) for i in item_ids]
    user_id = str(user_id)
    plan = _plan(settings, service)
    names = plan.names
    store = get_store(settings)
    refs_user = [f"{VIEWS['user']}:{n}" for n in names["user"]]
    refs_item = [f"{VIEWS['item']}:{n}" for n in names["item"]]
    t0 = time.perf_counter()
    try:
        if item_ids:
            rows = [{"user_id": user_id, "item_id": i} for i in item_ids]
            resp = store.get_online_features(features=refs_user + refs_item, entity_rows=rows)
        else:
            resp = store.get_online_features(features=refs_user, entity_rows=[{"user_id": user_id}])
        d = resp.to_dict(include_event_timestamps=True)
    except _redis_errors() as exc:
        raise ConnectionError(
            f"Redis online store unreachable at {settings.redis_url}: {exc}"
        ) from exc
    read_ms = (time.perf_counter() - t0) * 1e3

    def ts_of(seconds: int) -> pd.Timestamp | None:  # Feast gives whole seconds, 0 = missing
        return pd.Timestamp(seconds, unit="s", tz="UTC") if seconds else None

    user_vals = {n: d[n][0] for n in names["user"]}
    user_ts = ts_of(d[f"{names['user'][0]}__ts"][0]) if names["user"] else None
    item_cols = {n: d[n] for n in names["item"]} if item_ids else {n: [] for n in names["item"]}
    first = names["item"][0] if names["item"] else None
    item_ts = [s * 1_000_000_000 if s else None for s in d[f"{first}__ts"]] if item_ids else []
    out = _assemble(
        user_id, item_ids, names, user_vals, user_ts, item_cols, item_ts, _now(now), plan.ttl
    )
    out.read_ms = read_ms
    out.path = "feast"
    return out


# --- fast path: Feast's Redis layout read directly ---------------------------------------


@dataclass
class _Plan:
    """A service's features, ttl and hash fields, read from the registry once (both paths)."""

    names: dict[str, list[str]]
    fields: dict[str, list[bytes]]  # per entity: hashed feature fields + b"_ts:<view>"
    ttl: dict[str, dt.timedelta]
    packed: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    """Per entity, the RESP bytes of ``HMGET`` before the key, and the fields after it."""


def _plan(settings: Settings, service: str) -> _Plan:
    from feast.infra.online_stores.helpers import _mmh3

    key = (settings, service)
    with _lock:
        plan = _plans.get(key)
    if plan is None:
        names = service_features(settings, service)
        fields = {
            e: [_mmh3(f"{VIEWS[e]}:{n}") for n in names[e]] + [f"_ts:{VIEWS[e]}".encode()]
            for e in ("user", "item")
        }
        plan = _Plan(names=names, fields=fields, ttl=_ttl(settings))
        for e, fl in fields.items():
            head = b"*%d\r\n$5\r\nHMGET\r\n" % (2 + len(fl))
            plan.packed[e] = (head, b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in fl))
        with _lock:
            _plans[key] = plan
    return plan


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


def _decode_value(raw: bytes | None) -> Any:
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
_decoders: dict[str, Any] = {}


def _column_classes() -> tuple[Any, Any]:
    """Two protobuf message classes that decode many Feast values in one C-level parse.

    ``Column`` repeats every scalar field of ``feast.types.Value`` under the same number,
    unpacked: the concatenation of N serialized ``Value`` messages of one type is a valid
    ``Column`` whose repeated field holds the N values in order. ``Stamps`` holds repeated
    ``google.protobuf.Timestamp`` submessages (each raw ``_ts`` value framed as field 1).
    """
    with _lock:
        if not _decoders:
            from google.protobuf import (
                descriptor_pb2,
                descriptor_pool,
                message_factory,
                timestamp_pb2,
            )

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
            for name in ("Column", "Stamps"):
                _decoders[name] = message_factory.GetMessageClass(
                    pool.FindMessageTypeByName(f"recloop.fastpath.{name}")
                )
    return _decoders["Column"], _decoders["Stamps"]


def _decode_column(raws: list[bytes | None], dtype: str) -> list[Any]:
    """Serialized ``Value``s of one feature (``None``/empty = absent) → Python values."""
    column_cls, _ = _column_classes()
    present = [r for r in raws if r]
    values: list[Any] = []
    if present:
        try:
            parsed = column_cls.FromString(b"".join(present))
            values = list(getattr(parsed, _COLUMN_FIELDS[dtype]))
        except Exception:  # noqa: BLE001 - any surprise: decode one by one below
            values = []
        if len(values) != len(present):  # another type or a null value: the exact, slow way
            return [_decode_value(r) for r in raws]
    if len(present) == len(raws):
        return values
    it = iter(values)
    return [next(it) if r else None for r in raws]


def _decode_stamps(raws: list[bytes | None]) -> list[int | None]:
    """Serialized ``Timestamp``s (``None``/empty = absent) → ns since the epoch or ``None``."""
    _, stamps_cls = _column_classes()
    present = [r for r in raws if r]
    framed = b"".join(b"\x0a" + bytes((len(r),)) + r for r in present)  # each < 128 bytes
    nanos = [t.seconds * 1_000_000_000 + t.nanos for t in stamps_cls.FromString(framed).ts]
    if len(nanos) == len(raws):
        return nanos
    stamps = iter(nanos)
    return [next(stamps) if r else None for r in raws]


def _hmget_pipeline(client: Any, commands: list[tuple[tuple[bytes, bytes], bytes]]) -> list:
    """Send ``HMGET key fields...`` per ``((head, fields), key)`` as one pre-packed write.

    The same commands a redis-py pipeline sends (so the same as Feast's read), with the
    constant field list encoded once per service instead of once per key.
    """
    payload = b"".join(
        b"%s$%d\r\n%s\r\n%s" % (head, len(key), key, fields) for (head, fields), key in commands
    )
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([payload])
        return [conn.read_response() for _ in commands]
    except BaseException:
        conn.disconnect()  # a half-read reply stream must not go back to the pool
        raise
    finally:
        pool.release(conn)


def online_features_fast(
    settings: Settings,
    user_id: str,
    item_ids: list[str],
    now: dt.datetime | None = None,
    service: str = "serving_v1",
) -> OnlineFeatures:
    """Same result as :func:`online_features`, read as one Redis pipeline of HMGETs.

    Builds Feast's keys and hashed field names itself (see the module docstring) and decodes
    the ``ValueProto`` bytes; the registry is read once per (settings, service).
    """
    import redis

    item_ids = [str(i) for i in item_ids]
    user_id = str(user_id)
    plan = _plan(settings, service)
    t0 = time.perf_counter()
    try:
        replies = _hmget_pipeline(
            redis_client(settings),
            [(plan.packed["user"], redis_key("user_id", user_id))]
            + [(plan.packed["item"], redis_key("item_id", i)) for i in item_ids],
        )
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ConnectionError(
            f"Redis online store unreachable at {settings.redis_url}: {exc}"
        ) from exc
    u_names, i_names = plan.names["user"], plan.names["item"]
    user_reply = replies[0]
    user_vals = {
        n: _decode_column([b], ft.FEATURE_TYPES[n])[0]
        for n, b in zip(u_names, user_reply, strict=False)
    }
    user_ns = _decode_stamps([user_reply[-1]])[0]
    user_ts = None if user_ns is None else pd.Timestamp(user_ns, unit="ns", tz="UTC")
    item_replies = replies[1:]
    item_cols = {
        n: _decode_column([r[j] for r in item_replies], ft.FEATURE_TYPES[n])
        for j, n in enumerate(i_names)
    }
    item_ts = _decode_stamps([r[len(i_names)] for r in item_replies])
    out = _assemble(
        user_id, item_ids, plan.names, user_vals, user_ts, item_cols, item_ts, _now(now), plan.ttl
    )
    out.read_ms = (time.perf_counter() - t0) * 1e3
    out.path = "fast"
    return out
