"""Serving replicas behind HAProxy (issue 18): two ``recloop serve`` processes of one service
(``RECLOOP_SERVE_ID``) behind Debian's ``haproxy``, on a tiny champion workspace and a real
redis-server. Requests and feedback through the balancer reach both replicas; an ``/admin``
change made through one is applied by the other, so A/B assignment is the same whichever
answers; a rolling restart under steady traffic drops no request."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipelines.cluster import serving_replicas as sr
from pipelines.core.net import free_port
from pipelines.core.settings import Settings
from pipelines.release import registry
from tests.helpers import tiny_served_workspace

pytestmark = pytest.mark.integration
DAYS = ("2026-01-01", "2026-01-02")
TOKEN = "replica-admin-token-0123456789"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[sr.Layout, dict, Settings]]:
    """``(layout, replica environment, settings)`` with both replicas up behind HAProxy."""
    tmp = tmp_path_factory.mktemp("replicas")
    with tiny_served_workspace(tmp, DAYS) as (settings, _):
        if registry.get_alias(settings, "challenger") is None:  # an A/B test to route
            assert registry.promote(settings, "2", "challenger")
        layout = sr.Layout(free_port(), (free_port(), free_port()), tmp / "lb")
        env = sr.replica_env(
            {**os.environ, **settings.as_env(), "RECLOOP_ADMIN_TOKEN": TOKEN}, "test-service"
        )
        try:
            for i in range(len(layout.ports)):
                sr.start_replica(layout, i, env)
            sr.start_haproxy(layout)
            for name in ("r0", "r1"):
                sr.wait_status(layout, name, "UP")
            yield layout, env, settings
        finally:
            sr.stop_haproxy(layout)
            for i in range(len(layout.ports)):
                sr.stop_pid_file(layout.replica_pid(i))


def _front(layout: sr.Layout) -> str:
    return f"http://127.0.0.1:{layout.front_port}"


def _user_ids(settings: Settings, n: int) -> list[str]:
    import pandas as pd

    from pipelines.core import schema

    frame = pd.read_parquet(schema.partition_dir(settings.validated_dir, DAYS[-1]))
    return [str(u) for u in frame["user_id"].drop_duplicates().head(n)]


def test_requests_and_feedback_through_the_balancer_reach_both_replicas(cluster):
    layout, _, settings = cluster
    users = _user_ids(settings, 20)
    before = {s: int(r["stot"]) for s, r in sr.server_stats(layout).items()}
    with httpx.Client(base_url=_front(layout), trust_env=False, timeout=10) as c:
        served = [c.post("/recommend", json={"user_id": u, "k": 5}) for u in users]
        assert all(r.status_code == 200 for r in served), [r.text for r in served][:3]
        # a click on each of the first requests, through the balancer: any replica logs it
        clicks = [c.post("/feedback", json={"request_id": r.json()["request_id"],
                                            "item_id": r.json()["items"][0]["item_id"],
                                            "event": "click"}) for r in served[:6]]  # fmt: skip
    assert [r.status_code for r in clicks] == [200] * 6, [r.text for r in clicks]
    after = {s: int(r["stot"]) for s, r in sr.server_stats(layout).items()}
    assert all(after[s] > before[s] for s in ("r0", "r1")), (before, after)


def test_an_admin_change_through_one_replica_routes_users_alike_on_both(cluster):
    layout, _, settings = cluster
    users = _user_ids(settings, 40)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    change = {"challenger_share": 0.5, "salt": "replicas-salt"}
    with httpx.Client(base_url=_front(layout), trust_env=False, timeout=10) as c:
        r = c.post("/admin/experiment", json=change, headers=auth)
    assert r.status_code == 200, r.text
    time.sleep(1.5)
    for port in layout.ports:  # each replica's own view of the experiment
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as c:
            state = c.get("/admin/experiment", headers=auth).json()
        assert (state["salt"], state["challenger_share"]) == ("replicas-salt", 0.5), (
            state
        )  # each process reads the shared admin state at least once a second

    def arms(port: int) -> list[str]:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False, timeout=10) as c:
            return [c.post("/recommend", json={"user_id": u, "k": 3}).json()["arm"] for u in users]

    a, b = arms(layout.ports[0]), arms(layout.ports[1])
    assert a == b
    assert {"champion", "challenger"} <= set(a), a  # the change reached the routing of both


def test_rolling_restart_under_traffic_drops_no_request(cluster):
    """Four clients keep over 50 req/s on the balancer (the issue's rate) while both replicas are
    restarted one after the other: every request answered 200."""
    layout, env, settings = cluster
    users = _user_ids(settings, 10)
    pids = [int(layout.replica_pid(i).read_text()) for i in range(2)]
    codes: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def traffic(offset: int) -> None:
        with httpx.Client(base_url=_front(layout), trust_env=False, timeout=30) as c:
            n = offset
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    r = c.post("/recommend", json={"user_id": users[n % len(users)], "k": 5})
                    codes.append(r.status_code)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                n += 1
                time.sleep(max(0.0, 0.06 - (time.monotonic() - t0)))  # ~16/s per client

    clients = [threading.Thread(target=traffic, args=(k,)) for k in range(4)]
    start = time.monotonic()
    for t in clients:
        t.start()
    try:
        time.sleep(0.5)
        sr.rolling_restart(layout, env)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in clients:
            t.join()
    rate = len(codes) / (time.monotonic() - start)
    assert not errors, errors[:3]
    assert set(codes) == {200}, sorted(set(codes))
    assert rate >= 50, f"only {rate:.0f} req/s reached the balancer"
    assert all(int(layout.replica_pid(i).read_text()) != pids[i] for i in range(2))
    assert {r["status"] for r in sr.server_stats(layout).values()} == {"UP"}


def test_replicas_run_requests_on_their_event_loop_unless_told_otherwise(cluster):
    _, env, _ = cluster
    assert env["RECLOOP_SERVE_THREADS"] == os.environ.get("RECLOOP_SERVE_THREADS", "0")
    assert sr.replica_env({}, "s")["RECLOOP_SERVE_THREADS"] == "0"
    told = sr.replica_env({"RECLOOP_SERVE_THREADS": "2"}, "s")
    assert told == {"RECLOOP_SERVE_THREADS": "2", "RECLOOP_SERVE_ID": "s"}


def test_the_config_checks_readiness_and_retries_elsewhere(tmp_path: Path):
    text = sr.haproxy_config(sr.Layout(8000, (8001, 8002), tmp_path))
    assert "option httpchk GET /health/ready" in text and "retry-on conn-failure" in text
    assert "server r0 127.0.0.1:8001 check" in text and "server r1 127.0.0.1:8002 check" in text
    assert "bind 127.0.0.1:8000" in text


def test_the_loop_drives_the_replicas_as_its_service(cluster):
    """``recloop demo --cluster``'s stand-in for its own ``recloop serve``: ready once both
    replicas are, the loop's challenger share set on both, a reload reaching each, stop() leaving
    them running."""
    from pipelines.loop.cluster_run import ReplicaService

    layout, _, _ = cluster
    service = ReplicaService(layout, TOKEN, {"challenger_share": 0.25})
    service.start(timeout_s=60)
    time.sleep(1.5)  # the other replica reads the shared admin state within a second
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for port in layout.ports:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", trust_env=False) as c:
            assert c.get("/admin/experiment", headers=auth).json()["challenger_share"] == 0.25
    answer = service.reload()
    assert len(answer["replicas"]) == 2 and answer["outcome"] == answer["replicas"][0]["outcome"]
    service.stop()
    assert {r["status"] for r in sr.server_stats(layout).values()} == {"UP"}
