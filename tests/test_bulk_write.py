"""The bulk materialization writer (pipelines/features/bulk_write.py) against Feast's own writes.

One tiny day of feature tables, with edge values (negative and 64-bit ints, NaN, -0.0, inf,
empty / long / non-ASCII strings, a duplicated id), materialized by Feast into one Redis
database and by the bulk writer into another of the session's redis-server: every key, field
and value byte for byte and every TTL equal, the online reads equal, a missing table refused.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import redis

from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.features import bulk_write, online
from pipelines.features import store as fs
from pipelines.features.tables import (
    ITEM_FEATURES,
    ITEM_SCHEMA,
    USER_FEATURES,
    USER_SCHEMA,
    feature_time,
    table_path,
)
from tests.helpers import RedisServer

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::FutureWarning"),  # dask, inside Feast's file store
]

D = dt.date(2024, 6, 3)
USERS = ["u0", "u1", "ü-2", "x" * 200, "u4", ""]
ITEMS = ["i0", "i1", "i2", "i3"]
INTS = [0, -1, 2**62, -(2**40), 127, 128, 16_384]
FLOATS = [0.0, -0.0, float("inf"), float("nan"), 1e-300, -2.5, 3.0]
TEXTS = ["", "a", "ü€😀", "y" * 300, "unknown", "b"]


def feature_table(target: pa.Schema, ids: list[str], k: int) -> pa.Table:
    """A feature table over ``target`` with edge values (rotated by ``k`` per column) and event
    time D's, plus two rows last in the file: the first id again, an hour older (Feast keeps
    the newer), and an id ``"early"`` just before D's window (Feast skips it)."""
    n = len(ids)
    end = feature_time(D)
    cols: dict[str, list] = {target.names[0]: [*ids, ids[0], "early"]}
    for j, f in enumerate(target):
        if f.name in cols or f.name in ("event_timestamp", "created"):
            continue
        pool = {pa.int64(): INTS, pa.float64(): FLOATS, pa.string(): TEXTS}[f.type]
        cols[f.name] = [pool[(i + j + k) % len(pool)] for i in range(n + 2)]
    start, _ = fs.materialize_window(D)
    cols["event_timestamp"] = [end] * n + [end - dt.timedelta(hours=1), start - dt.timedelta(seconds=1)]  # fmt: skip
    cols["created"] = [end - dt.timedelta(minutes=5)] * (n + 2)
    return pa.table(cols, schema=target)


def write_tables(settings: Settings) -> None:
    for entity, target, ids in (("user", USER_SCHEMA, USERS), ("item", ITEM_SCHEMA, ITEMS)):
        schema.write_partition_atomic(
            feature_table(target, ids, 0), settings.features_dir / entity, D
        )


def dump(url: str) -> dict[bytes, tuple[bytes, dict[bytes, bytes], int]]:
    """Every key: (type, HGETALL or GET value, TTL)."""
    client = redis.Redis.from_url(url)
    out = {}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        value = client.hgetall(key) if kind == b"hash" else {b"": client.get(key)}
        out[key] = (kind, value, client.ttl(key))
    return out


@pytest.fixture()
def two_stores(settings: Settings, redis_server: RedisServer):
    """D's tables in one workspace; settings writing with Feast into db 0 and with the bulk
    writer into db 1 of the session's redis-server (both flushed)."""
    base = redis_server.url.rsplit("/", 1)[0]
    feast = dataclasses.replace(settings, redis_url=f"{base}/0", materialize_writer="feast")
    bulk = dataclasses.replace(settings, redis_url=f"{base}/1", materialize_writer="bulk")
    for s in (feast, bulk):
        redis.Redis.from_url(s.redis_url).flushdb()
    write_tables(settings)
    fs.apply_repo(feast)
    yield feast, bulk
    for s in (feast, bulk):
        fs.forget_store(s)


