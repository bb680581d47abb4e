"""Issue 17, case 9 (the answers): features falling back to defaults are flagged ``degraded``.

After a Redis restart (no persistence: an empty online store) or a partial materialization,
Redis answers but has no rows: the ranker then scores defaults. The rule
(:func:`serving.hydrate.features_degraded`): the user's row missing, or more than half of the
candidates' rows missing → the response is ``degraded`` with the fallback ``features`` (and
counted in ``/metrics``); a few missing candidates (new items) are normal and not flagged.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import redis

from pipelines.core.settings import Settings
from pipelines.features.online import redis_key
from pipelines.release import registry
from serving.config import ServingConfig
from tests.helpers import Service, known_user, tiny_served_workspace


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """A one-day tiny workspace on a Redis of its own, bundle 1 champion; the online store's
    keys dumped, so that each test can restore it."""
    with tiny_served_workspace(tmp_path_factory.mktemp("missing")) as (settings, server):
        if registry.get_alias(settings, "champion") is None:
            assert registry.promote(settings, "1", "champion")
        r = redis.Redis.from_url(settings.redis_url)
        dump = {k: r.dump(k) for k in r.scan_iter(count=1000)}
        yield settings, r, dump


@pytest.fixture()
def store(world):
    """``(settings, redis client)``; the online store restored after the test."""
    settings, r, dump = world
    yield settings, r
    r.flushdb()
    for k, v in dump.items():
        r.restore(k, 0, v, replace=True)


def ask(settings: Settings, user: str) -> dict:
    cfg = ServingConfig(reload_interval_s=0, seed=7, explore_rate=0.0, log_flush_s=3600,
                        item_cache_ttl_s=0)  # fmt: skip

    async def go() -> tuple[dict, str]:
        async with Service(settings, cfg) as s:
            r = await s.client.post("/recommend", json={"user_id": user, "k": 5})
            assert r.status_code == 200, r.text
            m = await s.client.get("/metrics")
            return r.json(), m.text

    out, metrics = asyncio.run(go())
    out["metrics"] = metrics
    return out


def item_keys(settings: Settings) -> list[bytes]:
    from serving.bundle import load

    return [redis_key("item_id", str(i)) for i in load(settings, "1").item_table.ids]


def test_full_store_is_not_degraded(store) -> None:
    settings, _ = store
    out = ask(settings, known_user(settings)[0])
    assert not out["degraded"] and out["fallbacks"] == []
    assert len(out["items"]) == 5


def test_empty_store_after_a_restart_is_degraded(store) -> None:
    settings, r = store
    user = known_user(settings)[0]
    r.flushdb()  # what a restarted Redis without persistence holds
    out = ask(settings, user)
    assert out["degraded"] is True
    assert "features" in out["fallbacks"]
    assert len(out["items"]) == 5  # still answered
    assert 'recloop_fallbacks_total{kind="features"} 1' in out["metrics"].replace(".0", "")


def test_missing_user_row_is_degraded(store) -> None:
    settings, r = store
    user = known_user(settings)[0]
    assert r.delete(redis_key("user_id", user)) == 1
    out = ask(settings, user)
    assert out["degraded"] is True and "features" in out["fallbacks"]


def test_most_items_missing_is_degraded_a_few_are_not(store) -> None:
    settings, r = store
    user = known_user(settings)[0]
    keys = item_keys(settings)
    rng = np.random.default_rng(0)
    few = rng.choice(len(keys), size=len(keys) // 10, replace=False)
    r.delete(*[keys[i] for i in few])  # a tenth of the catalog: new items, say
    out = ask(settings, user)
    assert not out["degraded"] and out["fallbacks"] == []
    r.delete(*keys)  # a materialization that wrote the users but no items
    out = ask(settings, user)
    assert out["degraded"] is True and "features" in out["fallbacks"]
