"""The serving hot path's item-feature cache and array ranking, against a real Redis.

A module-scoped workspace (1 simulated tiny day through the daily task functions: bundle 1
registered, its features materialized) on its own ``redis-server``, so the tests may rewrite
values in Redis. Item rows are changed behind the cache's back with Feast's own layout (hashed
field name, serialized ``ValueProto``), the way a materialization would.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np
import pytest
from feast.protos.feast.types.Value_pb2 import Value

from pipelines.core.settings import Settings
from pipelines.features import online
from pipelines.features import store as fs
from serving.app import create_app
from serving.bundle import load
from serving.config import ServingConfig
from serving.hydrate import read_features
from serving.item_cache import ItemFeatureCache
from serving.rank import score_candidates
from tests.helpers import RedisServer, tiny_served_workspace

# integration: the module's world is a tiny trained workspace on a redis-server of its own
pytestmark = pytest.mark.integration
DAY = "2026-01-01"
SERVICE = "ranker_v1"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """``(settings, bundle 1, redis server)`` of a one-day tiny workspace."""
    with tiny_served_workspace(tmp_path_factory.mktemp("serving-cache"), (DAY,)) as (
        settings,
        server,
    ):
        yield settings, load(settings, "1"), server


def set_item_price(settings: Settings, item_id: str, price: float) -> None:
    """Overwrite one item's online ``item_price`` in Redis (Feast's hash field and encoding)."""
    field = online.feature_field("item_features", "item_price")
    key = online.redis_key("item_id", item_id)
    online.redis_client(settings).hset(key, field, Value(double_val=price).SerializeToString())


def bump_marker(settings: Settings, date: str) -> None:
    """What a materialization of a newer day leaves behind: a newer marker."""
    online.redis_client(settings).set(online.MARKER_KEY, date)


def candidates(bundle, n: int = 40) -> list[str]:
    return [str(i) for i in bundle.item_table.ids[:n]] + ["never-seen-item"]


def assert_same(a, b) -> None:
    assert a.user == b.user
    assert a.missing_items == b.missing_items
    assert set(a.items) == set(b.items)
    for name in a.items:
        assert a.items[name].dtype == b.items[name].dtype, name
        assert list(a.items[name]) == list(b.items[name]), name


def test_cached_read_equals_a_full_read_and_reads_only_misses(world):
    settings, bundle, _ = world
    user = bundle.users.ids[0]
    ids = candidates(bundle)
    cache = ItemFeatureCache(ttl_s=3600)
    plain = read_features(settings, SERVICE, user, ids)
    first = read_features(settings, SERVICE, user, ids, cache)
    assert_same(first, plain)
    assert plain.missing_items == 1  # the never-seen item: defaults, counted missing
    assert (cache.hits, cache.misses) == (0, len(ids))
    # a second request over a reordered, overlapping set: only the new ids are read
    more = ids[::-1][:30] + [str(i) for i in bundle.item_table.ids[40:50]]
    second = read_features(settings, SERVICE, user, more, cache)
    assert_same(second, read_features(settings, SERVICE, user, more))
    assert (cache.hits, cache.misses) == (30, len(ids) + 10)
    # the user's row is read on every request, never cached
    other = bundle.users.ids[1]
    assert read_features(settings, SERVICE, other, ids, cache).user == (
        read_features(settings, SERVICE, other, ids).user
    )


def test_new_materialization_drops_the_cache_and_ttl_bounds_staleness(world):
    settings, bundle, _ = world
    user = bundle.users.ids[0]
    ids = candidates(bundle, 10)
    item = ids[3]
    old = float(read_features(settings, SERVICE, user, ids).items["item_price"][3])
    cache = ItemFeatureCache(ttl_s=3600)
    try:
        read_features(settings, SERVICE, user, ids, cache)
        resets = cache.resets
        set_item_price(settings, item, old + 100.0)  # rewritten without a new marker
        stale = read_features(settings, SERVICE, user, ids, cache)
        assert stale.items["item_price"][3] == old  # within the TTL: the cached row
        bump_marker(settings, "2099-01-01")  # a newer day materialized
        fresh = read_features(settings, SERVICE, user, ids, cache)
        assert fresh.items["item_price"][3] == old + 100.0
        assert cache.resets == resets + 1 and cache.marker == b"2099-01-01"
        # a short TTL re-reads rows without any marker change
        short = ItemFeatureCache(ttl_s=0.05)
        read_features(settings, SERVICE, user, ids, short)
        set_item_price(settings, item, old + 200.0)
        time.sleep(0.1)
        assert read_features(settings, SERVICE, user, ids, short).items["item_price"][3] == (
            old + 200.0
        )
    finally:
        set_item_price(settings, item, old)
        bump_marker(settings, DAY)


def test_full_cache_serves_uncached_reads_correctly(world):
    settings, bundle, _ = world
    user = bundle.users.ids[0]
    ids = candidates(bundle, 30)
    cache = ItemFeatureCache(ttl_s=3600, max_items=8)
    for _ in range(2):
        assert_same(
            read_features(settings, SERVICE, user, ids, cache),
            read_features(settings, SERVICE, user, ids),
        )
    assert all(n <= 8 for n in cache.sizes().values())


def test_rank_on_cached_features_equals_the_ranker(world):
    settings, bundle, _ = world
    user = bundle.users.ids[2]
    ids = candidates(bundle, 60)
    cache = ItemFeatureCache(ttl_s=3600)
    read_features(settings, SERVICE, user, ids[:20], cache)  # part of them cached
    hydrated = read_features(settings, SERVICE, user, ids, cache)
    ref = online.online_features_fast(settings, user, ids, service=SERVICE)
    from pipelines.ranking.data import SERVING_POSITION, add_ranker_columns

    frame = add_ranker_columns(ref.items.assign(**ref.user), SERVING_POSITION)  # as served
    want = bundle.ranker.predict_proba(frame)
    np.testing.assert_allclose(score_candidates(bundle, hydrated), want, rtol=0, atol=1e-7)
    np.testing.assert_allclose(
        score_candidates(bundle, hydrated), want, rtol=0, atol=1e-7
    )  # memoized codes


def test_item_table_rows_match_an_index_lookup(world):
    _, bundle, _ = world
    t = bundle.item_table
    ids = [str(t.ids[5]), "nope", str(t.ids[0]), str(t.ids[-1])]
    assert t.rows(ids).tolist() == [5, -1, 0, len(t.ids) - 1]
    assert t.rows(np.asarray(ids)).dtype == np.int64 and len(t.rows([])) == 0


def ask(settings: Settings, bundle, cfg: ServingConfig, users: list[str], stop=None):
    """POST /recommend for each user with ``bundle`` as champion; ``stop()`` called before
    the last one. Returns ``(bodies, engine)``."""

    async def go():
        app = create_app(settings, cfg, load=False)
        app.state.engine.bundles.arms["champion"] = bundle
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app)
            async with httpx.AsyncClient(transport=transport, base_url="http://s") as client:
                out = []
                for n, u in enumerate(users):
                    if stop is not None and n == len(users) - 1:
                        stop()
                    r = await client.post("/recommend", json={"user_id": u, "k": 5})
                    assert r.status_code == 200, r.text
                    out.append(r.json())
                return out, app.state.engine

    return asyncio.run(go())


def test_service_uses_the_cache_and_a_dead_redis_still_degrades(world, tmp_path, monkeypatch):
    """The cache holds every candidate of the first request, yet a dead Redis (the user's row
    cannot be read) still gives the flagged popularity answer."""
    _, bundle, _ = world
    own = RedisServer(tmp_path)
    own.start()
    try:
        monkeypatch.setenv("RECLOOP_REDIS_URL", own.url)
        settings = Settings.from_env()
        fs.materialize_date(settings, DAY)
        user = bundle.users.ids[0]
        cfg = ServingConfig(reload_interval_s=0, seed=7, explore_rate=0.0, log_flush_s=3600)
        bodies, engine = ask(settings, bundle, cfg, [user, user, user], stop=own.stop)
    finally:
        own.stop()
    healthy, again, dead = bodies
    assert not healthy["degraded"] and not again["degraded"]
    assert [x["item_id"] for x in again["items"]] == [x["item_id"] for x in healthy["items"]]
    assert engine.item_cache is not None and engine.item_cache.hits >= engine.item_cache.misses
    assert dead["degraded"] is True and "redis" in dead["fallbacks"]
    assert len(dead["items"]) == 5


def test_item_cache_can_be_turned_off(world):
    settings, _, _ = world
    cfg = ServingConfig.from_env({"RECLOOP_SERVE_ITEM_CACHE_TTL_S": "0"}, reload_interval_s=0)
    assert cfg.item_cache_ttl_s == 0
    assert create_app(settings, cfg, load=False).state.engine.item_cache is None
    with pytest.raises(ValueError, match="item cache"):
        ServingConfig(item_cache_ttl_s=-1)
