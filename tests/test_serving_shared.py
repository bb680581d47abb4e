"""/feedback across worker processes: two apps (two workers' engines, each with its own memory)
on one real Redis; a click reported to the worker that did not serve the request is logged."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from pipelines.core.settings import Settings
from serving.app import create_app
from serving.bundle import load
from serving.config import ServingConfig
from tests.helpers import tiny_served_workspace

# integration: the module's world is a tiny trained workspace on a redis-server of its own
pytestmark = pytest.mark.integration
DAY = "2026-01-01"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    with tiny_served_workspace(tmp_path_factory.mktemp("serving-shared"), (DAY,)) as (settings, _):
        yield settings, load(settings, "1")


def two_workers(settings: Settings, bundle, processes: int, script):
    """Run ``script(a, b)`` with two ASGI clients, each an app with its own engine."""
    cfg = ServingConfig(reload_interval_s=0, seed=7, log_flush_s=3600, processes=processes)

    async def go():
        apps = [create_app(settings, cfg, load=False) for _ in range(2)]
        for app in apps:
            app.state.engine.bundles.arms["champion"] = bundle
        async with apps[0].router.lifespan_context(apps[0]):
            async with apps[1].router.lifespan_context(apps[1]):
                clients = [
                    httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://s")
                    for app in apps
                ]
                try:
                    return await script(*clients), apps
                finally:
                    for c in clients:
                        await c.aclose()

    return asyncio.run(go())


def test_feedback_reaches_any_worker_and_counts_once(world):
    settings, bundle = world
    user = bundle.users.ids[0]

    async def script(a, b):
        served = (await a.post("/recommend", json={"user_id": user, "k": 5})).json()
        await asyncio.sleep(0.05)  # the publish runs off the request path
        item = served["items"][1]["item_id"]
        body = {"request_id": served["request_id"], "item_id": item, "event": "click"}
        first = await b.post("/feedback", json=body)  # the other worker
        second = await a.post("/feedback", json=body)  # the serving worker: a repeat click
        wrong = await b.post("/feedback", json={**body, "item_id": "not-shown"})
        return served, first, second, wrong

    (served, first, second, wrong), _ = two_workers(settings, bundle, 2, script)
    rid = served["request_id"]
    assert first.status_code == 200, first.text
    assert first.json()["logged"] == f"{rid}-1c"
    assert second.status_code == 200 and second.json()["logged"] == f"{rid}-1c"
    assert (first.json()["duplicate"], second.json()["duplicate"]) == (False, True)
    assert wrong.status_code == 422


def test_feedback_while_the_shared_store_is_down_says_retry_not_unknown(world, monkeypatch):
    """A click reaching the worker that did not serve the request while Redis is down: 503 with
    ``Retry-After`` (the request may exist), not 404 "unknown" (was: 404 "expired or never
    served" for a request that was served). Redis up again: the same click is logged; an id
    no worker served is 404."""
    from pipelines.core.net import free_port

    settings, bundle = world
    user = bundle.users.ids[0]

    async def script(a, b):
        served = (await a.post("/recommend", json={"user_id": user, "k": 5})).json()
        await asyncio.sleep(0.05)  # the publish runs off the request path
        body = {"request_id": served["request_id"], "item_id": served["items"][0]["item_id"],
                "event": "click"}  # fmt: skip
        with monkeypatch.context() as m:
            m.setenv("RECLOOP_SERVE_SHARED_REDIS_URL", f"redis://127.0.0.1:{free_port()}/1")
            down = await b.post("/feedback", json=body)
        back = await b.post("/feedback", json=body)
        never = await b.post("/feedback", json={**body, "request_id": "never-served"})
        return down, back, never

    (down, back, never), _ = two_workers(settings, bundle, 2, script)
    assert down.status_code == 503, down.text
    assert down.headers["retry-after"] == "5" and "retry" in down.json()["detail"]
    assert back.status_code == 200 and back.json()["duplicate"] is False
    assert never.status_code == 404


def test_one_process_keeps_requests_in_memory_only(world):
    settings, bundle = world
    user = bundle.users.ids[0]

    async def script(a, b):
        served = (await a.post("/recommend", json={"user_id": user, "k": 5})).json()
        body = {"request_id": served["request_id"], "item_id": served["items"][0]["item_id"],
                "event": "click"}  # fmt: skip
        return (await b.post("/feedback", json=body)), (await a.post("/feedback", json=body))

    (other, own), _ = two_workers(settings, bundle, 1, script)
    assert other.status_code == 404  # nothing was shared: one process needs no Redis copy
    assert own.status_code == 200


def test_redis_outage_warnings_are_rate_limited(caplog, monkeypatch):
    """A Redis outage at 100 req/s: one warning per kind per WARN_EVERY_S, the rest counted
    and reported when Redis answers again (was: one warning per request)."""
    import dataclasses
    import logging

    from pipelines.core.net import free_port
    from pipelines.core.settings import Settings
    from serving import shared

    monkeypatch.setattr(shared, "_warned", {})
    down = dataclasses.replace(Settings.from_env(), redis_url=f"redis://127.0.0.1:{free_port()}/0")
    shown = {"request_id": "r1", "user_id": "u", "items": ["a"], "propensities": [1.0],
             "arm": "control", "model_version": "m"}  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="recloop.serving.shared"):
        for _ in range(20):
            assert shared.publish(down, shown, 60) is False
        assert [r.getMessage().count("not shared through Redis") for r in caplog.records] == [1]
        monkeypatch.setattr(shared, "WARN_EVERY_S", 0.0)
        shared.publish(down, shown, 60)
        assert "19 more not logged" in caplog.records[-1].getMessage()
        # Redis answers again: nothing left to report, the next failure warns at once
        shared._answered("publish")
        shared.publish(down, shown, 60)
        assert len(caplog.records) == 3
