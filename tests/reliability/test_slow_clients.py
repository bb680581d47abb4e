"""Issue 17, case 2: slow clients must not lock everyone out.

A real ``recloop serve`` (uvicorn) on loopback over a tiny trained workspace. 40 connections each
send a ``/recommend`` request's headers and part of its body, then stall: more than the 32
in-flight slots. A well-behaved client must still get 200 in under 2 s (the body is read before a
request takes a slot), and the stalled requests are answered 408 once ``body_timeout_s`` passes
(nothing holds a connection's handler for ever).
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from pipelines.core.net import free_port
from pipelines.core.settings import Settings
from serving.config import ServingConfig
from tests.helpers import (
    REPO,
    RedisServer,
    champion_workspace,
    known_user,
    start_service,
    stop_service,
)

DAYS = ("2026-01-01", "2026-01-02")
STALLED = 40


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer):
    home = tmp_path_factory.mktemp("slow") / "home"
    with champion_workspace(home, redis_server.url, DAYS) as settings:
        yield settings


@pytest.fixture()
def server(world: Settings, tmp_path: Path):
    """``recloop serve`` on a free loopback port, ready (its output in ``tmp_path/serve.log``);
    stopped (SIGINT) after the test."""
    port = free_port()
    env = {**os.environ, **world.as_env()}
    env.pop("RECLOOP_ADMIN_TOKEN", None)
    cmd = [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port), "--reload-s", "0"]
    url = f"http://127.0.0.1:{port}/health/ready"
    proc = start_service(cmd, env, url, 90, tmp_path / "serve.log", cwd=REPO, interval_s=0.3)
    try:
        yield port
    finally:
        stop_service(proc, 20)


def stall(port: int) -> socket.socket:
    """A connection that sent a /recommend request's headers and 10 of its 60 body bytes."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = (
        "POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Type: application/json\r\nContent-Length: 60\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"user_id"')
    return sock


def test_stalled_bodies_do_not_starve_a_normal_client(world: Settings, server: int):
    port = server
    cfg = ServingConfig()
    assert STALLED > cfg.max_in_flight  # more stalled connections than in-flight slots
    user, _ = known_user(world)
    socks = [stall(port) for _ in range(STALLED)]
    try:
        time.sleep(0.5)  # the server has accepted them all and waits for their bodies
        t0 = time.perf_counter()
        r = httpx.post(
            f"http://127.0.0.1:{port}/recommend", json={"user_id": user, "k": 5}, timeout=10
        )
        took = time.perf_counter() - t0
        assert r.status_code == 200, r.text
        assert len(r.json()["items"]) == 5
        assert took < 2.0, f"normal client waited {took:.2f} s behind {STALLED} stalled ones"
        # the stalled requests are not held for ever: 408 once the body deadline passes
        t0 = time.monotonic()
        first = socks[0].recv(4096).decode(errors="replace")
        assert first.startswith("HTTP/1.1 408"), first[:200]
        waited = time.monotonic() - t0
        assert waited < cfg.body_timeout_s + 5
        print(f"normal client: 200 in {took * 1e3:.0f} ms; stalled: 408 after {waited:.1f} s")
    finally:
        for s in socks:
            s.close()
