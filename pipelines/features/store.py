"""The Feast feature store of a workspace: apply, materialize, point-in-time training data, reads.

Everything runs in-process through the Feast SDK (the ``feast`` CLI costs ~6 s of start-up per
call). The store is built in code from :class:`~pipelines.core.settings.Settings` by
:func:`repo_config` — registry ``RECLOOP_HOME/features/registry.db``, file offline store
(Feast's Spark store with ``RECLOOP_FEATURE_ENGINE=spark``: :func:`offline_store_config`) over
``RECLOOP_HOME/features/{user,item}/date=D/``, Redis online store from ``RECLOOP_REDIS_URL`` with
1 s socket timeouts — and cached per settings in the process (:func:`get_store`).

The daily DAG calls, for a logical date D::

    compute_features(settings, D)          # pipelines.features.tables: D's tables
    apply_repo(settings)                   # register entities / views / services
    materialize_date(settings, D)          # D's rows -> Redis

Materialization writes Feast's own Redis layout (keys, hash fields, value bytes) either through
Feast's ``materialize`` or, by default (``RECLOOP_MATERIALIZE_WRITER=bulk``), from Arrow in
pipelined chunks (:mod:`pipelines.features.bulk_write`, tested byte for byte equal to Feast's
writes; ~12x its rows/s and a twentieth of its memory at ``large``).

Online reads: :func:`online_features` here (Feast's ``get_online_features``) and the fast path
:func:`pipelines.features.online.online_features_fast` (one Redis pipeline over Feast's own key
layout) return the same :class:`~pipelines.features.online.OnlineFeatures`;
``benchmarks/bench_features.py`` measures both. The Redis client, key layout, read plans and the
one Redis error wrapper live in :mod:`pipelines.features.online`.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd

from pipelines.core import layout, schema
from pipelines.core.duckdb_sql import sql_string
from pipelines.core.redact import redact_url
from pipelines.core.settings import Settings
from pipelines.features import asof, online
from pipelines.features import tables as ft
from pipelines.features.redis_client import is_cluster_url, parse_cluster_url

log = logging.getLogger(__name__)

REPO_DIR = Path(__file__).resolve().parents[2] / "feature_repo"
KEYS = {"user": "user_id", "item": "item_id"}
SERVICES = ("ranker_v1", "two_tower_v1", "serving_v1")

_lock = threading.Lock()
_stores: dict[Settings, Any] = {}
_definitions_module: Any = None


# --- configuration -----------------------------------------------------------------------


def redis_connection_string(url: str, timeout_s: float = online.SOCKET_TIMEOUT_S) -> str:
    """``redis://[:pw@]host:port/db`` → Feast's ``host:port,db=N[,password=..],timeouts``;
    ``redis+cluster://[:pw@]host:port,host:port,...`` → ``host:port,host:port,...[,password=..],
    timeouts`` (with :func:`redis_type` ``redis_cluster``).

    Feast passes the ``key=value`` parts (JSON-decoded) to ``redis.Redis(**kwargs)``, or to
    ``RedisCluster(startup_nodes=<the host:port parts>, **kwargs)`` for a cluster.
    """
    if is_cluster_url(url):
        target = parse_cluster_url(url)
        parts = [f"{host}:{port}" for host, port in target.nodes]
        if target.username:
            parts.append(f"username={target.username}")
        if target.password:
            parts.append(f"password={target.password}")
        # no db (a cluster has only 0) and no retry=null: RedisCluster's own retries (3) read the
        # slot map again, so a write that meets a failover lands on the promoted replica.
        parts += [f"socket_connect_timeout={timeout_s}", f"socket_timeout={timeout_s}"]
        return ",".join(parts)
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", ""):
        raise ValueError(f"RECLOOP_REDIS_URL={redact_url(url)!r}: expected redis://host:port/db")
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    db = int(parsed.path.strip("/") or 0) if parsed.path.strip("/").isdigit() else 0
    parts = [f"{host}:{port}", f"db={db}"]
    if parsed.password:
        parts.append(f"password={unquote(parsed.password)}")
    # retry=null: redis-py's default (3 retries, exponential backoff) turns a refused connection
    # into ~6 s of waiting; the DAG task retries instead, and serving fails fast.
    parts += [f"socket_connect_timeout={timeout_s}", f"socket_timeout={timeout_s}", "retry=null"]
    return ",".join(parts)


def redis_type(url: str) -> str:
    """Feast's ``redis_type`` for ``url``: ``redis_cluster`` for ``redis+cluster://``, else
    ``redis``."""
    return "redis_cluster" if is_cluster_url(url) else "redis"


def registry_path(settings: Settings) -> Path:
    """``RECLOOP_HOME/features/registry.db``."""
    return layout.feast_registry_path(settings)


def offline_store_config(settings: Settings) -> dict:
    """Feast's offline store for ``settings.feature_engine``: ``{"type": "file"}`` (DuckDB
    engine, the default) or ``{"type": "spark", "spark_conf": ...}`` (Spark engine: point-in-time
    joins run in the process's Spark session, :func:`pipelines.features.spark_engine.offline_session`;
    ``spark_conf`` is what Feast would start one with if none were running)."""
    if settings.feature_engine != "spark":
        return {"type": "file"}
    conf = {
        "spark.master": settings.spark_master,
        "spark.app.name": "recloop-features",
        "spark.ui.enabled": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }
    return {"type": "spark", "spark_conf": conf}


def repo_config(settings: Settings):
    """The Feast ``RepoConfig`` of this workspace (what feature_repo/feature_store.yaml says),
    its offline store chosen by the feature engine (:func:`offline_store_config`)."""
    from feast.repo_config import RepoConfig

    config = RepoConfig(
        project=online.PROJECT,
        provider="local",
        registry={
            "registry_type": "file",
            "path": str(registry_path(settings)),
            "cache_ttl_seconds": 60,
        },
        online_store={
            "type": "redis",
            "redis_type": redis_type(settings.redis_url),
            "connection_string": redis_connection_string(settings.redis_url),
            "skip_dedup": True,
        },
        offline_store=offline_store_config(settings),
        entity_key_serialization_version=3,
    )
    config.repo_path = REPO_DIR
    return config


def feature_store_yaml(settings: Settings) -> str:
    """A feature_store.yaml equivalent to :func:`repo_config` (for the ``feast`` CLI)."""
    offline = offline_store_config(settings)
    offline_yaml = f"offline_store:\n    type: {offline['type']}\n"
    if offline.get("spark_conf"):
        offline_yaml += "    spark_conf:\n" + "".join(
            f'        {k}: "{v}"\n' for k, v in offline["spark_conf"].items()
        )
    return (
        f"project: {online.PROJECT}\n"
        "registry:\n"
        "    registry_type: file\n"
        f"    path: {registry_path(settings)}\n"
        "    cache_ttl_seconds: 60\n"
        "provider: local\n"
        "online_store:\n"
        "    type: redis\n"
        f"    redis_type: {redis_type(settings.redis_url)}\n"
        f'    connection_string: "{redis_connection_string(settings.redis_url)}"\n'
        "    skip_dedup: true\n"
        f"{offline_yaml}"
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
    return _definitions_module.build(settings.features_dir, settings.feature_engine)


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
    online.forget_client(settings)
    online.forget_plans(settings)


def apply_repo(settings: Settings) -> dict:
    """Register the repository's objects in the workspace registry (``feast apply``, in-process).

    Idempotent. Returns ``{"entities", "feature_views", "feature_services", "seconds"}``.
    """
    t0 = time.perf_counter()
    store = get_store(settings)
    objects = definitions(settings)
    store.apply(list(objects.values()))
    online.forget_plans(settings)
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
    """Load D's feature rows into Redis over D's window, with ``settings.materialize_writer``:
    ``feast`` (``store.materialize``) or ``bulk`` (:mod:`pipelines.features.bulk_write`: the
    same keys, fields and bytes, from Arrow in pipelined chunks; Feast's where it cannot write
    a view, said in the log).

    Refuses (``FileNotFoundError`` / ``ValueError``) when D's user or item table is missing or
    empty: Redis keeps the values it has. A date older than the latest materialized one is
    skipped (Redis keeps the newer values) unless ``force``. Rematerializing D rewrites the same
    keys with the same values. Applies the repository first if the registry does not exist.
    :data:`~pipelines.features.online.PARTIAL_KEY` names D from the first write until the
    marker is set (one transaction): a failure part way leaves it, so readers (``recloop
    status``, the service's ``/metrics``) see the mix of days until a rerun completes D.
    Returns ``{"date", "users", "items", "rows", "seconds", "rows_per_s", "skipped", "writer"}``.
    """
    d = schema.parse_date(date)
    counts = {e: _table_rows(settings, e, d) for e in ("user", "item")}
    for entity, n in counts.items():
        if n == 0:
            raise ValueError(
                f"refusing to materialize {d}: the {entity} feature table "
                f"{ft.table_path(settings, entity, d)} is empty; Redis keeps its current values"
            )
    online.check_redis(settings)
    client = online.redis_client(settings)
    latest_raw = client.get(online.MARKER_KEY)
    latest = dt.date.fromisoformat(latest_raw.decode()) if latest_raw else None
    summary = {"date": d.isoformat(), "users": counts["user"], "items": counts["item"]}
    if latest is not None and d < latest and not force:
        log.warning("materialize %s skipped: Redis already holds %s (newer)", d, latest)
        return {**summary, "rows": 0, "seconds": 0.0, "rows_per_s": 0.0, "skipped": True,
                "writer": settings.materialize_writer}  # fmt: skip
    if not registry_path(settings).exists():
        apply_repo(settings)
    store = get_store(settings)
    t0 = time.perf_counter()
    partial = f"{d.isoformat()} {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}"
    with online.connection_errors(settings.redis_url):
        client.set(online.PARTIAL_KEY, partial)
    try:
        with online.connection_errors(settings.redis_url):
            writer = _write_rows(settings, store, client, d)
    except BaseException:
        log.error(
            "materialize %s failed part way: Redis may hold a mix of %s and %s rows (%s = %r); "
            "rerun `recloop features materialize --date %s` to complete it",
            d, latest or "no", d, online.PARTIAL_KEY, partial, d,
        )  # fmt: skip
        raise
    seconds = time.perf_counter() - t0
    with online.connection_errors(settings.redis_url):
        online.complete_marker(client, d.isoformat() if latest is None or d > latest else None)
    rows = counts["user"] + counts["item"]
    log.info(
        "materialized %s: %d users + %d items into %s in %.2fs (%s writer)",
        d,
        counts["user"],
        counts["item"],
        redact_url(settings.redis_url),
        seconds,
        writer,
    )
    return {
        **summary,
        "rows": rows,
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds, 1) if seconds > 0 else 0.0,
        "skipped": False,
        "writer": writer,
    }


def _write_rows(settings: Settings, store: Any, client: Any, d: dt.date) -> str:
    """Write D's rows of every view with ``settings.materialize_writer``; returns the writer
    that wrote them (``bulk`` falls back to ``feast`` for a view layout it cannot write)."""
    from pipelines.features import bulk_write

    start, end = materialize_window(d)
    if settings.materialize_writer == "bulk":
        layouts = {e: bulk_write.supported(store, v) for e, v in online.VIEWS.items()}
        why = [x for x in layouts.values() if isinstance(x, str)]
        if not why:
            sources = [(ft.table_path(settings, e, d), layouts[e]) for e in online.VIEWS]
            bulk_write.materialize_tables(store, client, sources, start, end)
            return "bulk"
        log.warning("materialize %s: the bulk writer cannot write %s; writing with Feast", d,
                    "; ".join(why))  # fmt: skip
    store.materialize(start_date=start, end_date=end, feature_views=list(online.VIEWS.values()))
    return "feast"


# --- training data ------------------------------------------------------------------------


def service_features(settings: Settings, service: str) -> dict[str, list[str]]:
    """``{"user": [feature, ...], "item": [...]}`` of a feature service, from the registry."""
    if not registry_path(settings).exists():
        apply_repo(settings)
    fs = get_store(settings).get_feature_service(service)
    out: dict[str, list[str]] = {"user": [], "item": []}
    by_view = {v: e for e, v in online.VIEWS.items()}
    for projection in fs.feature_view_projections:
        entity = by_view[projection.name]
        out[entity] += [f.name for f in projection.features]
    return out


HISTORICAL_CHUNK = 400_000
"""Pairs per ``get_historical_features`` call. Feast's file (dask) store merges each pair with
every feature row of its entity before the ttl filter: 3M item pairs over 28 daily tables are
84M merged rows (a large day's ranker peaked at 17 GB); each pair's answer is its own, so the
calls' answers concatenated are the one call's."""


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

    Feast is asked per feature view for the distinct ``(entity id, event_timestamp)``
    pairs of ids that have feature rows (at most :data:`HISTORICAL_CHUNK` pairs a call), and
    the answer merged back. Feast 0.67's file (dask)
    offline store drops an entity row whose entity has feature rows but none in time,
    collapses rows that share an entity id and timestamp (the impressions of one slate), and
    can fail sorting the null ``created`` of ids with no row at all; asking this way, no
    event is lost and the values are the same.

    On the file store the lookups are answered by :mod:`pipelines.features.asof` (Feast's answer
    without reading every daily table; ``RECLOOP_HISTORICAL_READER=feast``: by Feast).
    The offline store follows ``settings.feature_engine`` (:func:`offline_store_config`): Feast's
    file store (``duckdb``) or its Spark store (``spark``: the join runs in Spark over the same
    partitions; the same frame, tests/test_spark_offline.py). The log line and
    ``frame.attrs["offline_store"]`` name the one that built the frame.
    """
    need = {"user_id", "item_id", "event_timestamp"}
    if not need <= set(events.columns):
        raise ValueError(f"events need columns {sorted(need)}; got {list(events.columns)}")
    out = events.copy().reset_index(drop=True)
    out["user_id"] = out["user_id"].astype(str)
    out["item_id"] = out["item_id"].astype(str)
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True)
    _match_sources(settings)
    names = service_features(settings, service)
    store = get_store(settings)
    offline = store.config.offline_store.type
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
            refs = [f"{online.VIEWS[entity]}:{c}" for c in cols]
            if offline != "spark" and settings.historical_reader == "asof":
                ttl = store.get_feature_view(online.VIEWS[entity]).ttl
                got = asof.historical(settings, entity, key, pairs, cols, ttl)
            else:
                got = pd.concat(
                    [
                        _historical(settings, store, pairs.iloc[lo : lo + HISTORICAL_CHUNK], refs)
                        for lo in range(0, len(pairs), HISTORICAL_CHUNK)
                    ],
                    ignore_index=True,
                )
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
        "training frame: %d events x %d features (%s) in %.2fs (feast %s offline store, %s)",
        len(out),
        sum(len(c) for c in names.values()),
        service,
        time.perf_counter() - t0,
        offline,
        "feast" if offline == "spark" else f"{settings.historical_reader} reader",
    )
    out.attrs["offline_store"] = offline
    return out


