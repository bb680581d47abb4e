"""Issue 17, case 5: an admin change reaches every worker of ``recloop serve --workers N``.

A real ``recloop serve --workers 2`` (uvicorn, two processes) with an admin token. The A/B share
and salt are changed through ``/admin/experiment`` on one connection; then many fresh
connections (uvicorn's processes take turns accepting them) must all answer the new state, and
both processes must have answered (``pid`` in the answer). The state goes through Redis
(:mod:`serving.shared`): the process that took the change writes it, every process reads it
(before answering ``/admin/experiment``, and every second for routing).
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from pipelines.core.net import free_port
from pipelines.core.settings import Settings
from pipelines.core.wait import wait_until
from tests.helpers import REPO, fresh_mlflow, stop_service

TOKEN = "admin-workers-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ASKS = 60


@pytest.fixture()
def server(redis_settings: Settings):
    """``recloop serve --workers 2`` on a free loopback port over an empty registry (no
    champion: /recommend answers 503, the admin endpoints work); stopped after the test."""
    settings = redis_settings
    fresh_mlflow(settings)
    port = free_port()
    env = {**os.environ, **settings.as_env(), "RECLOOP_ADMIN_TOKEN": TOKEN}
    env.pop("RECLOOP_SERVE_ID", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port), "--workers", "2",
         "--reload-s", "0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    pids: set[int] = set()

    def both_up() -> bool:  # each process answers once it has started: wait for both
        assert proc.poll() is None, "server exited before it was ready"
        try:
            r = httpx.get(f"{url}/admin/experiment", headers=AUTH, timeout=2)
        except httpx.TransportError:
            return False
        pids.add(r.json()["pid"])
        return len(pids) == 2

    try:
        wait_until(both_up, 120, "both workers answering", interval_s=0.2)
        yield url
    finally:
        stop_service(proc, 30)


def ask_many(url: str) -> list[dict]:
    """``GET /admin/experiment`` on ``ASKS`` fresh connections, 8 at a time."""

    def one(_: int) -> dict:
        r = httpx.get(f"{url}/admin/experiment", headers=AUTH, timeout=10)  # a new connection
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(ASKS)))


def test_admin_change_reaches_every_worker(server: str) -> None:
    url = server
    before = ask_many(url)
    assert {a["challenger_share"] for a in before} == {0.1}
    r = httpx.post(f"{url}/admin/experiment", headers=AUTH,
                   json={"challenger_share": 0.5, "salt": "salt-2"}, timeout=10)  # fmt: skip
    assert r.status_code == 200, r.text
    after = ask_many(url)
    seen = {(a["challenger_share"], a["salt"]) for a in after}
    assert seen == {(0.5, "salt-2")}, f"workers disagree: {seen}"
    pids = {a["pid"] for a in before + after}
    assert len(pids) == 2, f"answers came from {pids}: not both workers"
    # a later change on top merges (the salt stays); a bad one changes nothing anywhere
    assert httpx.post(f"{url}/admin/experiment", headers=AUTH, json={"challenger_share": 0.2},
                      timeout=10).status_code == 200  # fmt: skip
    bad = httpx.post(f"{url}/admin/experiment", headers=AUTH, json={"challenger_share": 7},
                     timeout=10)  # fmt: skip
    assert bad.status_code == 422
    seen = {(a["challenger_share"], a["salt"]) for a in ask_many(url)}
    assert seen == {(0.2, "salt-2")}, seen


def test_routing_state_and_reloads_follow_without_a_get(
    redis_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two apps of one service in this process (as two workers): a change and a reload request
    taken by one reach the other by its background sync alone (what ``/recommend`` routes
    with); with Redis gone, a change is refused (503) and nothing changes anywhere."""
    import asyncio
    import time

    from serving.config import ServingConfig
    from tests.helpers import Service

    monkeypatch.setenv("RECLOOP_SERVE_ID", f"test-{time.time_ns()}")
    cfg = ServingConfig(processes=2, admin_token=TOKEN, reload_interval_s=0, log_flush_s=3600)

    async def go() -> None:
        async with Service(redis_settings, cfg, load=False) as a, \
                Service(redis_settings, cfg, load=False) as b:  # fmt: skip
            checks = []
            monkeypatch.setattr(b.engine.bundles, "check", lambda: checks.append(1) or {})
            monkeypatch.setattr(a.engine.bundles, "check", lambda: {})
            r = await a.client.post("/admin/experiment", headers=AUTH,
                                    json={"challenger_share": 0.7, "salt": "s3"})  # fmt: skip
            assert r.status_code == 200, r.text
            assert (await a.client.post("/admin/reload", headers=AUTH)).json()["all_workers"]
            for _ in range(40):  # B's background sync, every second
                if b.engine.config.challenger_share == 0.7 and checks:
                    break
                await asyncio.sleep(0.1)
            assert (b.engine.config.challenger_share, b.engine.config.salt) == (0.7, "s3")
            assert checks == [1]  # B checked the registry once for A's reload request
            bad_url = "redis://127.0.0.1:1/1"  # nothing listens: Redis is gone
            monkeypatch.setenv("RECLOOP_SERVE_SHARED_REDIS_URL", bad_url)
            r = await a.client.post("/admin/experiment", headers=AUTH,
                                    json={"challenger_share": 0.0})  # fmt: skip
            assert r.status_code == 503, r.text
            assert a.engine.config.challenger_share == 0.7  # not half applied

    asyncio.run(go())
