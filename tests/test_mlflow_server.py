"""The registry's operations against ``mlflow server`` with its PostgreSQL backend store (issue 18):
register (idempotent), load a bundle, and alias compare-and-set between clients that share
nothing but the server and the online store's Redis — each racer has its own workspace, as
two machines would, so the file lock cannot be what keeps them apart.

PostgreSQL (Debian's, as the ``postgres`` user when the tests run as root) and the server are
real processes started by :mod:`pipelines.cluster`, on free loopback ports."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.cluster import mlflow_server, postgres
from pipelines.core.net import free_port
from pipelines.core.settings import Settings
from pipelines.release import registry
from pipelines.release.remote_lock import lock_key, redis_lock
from tests.helpers import (
    RedisServer,
    make_bundle,
    race_promotions,
    start_promotion_racer,
    wait_racers_ready,
)

pytestmark = pytest.mark.integration

DAY, DAY2 = "2026-01-01", "2026-01-02"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``(tracking URL, artifact root)`` of a running ``mlflow server`` on PostgreSQL."""
    home = tmp_path_factory.mktemp("cluster")
    pg = postgres.for_workspace(home, free_port())
    postgres.start(pg)
    cluster_dir = home / "cluster"
    port = free_port()
    try:
        postgres.ensure_databases(pg, ("mlflow",))
        mlflow_server.start(cluster_dir, pg.url("mlflow"), port, workers=1)
        yield mlflow_server.url(port), mlflow_server.paths(cluster_dir, port)["artifacts"]
    finally:
        mlflow_server.stop(cluster_dir, port, timeout_s=5.0)
        postgres.stop(pg)
        if pg.data_dir.is_relative_to(postgres.SHARED_ROOT):
            shutil.rmtree(pg.data_dir, ignore_errors=True)


def _settings(home: Path, url: str, redis_url: str) -> Settings:
    s = Settings.from_env({"RECLOOP_HOME": str(home), "RECLOOP_MLFLOW_URI": url,
                           "RECLOOP_REDIS_URL": redis_url})  # fmt: skip
    s.ensure_dirs()
    return s


@pytest.fixture(scope="module")
def ws(
    tmp_path_factory: pytest.TempPathFactory, server: tuple[str, Path], redis_server: RedisServer
) -> tuple[Settings, list[str]]:
    """``(settings, [bundle versions of DAY, DAY2])``: a workspace whose registry is the server,
    with two bundles registered through it (shared by this module's tests: the registry is)."""
    s = _settings(tmp_path_factory.mktemp("machine-a"), server[0], redis_server.url)
    return s, [make_bundle(s, DAY), make_bundle(s, DAY2)]


def test_bundle_registered_through_the_server_loads_from_another_workspace(
    ws: tuple[Settings, list[str]], server: tuple[str, Path], tmp_path: Path
):
    s, versions = ws
    # registering the same day on the same data again adds nothing
    again = registry.track_component(s, "two_tower", DAY, registry.version_path(s, "two_tower", 1))
    assert again["version"] == registry.find_versions(s, "two_tower")[-1].version
    mv = registry.client(s).get_model_version(registry.BUNDLE, versions[0])
    assert mv.source.startswith("mlflow-artifacts:")  # proxied: no path of this machine
    assert any(server[1].rglob(registry.BUNDLE_FILE))  # stored under the server's root
    assert not any((s.mlflow_dir / "artifacts").rglob("*"))
    # a second machine: its own workspace, the same server
    other = _settings(tmp_path / "machine-b", s.mlflow_uri, s.redis_url)
    for v in versions:
        here, there = registry.load_bundle(s, v), registry.load_bundle(other, v)
        assert {k: x for k, x in there.items() if k != "paths"} == {
            k: x for k, x in here.items() if k != "paths"
        }
        assert Path(there["paths"]["index"]).is_relative_to(other.mlflow_dir)  # downloaded there
        assert (Path(there["paths"]["two_tower"]) / "meta.json").read_bytes() == (
            Path(here["paths"]["two_tower"]) / "meta.json"
        ).read_bytes()


def _machine_env(ws: Settings, home: Path) -> dict[str, str]:
    """The environment of another machine: the same server and Redis, its own workspace."""
    return {**os.environ, **ws.as_env(), "RECLOOP_HOME": str(home)}


def test_racing_promotions_from_two_machines_leave_one_champion(
    ws: tuple[Settings, list[str]], tmp_path: Path
):
    s, versions = ws
    envs = [_machine_env(s, tmp_path / f"machine-{v}") for v in versions]
    said = race_promotions(envs, versions, tmp_path)
    assert sorted(said.values()) == ["lost", "won"]
    assert registry.get_alias(s, "champion") == next(v for v, s in said.items() if s == "won")


def test_a_client_on_another_machine_waits_for_the_registry_lock(
    ws: tuple[Settings, list[str]], tmp_path: Path
):
    """Held here (in Redis), the lock keeps a promotion from another workspace waiting; released,
    the promotion goes through. With the per-machine file lock it would not have waited."""
    s, versions = ws
    before = registry.get_alias(s, "challenger")  # the server is shared by this module's tests
    version = next(v for v in versions if v != before)
    go, ready = tmp_path / "go", tmp_path / "ready"
    with redis_lock(s.redis_url, s.mlflow_uri):
        env = _machine_env(s, tmp_path / "machine-b")
        proc = start_promotion_racer(env, version, go, ready, before, "challenger")
        wait_racers_ready([ready], [proc])
        go.touch()
        time.sleep(1.5)
        assert proc.poll() is None, proc.communicate()
        assert registry.get_alias(s, "challenger") == before
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    assert out.strip() == "won" and registry.get_alias(s, "challenger") == version
    import redis

    assert redis.Redis.from_url(s.redis_url).get(lock_key(s.mlflow_uri)) is None