def _historical(
    settings: Settings, store: Any, pairs: pd.DataFrame, refs: list[str]
) -> pd.DataFrame:
    """Feast's point-in-time answer for distinct ``(id, event_timestamp)`` ``pairs``: one row per
    pair with its features (null where none in time), ``event_timestamp`` as UTC.

    On the Spark store the pairs travel with their position (``_pair``) and come back with
    their own id and timestamp: Spark keeps timestamps to the microsecond, so a nanosecond
    timestamp would otherwise not merge back."""
    if store.config.offline_store.type != "spark":
        got = store.get_historical_features(entity_df=pairs, features=refs).to_df()
        got["event_timestamp"] = pd.to_datetime(got["event_timestamp"], utc=True)
        return got
    from pipelines.features import spark_engine

    spark_engine.offline_session(settings)
    # floored to Spark's microseconds here (Spark's Arrow upload refuses a lossy cast and falls
    # back to row-by-row pickling): the same answer against whole-microsecond feature times,
    # bar an event less than a microsecond past a row's ttl end
    ask = pairs.assign(_pair=range(len(pairs)))
    ask["event_timestamp"] = ask["event_timestamp"].dt.floor("us")
    got = store.get_historical_features(entity_df=ask, features=refs).to_df()
    got = got.drop(columns=list(pairs.columns)).drop_duplicates("_pair")
    got = got.sort_values("_pair").reset_index(drop=True)
    if len(got) != len(pairs) or not (got["_pair"].to_numpy() == range(len(pairs))).all():
        raise RuntimeError(f"feast spark store answered {len(got)} rows for {len(pairs)} pairs")
    return pd.concat([pairs.reset_index(drop=True), got.drop(columns="_pair")], axis=1)


