"""Shared fixtures: a temporary workspace per test, and one real redis-server per session."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.core.settings import Settings
from pipelines.loop.closed_loop import free_port  # noqa: F401 - the tests import it from here

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Keep Airflow's own files (imported in-process by the DAG tests) out of the user's home."""
    import os
    import tempfile

    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="recloop-airflow-"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for a fresh workspace under ``tmp_path`` (also exported as RECLOOP_* env)."""
    monkeypatch.setenv("RECLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RECLOOP_MLFLOW_URI", raising=False)
    monkeypatch.delenv("RECLOOP_REDIS_URL", raising=False)
    s = Settings.from_env()
    s.ensure_dirs()
    return s


class RedisServer:
    """A real ``redis-server`` process on a loopback port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed: run `bash infra/setup.sh`")
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def redis_settings(
    settings: Settings, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """Workspace settings pointing at the session's real redis-server, with the db flushed."""
    import redis

    monkeypatch.setenv("RECLOOP_REDIS_URL", redis_server.url)
    redis.Redis.from_url(redis_server.url).flushall()
    return Settings.from_env()


def tiny_trained_workspace(
    home: Path, redis_url: str, days: tuple[str, ...], scale: str = "tiny"
) -> tuple[Settings, pytest.MonkeyPatch]:
    """A workspace at ``home`` with ``days`` simulated at tiny scale and the daily DAG's task
    bodies run for each (in-process, in the DAG's order): the registry then holds one serving
    bundle per day and, from the second day on, a champion. Returns the settings and the
    MonkeyPatch holding the ``RECLOOP_*`` environment (call ``undo()`` when done)."""
    from pipelines.data.simulate import simulate
    from pipelines.orchestration import tasks

    mp = pytest.MonkeyPatch()
    mp.setenv("RECLOOP_HOME", str(home))
    mp.setenv("RECLOOP_REDIS_URL", redis_url)
    mp.setenv("RECLOOP_SCALE", scale)
    mp.delenv("RECLOOP_MLFLOW_URI", raising=False)
    mp.delenv("RECLOOP_ADMIN_TOKEN", raising=False)
    settings = Settings.from_env()
    settings.ensure_dirs()
    simulate(settings, len(days), scale)
    for ds in days:
        tasks.validate(ds)
        tasks.features(ds)
        tasks.train_model(ds, "mf")
        tasks.train_model(ds, "two_tower")
        tasks.build_index(ds)
        tasks.train_ranker(ds)
        tasks.evaluate_ranker(ds)
        tasks.register(ds)
        tasks.gate(ds)
    return settings, mp


@contextlib.contextmanager
def tiny_served_workspace(
    tmp: Path, days: tuple[str, ...] = ("2026-01-01",)
) -> Iterator[tuple[Settings, RedisServer]]:
    """:func:`tiny_trained_workspace` on a redis-server of its own (for tests that rewrite or
    stop Redis): ``(settings, server)``; the environment and the server are undone after."""
    server = RedisServer(tmp)
    server.start()
    try:
        settings, mp = tiny_trained_workspace(tmp / "home", server.url, days)
        try:
            yield settings, server
        finally:
            mp.undo()
    finally:
        server.stop()
