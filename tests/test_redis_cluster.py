"""The online store on a Redis Cluster (issue 18): 3 masters + 3 replicas on loopback.

A module-scoped cluster started by ``infra/redis-cluster.sh`` on free ports beside the session's
single redis-server: one small day of features materialized into both through Feast, read back
through the serving path (``serving.hydrate``, the item cache) and Feast's own read, compared;
the materialization marker and partial key on the cluster; then one master killed (SIGKILL)
while serving's hydrate stage reads: its replica takes over and the reads come back, none of
them wrong. The failover window is printed (``pytest -s``), not asserted; figures in
benchmarks/README.md ("Redis Cluster online store").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import redis

from pipelines.core import schema
from pipelines.core.net import port_open
from pipelines.core.settings import Settings
from pipelines.features import online
from pipelines.features import store as fs
from pipelines.features.redis_client import make_client, parse_cluster_url
from pipelines.features.tables import compute_features
from serving.engine import Breaker
from serving.hydrate import read_features, read_user_features, redis_call
from serving.item_cache import ItemFeatureCache
from serving.shared import shared_url
from tests.helpers import REPO, RedisServer

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # dask, in Feast's file store

D = dt.date(2024, 3, 5)
USERS = [f"user-{k}" for k in range(40)]
ITEMS = [f"item-{k}" for k in range(30)]
SERVICE = "ranker_v1"


# --- URLs (no server) ---------------------------------------------------------------------


def test_a_cluster_url_names_its_nodes_and_a_bad_one_fails_clearly():
    url = "redis+cluster://:s3cret@127.0.0.1:7000,127.0.0.1:7001/0"
    target = parse_cluster_url(url)
    assert target.nodes == (("127.0.0.1", 7000), ("127.0.0.1", 7001))
    assert target.password == "s3cret" and target.username is None
    assert fs.redis_type(url) == "redis_cluster" and fs.redis_type("redis://h:1/0") == "redis"
    assert fs.redis_connection_string(url, 1.0) == (
        "127.0.0.1:7000,127.0.0.1:7001,password=s3cret,socket_connect_timeout=1.0,socket_timeout=1.0"
    )  # Feast's RedisCluster(startup_nodes=..., **kwargs): no db
    assert "redis_type: redis_cluster" in fs.feature_store_yaml(
        Settings.from_env({"RECLOOP_HOME": "/tmp/x", "RECLOOP_REDIS_URL": url})
    )
    for bad in ("redis+cluster://", "redis+cluster://127.0.0.1", "redis+cluster://h:7000/1",
                "redis+cluster://h:7000,h:x", "redis+cluster://h:99999"):  # fmt: skip
        with pytest.raises(ValueError, match="expected redis\\+cluster://host:port"):
            parse_cluster_url(bad)
    with pytest.raises(ValueError, match=r"\*\*\*"):  # the password is never shown
        parse_cluster_url("redis+cluster://:s3cret@h:7000/2")
    # the request records of serving go to the cluster itself (it has no database 1)
    settings = Settings.from_env({"RECLOOP_HOME": "/tmp/x", "RECLOOP_REDIS_URL": url})
    assert shared_url(settings, env={}) == url


# --- a cluster and a single Redis holding the same day ----------------------------------------


@dataclasses.dataclass
class World:
    single: Settings
    cluster: Settings
    home: Path
    summaries: list[dict]


def cluster_script(action: str, env: dict[str, str]) -> str:
    """``infra/redis-cluster.sh action``'s output (asserts it succeeded)."""
    script = REPO / "infra" / "redis-cluster.sh"
    out = subprocess.run(
        ["bash", str(script), action], env=env, capture_output=True, text=True, timeout=90
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def free_base_port() -> int:
    """A base port ``p`` with ``p..p+5`` and their cluster bus ports (``+10000``) free."""
    for _ in range(100):
        base = random.randrange(20_000, 22_000)
        ports = [base + i for i in range(6)] + [base + 10_000 + i for i in range(6)]
        if not any(port_open(p, timeout_s=0.05) for p in ports):
            return base
    raise RuntimeError("no 6 free ports for a Redis Cluster")


def write_day(settings: Settings) -> None:
    """Day ``D``'s validated events (random impressions and clicks) and the attribute tables."""
    rng = np.random.default_rng(18)
    n = 500
    events = pd.DataFrame(
        {
            "event_id": [f"ev{k}" for k in range(n)],
            "ts": pd.Timestamp(D, tz="UTC") + pd.to_timedelta(rng.integers(0, 86_000, n), "s"),
            "user_id": rng.choice(USERS, n),
            "item_id": rng.choice(ITEMS, n),
            "event": rng.choice(["impression", "click"], n, p=[0.8, 0.2]),
            "value": 1.0,
        }
    )
    schema.write_partition_atomic(schema.conform(events), settings.validated_dir, D)
    users = pd.DataFrame({"user_id": USERS, "age": rng.integers(18, 70, len(USERS)),
                          "gender": "x", "country": "FR", "signup_date": dt.date(2024, 1, 2)})  # fmt: skip
    items = pd.DataFrame({"item_id": ITEMS, "category": rng.choice(["a", "b", "c"], len(ITEMS)),
                          "price": rng.random(len(ITEMS)), "created_date": dt.date(2024, 2, 1)})  # fmt: skip
    schema.write_table_atomic(
        schema.conform(users, schema.USERS), settings.data_dir / "users.parquet"
    )
    schema.write_table_atomic(
        schema.conform(items, schema.ITEMS), settings.data_dir / "items.parquet"
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer):
    """Day ``D`` materialized into the session's redis-server and into a cluster of our own."""
    home = tmp_path_factory.mktemp("cluster")
    env = {**os.environ, "RECLOOP_HOME": str(home), "RECLOOP_REDIS_MAXMEMORY": "64mb",
           "RECLOOP_REDIS_CLUSTER_PORT": str(free_base_port()),
           "RECLOOP_REDIS_CLUSTER_NODE_TIMEOUT_MS": "1000"}  # fmt: skip
    url = cluster_script("start", env).split("RECLOOP_REDIS_URL=")[-1].strip()
    single = Settings.from_env(
        {"RECLOOP_HOME": str(home / "ws"), "RECLOOP_REDIS_URL": redis_server.url}
    )
    on_cluster = dataclasses.replace(single, redis_url=url)
    try:
        single.ensure_dirs()
        write_day(single)
        compute_features(single, D)
        fs.apply_repo(single)
        redis.Redis.from_url(redis_server.url).flushall()
        summaries = [fs.materialize_date(s, D) for s in (single, on_cluster)]
        yield World(single, on_cluster, home, summaries)
    finally:
        fs.forget_store(single)
        fs.forget_store(on_cluster)
        cluster_script("stop", env)


def same_read(a, b) -> None:
    """Two :class:`serving.hydrate.Hydrated` hold the same values."""
    assert a.user == b.user and a.user_missing == b.user_missing
    assert a.missing_items == b.missing_items
    assert a.items.keys() == b.items.keys()
    for name in a.items:
        assert list(a.items[name]) == list(b.items[name]), name


def test_materialize_and_serve_through_the_cluster_as_through_one_redis(world: World):
    one, many = world.summaries
    assert {k: v for k, v in one.items() if k not in ("seconds", "rows_per_s")} == {
        k: v for k, v in many.items() if k not in ("seconds", "rows_per_s")
    }
    assert many["users"] == len(USERS) and not many["skipped"]
    client = online.redis_client(world.cluster)
    primaries = client.get_primaries()
    assert len(primaries) == 3
    assert all(client.get_redis_connection(n).dbsize() > 10 for n in primaries)  # spread out
    ids = ITEMS + ["never-seen-item", ITEMS[3]]  # a miss and a duplicate, order kept
    cache = ItemFeatureCache()
    for user in USERS[:5] + ["never-seen-user"]:
        ref = read_features(world.single, SERVICE, user, ids)
        same_read(read_features(world.cluster, SERVICE, user, ids), ref)
        same_read(read_features(world.cluster, SERVICE, user, ids, cache), ref)  # fills
        same_read(read_features(world.cluster, SERVICE, user, ids, cache), ref)  # hits
    assert ref.user_missing and ref.missing_items == 1
    assert read_user_features(world.cluster, SERVICE, "never-seen-user") is None
    assert read_user_features(world.cluster, SERVICE, USERS[0]) == read_user_features(
        world.single, SERVICE, USERS[0]
    )
    # Feast's own read (its RedisCluster client) = recloop's fast path on one Redis
    now = dt.datetime(2024, 3, 6, 12, tzinfo=dt.UTC)
    feast = fs.online_features(world.cluster, USERS[1], ids, now=now, service=SERVICE)
    fast = online.online_features_fast(world.single, USERS[1], ids, now=now, service=SERVICE)
    assert feast.user == fast.user and feast.path == "feast"
    pd.testing.assert_frame_equal(feast.items, fast.items, check_dtype=False)


def test_the_marker_and_partial_key_work_on_the_cluster(world: World):
    from redis.crc import key_slot

    from pipelines.report.status import materialized_date

    client = online.redis_client(world.cluster)
    # why no MULTI/EXEC on a cluster: the two keys live in different slots
    assert key_slot(online.MARKER_KEY.encode()) != key_slot(online.PARTIAL_KEY.encode())
    assert online.read_marker(client) == (D.isoformat().encode(), None)
    assert materialized_date(world.cluster) == (D.isoformat(), None, None)
    plan = online.read_plan(world.cluster, SERVICE)
    commands = online.row_commands(plan, USERS[0], ITEMS[:4])
    state, replies = online.hmget_rows_after_marker(client, commands)
    assert state == D.isoformat().encode() and len(replies) == 5
    assert replies == online.hmget_rows(online.redis_client(world.single), commands)
    partial = "2024-03-06 2024-03-07T01:00:00+00:00"
    client.set(online.PARTIAL_KEY, partial)
    state, _ = online.hmget_rows_after_marker(client, commands)
    assert online.partial_of(state) == partial
    assert "2024-03-06 under way or failed" in materialized_date(world.cluster)[2]
    online.complete_marker(client, None)  # an older day completed: the marker stays
    assert online.read_marker(client) == (D.isoformat().encode(), None)
    online.complete_marker(client, "2024-03-06")
    assert online.read_marker(client) == (b"2024-03-06", None)
    assert fs.materialize_date(world.cluster, D)["skipped"]  # older than the marker
    online.complete_marker(client, D.isoformat())


def test_serving_shares_requests_and_admin_state_through_the_cluster(world: World):
    from serving import shared

    s = world.cluster
    shown = {"request_id": "r1", "user_id": USERS[0], "items": ["a", "b"],
             "propensities": [0.5, 0.25], "arm": "champion", "model_version": "3"}  # fmt: skip
    assert shared.publish(s, shown, ttl_s=60)
    assert shared.fetch(s, "r1")["items"] == ("a", "b")
    assert [shared.feedback_index(s, "r1", "a", "click", 60) for _ in range(2)] == [0, 1]
    assert shared.write_admin(s, "svc", {"share": 0.3}, reload=True) == {"share": 0.3, "reload": 1}
    assert shared.read_admin(s, "svc") == {"share": 0.3, "reload": 1}
    assert online.redis_client(s).ttl(shared.ADMIN_PREFIX + "svc") > 0  # every key expires


def test_a_killed_master_fails_over_and_reads_recover(world: World):
    """Serving's hydrate stage reads in a loop while the master holding the user's row is
    killed: reads fail (degraded answers) only until its replica is promoted, then succeed;
    every read that succeeded returned the right rows."""
    from redis.crc import key_slot

    user, ids = USERS[7], ITEMS
    ref = read_features(world.single, SERVICE, user, ids)
    client = online.redis_client(world.cluster)
    node = client.nodes_manager.get_node_from_slot(key_slot(online.redis_key("user_id", user)))
    pid = int((world.home / "redis-cluster" / str(node.port) / "redis.pid").read_text())
    engine = SimpleNamespace(breaker=Breaker(cooldown_s=0.0),
                             hydrate_pool=ThreadPoolExecutor(2),
                             config=SimpleNamespace(redis_cooldown_s=0.0))  # fmt: skip
    reads: list[tuple[float, str | None]] = []  # (seconds since the kill, error)
    t_kill = None
    try:
        while t_kill is None or not reads[-1][0] > 0.5 or any(e for _, e in reads[-5:]):
            got, err = redis_call(engine, 2000, read_features, world.cluster, SERVICE, user, ids)
            t = time.monotonic()
            reads.append((t - (t_kill or t), err))
            if got is not None:
                same_read(got, ref)  # never wrong data
            if len(reads) == 5:
                os.kill(pid, signal.SIGKILL)
                t_kill = time.monotonic()
            assert t_kill is None or t - t_kill < 30, f"reads did not recover: {reads[-3:]}"
            time.sleep(0.02)
    finally:
        engine.hydrate_pool.shutdown()
    assert all(err is None for _, err in reads[:5])
    failed = [t for t, err in reads[5:] if err is not None]
    assert failed, "no read failed: the killed master did not serve the user's row"
    back = next(t for t, err in reads[5:] if err is None and t > failed[-1])
    promoted = client.nodes_manager.get_node_from_slot(key_slot(online.redis_key("user_id", user)))
    assert promoted.port != node.port  # the replica, now the slot's master
    assert client.get_redis_connection(promoted).role()[0] == b"master"
    assert online.read_marker(make_client(world.cluster.redis_url, 1.0)) == (
        D.isoformat().encode(),
        None,
    )  # a new client (the dead node among its seeds) finds the new topology
    print(f"\nfailover window: {len(failed)} of {len(reads) - 5} reads failed; the first read "
          f"after the kill failed at {failed[0]:.2f} s, the last at {failed[-1]:.2f} s; reads "
          f"answer again from {back:.2f} s (node timeout 1 s)")  # fmt: skip