def _match_sources(settings: Settings) -> None:
    """Apply the repository again when the registry holds the other engine's sources (the
    feature engine was switched since the last apply): each offline store reads only its own."""
    if not registry_path(settings).exists():
        return
    store = get_store(settings)
    want = "SparkSource" if settings.feature_engine == "spark" else "FileSource"
    have = {type(store.get_feature_view(v).batch_source).__name__ for v in online.VIEWS.values()}
    if have != {want}:
        log.info("feast registry holds %s sources; applying %s ones", sorted(have), want)
        apply_repo(settings)


def _known_ids(settings: Settings, entity: str) -> set[str]:
    """Ids with at least one row in any of ``entity``'s feature tables (DuckDB scan of one column)."""
    import duckdb

    root = ft.table_dir(settings, entity)
    if not any(root.glob("date=*/*.parquet")):
        return set()
    glob = sql_string(root / "date=*" / "*.parquet")
    key = KEYS[entity]
    with duckdb.connect() as con:
        rows = con.execute(f"SELECT DISTINCT {key} FROM read_parquet({glob})").fetchall()
    return {r[0] for r in rows}


# --- online reads through Feast ----------------------------------------------------------


def view_ttls(settings: Settings) -> dict[str, dt.timedelta]:
    """Each entity's feature view ttl (``{"user": ..., "item": ...}``), as registered."""
    store = get_store(settings)
    return {e: store.get_feature_view(v).ttl for e, v in online.VIEWS.items()}


