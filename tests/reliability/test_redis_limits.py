"""Issue 17, case 9 (the store): request records kept apart from the online features, in a
bounded Redis.

With several workers every served request is written to Redis for ``/feedback``
(:mod:`serving.shared`). Those records go to their own database (``RECLOOP_SERVE_SHARED_REDIS_URL``,
default: the feature store's server, database 1), never to the feature store's database: a
materialized feature store is byte for byte the same after thousands of request records. And
``infra/redis.sh`` starts Redis bounded: ``maxmemory`` with the ``volatile-ttl`` policy, which
evicts only keys that expire (request records, feedback counters, soonest to expire first) and
never an online feature row (features have no TTL): full of features alone, Redis refuses
writes (materialization fails loudly) instead of silently dropping rows.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
import redis

from pipelines.core.net import free_port
from pipelines.core.settings import Settings
from serving import shared
from tests.helpers import REPO, RedisServer

DAY = "2026-01-01"


def record(i: int, n_items: int = 20) -> dict:
    return {"request_id": f"r{i:06d}", "user_id": f"u{i % 50}",
            "items": [f"i{j}" for j in range(n_items)], "propensities": [0.9] * n_items,
            "arm": "champion", "model_version": "bundle-1"}  # fmt: skip


def snapshot(url: str) -> dict[bytes, str]:
    """Every key of the database at ``url`` → a hash of its serialized value."""
    r = redis.Redis.from_url(url)
    return {k: hashlib.sha256(r.dump(k) or b"").hexdigest() for k in r.scan_iter(count=1000)}


@pytest.fixture()
def materialized(tmp_path: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch):
    """One tiny simulated day validated and materialized into the session Redis's db 0."""
    from pipelines.data.simulate import simulate
    from pipelines.orchestration import tasks

    redis.Redis.from_url(redis_server.url).flushall()
    monkeypatch.setenv("RECLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECLOOP_REDIS_URL", redis_server.url)
    monkeypatch.delenv("RECLOOP_SERVE_SHARED_REDIS_URL", raising=False)
    settings = Settings.from_env()
    settings.ensure_dirs()
    simulate(settings, 1, "tiny")
    tasks.validate(DAY)
    tasks.features(DAY)
    return settings


def test_request_records_leave_the_feature_store_untouched(materialized: Settings) -> None:
    settings = materialized
    before = snapshot(settings.redis_url)
    assert len(before) > 100  # users and items materialized
    for i in range(500):
        assert shared.publish(settings, record(i), ttl_s=600)
        assert shared.feedback_index(settings, f"r{i:06d}", "i1", "click", 600) == 0
    assert snapshot(settings.redis_url) == before  # not one key added, removed or changed
    assert shared.fetch(settings, "r000042")["user_id"] == "u42"
    other = shared.shared_url(settings)
    assert other.endswith("/1") and other != settings.redis_url
    assert len(snapshot(other)) == 1000  # the records and their feedback counters, with a TTL
    assert 0 < redis.Redis.from_url(other).ttl(shared.PREFIX + "r000001") <= 600


def test_shared_url_setting(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings(home=settings.home, redis_url="redis://:pw@127.0.0.1:6399/0")
    assert shared.shared_url(s) == "redis://:pw@127.0.0.1:6399/1"
    monkeypatch.setenv("RECLOOP_SERVE_SHARED_REDIS_URL", "redis://127.0.0.1:6400/0")
    assert shared.shared_url(s) == "redis://127.0.0.1:6400/0"


@pytest.mark.integration  # starts a redis-server through infra/redis.sh
def test_redis_sh_bounds_memory_and_evicts_only_request_records(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    env = {**os.environ, "RECLOOP_HOME": str(tmp_path), "RECLOOP_REDIS_URL": url,
           "RECLOOP_REDIS_MAXMEMORY": "8mb"}  # fmt: skip
    script = REPO / "infra" / "redis.sh"
    subprocess.run(["bash", str(script), "start"], env=env, check=True, timeout=30)
    try:
        r = redis.Redis.from_url(url)
        assert r.config_get("maxmemory")["maxmemory"] == str(8 * 2**20)
        assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "volatile-ttl"
        features = {f"feature:{i}": os.urandom(1000) for i in range(2000)}  # ~2.5 MB, no TTL
        for k, v in features.items():
            r.hset(k, mapping={"v": v})
        settings = Settings(home=tmp_path, redis_url=url)
        for i in range(8000):  # ~20 MB of request records: far over the bound
            assert shared.publish(settings, record(i, 60), ttl_s=3600), i
        info = r.info()
        assert info["evicted_keys"] > 0
        assert info["used_memory"] <= 9 * 2**20
        assert all(r.hget(k, "v") == v for k, v in features.items())  # no feature row lost
        assert redis.Redis.from_url(shared.shared_url(settings)).exists(shared.PREFIX + "r007999")
    finally:
        subprocess.run(["bash", str(script), "stop"], env=env, timeout=30)
