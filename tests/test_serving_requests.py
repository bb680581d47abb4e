"""The service's request log (the A/B guardrails' feed) against a real Redis and a tiny bundle.

A module-scoped workspace trained by the real daily task functions (``tiny_trained_workspace``);
the app runs in-process with its lifespan (background flush, flush at shutdown)."""

from __future__ import annotations

import asyncio
import time

import pandas as pd
import pytest

from pipelines.core import schema
from pipelines.core.settings import Settings
from serving import rerank
from serving.config import ServingConfig
from serving.logging import REQUESTS, requests_dir
from tests.helpers import RedisServer, Service, champion_workspace, known_user

DAYS = ("2026-01-01", "2026-01-02")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer):
    home = tmp_path_factory.mktemp("requests") / "home"
    with champion_workspace(home, redis_server.url, DAYS) as settings:
        yield settings


def config(**kw) -> ServingConfig:
    base = {"reload_interval_s": 0, "seed": 7, "explore_rate": 0.2, "log_flush_s": 3600}
    return ServingConfig(**{**base, **kw})


def read_log(settings: Settings) -> pd.DataFrame:
    root = requests_dir(settings.home)
    # a day's folder exists a moment before its first file is renamed into place: not yet a log
    days = [
        d
        for d in schema.partition_dates(root)
        if any(schema.partition_dir(root, d).glob("*.parquet"))
    ]
    frames = [schema.read_partition(root, d) for d in days]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=REQUESTS.names)


def test_one_row_per_routed_request_flushed_at_shutdown(
    world: Settings, monkeypatch: pytest.MonkeyPatch
):
    import shutil

    shutil.rmtree(requests_dir(world.home), ignore_errors=True)
    user, _ = known_user(world)

    def boom(*a, **k):
        raise ValueError("re-ranker exploded")

    async def go():
        async with Service(world, config()) as s:
            ok = await s.client.post("/recommend", json={"user_id": user, "k": 7})
            cold = await s.client.get("/recommend", params={"user_id": "brand-new", "k": 4})
            bad = await s.client.post("/recommend", json={"user_id": "", "k": 4})  # 422
            s.engine.metrics.in_flight = s.engine.config.max_in_flight
            over = await s.client.post("/recommend", json={"user_id": user})  # overload 503
            s.engine.metrics.in_flight = 0
            with monkeypatch.context() as m:  # a unit-level failure after routing -> 500
                m.setattr(rerank, "exploit_list", boom)
                err = await s.client.post("/recommend", json={"user_id": user, "k": 3})
            before_exit = read_log(world)
            return ok, cold, bad, over, err, before_exit

    ok, cold, bad, over, err, before_exit = asyncio.run(go())
    assert (ok.status_code, cold.status_code, bad.status_code, over.status_code) == (
        200, 200, 422, 503,
    )  # fmt: skip
    assert err.status_code == 500 and err.json()["detail"] == "internal error"
    assert before_exit.empty  # log_flush_s = 1 h: nothing written until the shutdown flush
    logged = read_log(world)
    # rejected before the pipeline (422, overload 503): counted in /metrics, not logged
    assert len(logged) == 3
    by_id = logged.set_index("request_id")
    good = by_id.loc[ok.json()["request_id"]]
    assert good["status"] == 200 and good["arm"] == "champion"
    assert good["model_version"] == "bundle-1" and good["user_id"] == user
    assert good["n_items"] == 7 and not good["degraded"] and good["fallbacks"] == ""
    # server total: at least the pipeline's own total
    assert good["latency_ms"] >= ok.json()["timings_ms"]["total"] > 0
    c = by_id.loc[cold.json()["request_id"]]
    assert c["fallbacks"] == "cold_start" and c["n_items"] == 4 and c["status"] == 200
    e = by_id.loc[err.json()["request_id"]]
    assert e["status"] == 500 and e["arm"] == "champion" and e["model_version"] == "bundle-1"
    assert e["n_items"] == 0
    # wall-clock partition of the arrival; atomic writes leave no temp files behind
    today = pd.Timestamp.now(tz="UTC").date()
    assert schema.partition_dates(requests_dir(world.home)) == [today]
    assert not list(requests_dir(world.home).glob(".tmp-*"))
    assert (pd.to_datetime(logged["ts"], utc=True).dt.date == today).all()


def test_background_flush_and_no_champion_503(world: Settings):
    import shutil

    shutil.rmtree(requests_dir(world.home), ignore_errors=True)
    user, _ = known_user(world)

    async def go():
        async with Service(world, config(log_flush_s=0.2)) as s:
            r = await s.client.post("/recommend", json={"user_id": user, "k": 5})
            deadline = time.monotonic() + 20
            seen = read_log(world)
            while seen.empty and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                seen = read_log(world)
            return r, seen

    r, seen = asyncio.run(go())
    assert list(seen["request_id"]) == [r.json()["request_id"]]  # written by the flush task

    async def go_empty():  # no bundle loaded: nothing to route to
        async with Service(world, config(), load=False) as s:
            return await s.client.post("/recommend", json={"user_id": user, "k": 5})

    resp = asyncio.run(go_empty())
    assert resp.status_code == 503
    logged = read_log(world)
    row = logged[logged["status"] == 503]
    assert len(row) == 1 and pd.isna(row["arm"].iloc[0]) and pd.isna(row["model_version"].iloc[0])