def test_bulk_writes_feasts_bytes_and_reads_back_the_same(two_stores) -> None:
    feast, bulk = two_stores
    out = {s.materialize_writer: fs.materialize_date(s, D) for s in (feast, bulk)}
    assert out["feast"]["writer"] == "feast" and out["bulk"]["writer"] == "bulk"
    assert out["bulk"]["rows"] == out["feast"]["rows"] == len(USERS) + len(ITEMS) + 4
    a, b = dump(feast.redis_url), dump(bulk.redis_url)
    hashes = {k for k, v in a.items() if v[0] == b"hash"}
    assert len(hashes) == len(USERS) + len(
        ITEMS
    )  # one row per id: the duplicate collapsed, no "early"
    assert {k: v for k, v in a.items() if k in hashes} == {
        k: v for k, v in b.items() if k in hashes
    }
    assert a.keys() == b.keys()
    assert a[online.MARKER_KEY.encode()] == b[online.MARKER_KEY.encode()]
    assert all(ttl == -1 for _, _, ttl in a.values())  # Feast sets no expiry; nor does bulk
    empty = [f for _, h, _ in a.values() for f, v in h.items() if v == b""]
    assert empty, "a NaN double is an empty ValueProto in both"

    now = feature_time(D) + dt.timedelta(hours=1)
    for user in ("u0", "ü-2", "x" * 200, "ghost"):
        r = [online.online_features_fast(s, user, [*ITEMS, "nope"], now=now) for s in two_stores]
        assert r[0].user == r[1].user  # NaN rows read as the defaults in both
        assert r[0].user_event_timestamp == r[1].user_event_timestamp
        assert r[0].user_missing == (user == "ghost") == r[1].user_missing
        pd.testing.assert_frame_equal(r[0].items, r[1].items)
        assert r[1].n_missing_items == 1


def test_rows_and_layout_follow_feasts_rules(two_stores) -> None:
    _, bulk = two_stores
    store = fs.get_store(bulk)
    layout = bulk_write.supported(store, "user_features")
    assert isinstance(layout, bulk_write.ViewLayout)
    assert [n for n, _ in layout.features] == [n for n, _, _ in USER_FEATURES]
    assert layout.join_key == "user_id" and layout.key_ttl_s is None
    start, end = fs.materialize_window(D)
    rows = bulk_write.read_rows(table_path(bulk, "user", D), "user_id", start, end)
    assert sorted(rows.column("user_id").to_pylist()) == sorted(USERS)
    first = rows.filter(pc.equal(rows.column("user_id"), USERS[0]))
    assert first.column("event_timestamp").to_pylist() == [end]  # the newer of the two
    assert len(ITEM_FEATURES) == len(bulk_write.supported(store, "item_features").features)

    # with a key ttl in the online store config (recloop sets none), each key expires as
    # Feast's EXPIRE after HSET makes it, holding the same hash
    client = redis.Redis.from_url(bulk.redis_url)
    bulk_write.write_table(client, rows, layout, chunk_rows=4)
    plain = dump(bulk.redis_url)
    client.flushdb()
    bulk_write.write_table(client, rows, dataclasses.replace(layout, key_ttl_s=100), chunk_rows=4)
    timed = dump(bulk.redis_url)
    assert len(timed) == len(USERS) and all(0 < ttl <= 100 for _, _, ttl in timed.values())
    assert {k: v[:2] for k, v in timed.items()} == {k: v[:2] for k, v in plain.items()}


def test_a_missing_table_refuses_and_leaves_redis_unchanged(two_stores) -> None:
    _, bulk = two_stores
    fs.materialize_date(bulk, D)
    before = dump(bulk.redis_url)
    later = D + dt.timedelta(days=1)
    schema.write_partition_atomic(
        feature_table(USER_SCHEMA, USERS, 1), bulk.features_dir / "user", later
    )
    with pytest.raises(FileNotFoundError, match="refusing to materialize"):
        fs.materialize_date(bulk, later)  # no item table for D+1
    assert dump(bulk.redis_url) == before


def test_the_writer_setting_is_checked() -> None:
    env = {"RECLOOP_HOME": "/tmp/x"}
    assert Settings.from_env(env).materialize_writer == "bulk"
    assert (
        Settings.from_env({**env, "RECLOOP_MATERIALIZE_WRITER": "bulk"}).as_env()[
            "RECLOOP_MATERIALIZE_WRITER"
        ]
        == "bulk"
    )
    with pytest.raises(ValueError, match="RECLOOP_MATERIALIZE_WRITER='fast': expected feast"):
        Settings.from_env({**env, "RECLOOP_MATERIALIZE_WRITER": "fast"})