def online_features(
    settings: Settings,
    user_id: str,
    item_ids: list[str],
    now: dt.datetime | None = None,
    service: str = "serving_v1",
) -> online.OnlineFeatures:
    """Online features through Feast's ``get_online_features`` (one call, user + items).

    ``item_ids``: up to ~1,000 candidates (duplicates allowed, order kept). ``now`` (default:
    the wall clock) decides staleness. Raises ``ConnectionError`` naming the URL when Redis
    does not answer (1 s socket timeouts). The same result as
    :func:`pipelines.features.online.online_features_fast` (``path = "feast"``).
    """
    item_ids = [str(i) for i in item_ids]
    user_id = str(user_id)
    plan = online.read_plan(settings, service)
    names = plan.names
    store = get_store(settings)
    refs_user = [f"{online.VIEWS['user']}:{n}" for n in names["user"]]
    refs_item = [f"{online.VIEWS['item']}:{n}" for n in names["item"]]
    t0 = time.perf_counter()
    with online.connection_errors(settings.redis_url):
        if item_ids:
            rows = [{"user_id": user_id, "item_id": i} for i in item_ids]
            resp = store.get_online_features(features=refs_user + refs_item, entity_rows=rows)
        else:
            resp = store.get_online_features(features=refs_user, entity_rows=[{"user_id": user_id}])
        d = resp.to_dict(include_event_timestamps=True)
    read_ms = (time.perf_counter() - t0) * 1e3

    def ts_of(seconds: int) -> pd.Timestamp | None:  # Feast gives whole seconds, 0 = missing
        return pd.Timestamp(seconds, unit="s", tz="UTC") if seconds else None

    user_vals = {n: d[n][0] for n in names["user"]}
    user_ts = ts_of(d[f"{names['user'][0]}__ts"][0]) if names["user"] else None
    item_cols = {n: d[n] for n in names["item"]} if item_ids else {n: [] for n in names["item"]}
    first = names["item"][0] if names["item"] else None
    item_ts = [s * 1_000_000_000 if s else None for s in d[f"{first}__ts"]] if item_ids else []
    out = online.assemble_features(
        user_id, item_ids, plan, user_vals, user_ts, item_cols, item_ts, online.utc_now(now)
    )
    out.read_ms = read_ms
    out.path = "feast"
    return out
