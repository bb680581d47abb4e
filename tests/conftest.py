"""Shared fixtures and the two test tiers.

Tiers (markers registered in ``pyproject.toml``):

- **unit** — everything not marked ``integration``: no server, no Airflow, no MLflow store, no
  trained workspace; ``pytest -m "not integration"`` runs it alone (under a minute).
- **integration** — starts or talks to a real service (redis-server, uvicorn, Airflow, an
  MLflow store, Feast), runs subprocesses or trains a workspace. A test is marked here,
  automatically, when it uses a fixture of :data:`INTEGRATION_FIXTURES` (directly or through
  another fixture: ``item.fixturenames`` is the whole closure), or when its module starts such
  a thing itself (those modules say ``pytestmark = pytest.mark.integration`` and why; a test
  that does so in its own body carries ``@pytest.mark.integration`` with a comment).

Plain ``pytest`` runs both tiers. Helpers shared by several test files live in
``tests/helpers.py``; test files import from there, never from each other or from this file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.core.settings import Settings
from tests.helpers import RedisServer, fresh_mlflow, make_bundle

# Fixture name -> what it starts. A test using any of these, even through another fixture, is an
# integration test: redis_settings, ab_registry and the modules' ``world`` fixtures that train a
# workspace on the session's redis-server are caught through these two.
INTEGRATION_FIXTURES: dict[str, str] = {
    "redis_server": "a real redis-server process, shared by the session",
    "mlflow_settings": "an MLflow sqlite store (its migrations run once per machine) and client",
}


def pytest_configure(config: pytest.Config) -> None:
    """Keep Airflow's own files (imported in-process by the DAG tests) out of the user's home."""
    import os
    import tempfile

    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="recloop-airflow-"))
    os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark ``integration`` every test that uses a fixture of :data:`INTEGRATION_FIXTURES`."""
    for item in items:
        if INTEGRATION_FIXTURES.keys() & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture()
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings for a fresh workspace under ``tmp_path`` (also exported as RECLOOP_* env)."""
    monkeypatch.setenv("RECLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RECLOOP_MLFLOW_URI", raising=False)
    monkeypatch.delenv("RECLOOP_REDIS_URL", raising=False)
    s = Settings.from_env()
    s.ensure_dirs()
    return s


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server for the whole session."""
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


@pytest.fixture()
def mlflow_settings(settings: Settings) -> Settings:
    """:func:`settings` with an empty, migrated MLflow database at its default sqlite URI."""
    fresh_mlflow(settings)
    return settings


@pytest.fixture()
def ab_registry(mlflow_settings: Settings) -> tuple[Settings, str, str]:
    """``(settings, champion, challenger)``: a registry with bundle 1 = champion and bundle 2 =
    challenger (fake artifacts, see :func:`tests.helpers.make_bundle`); no validated data."""
    import shutil

    from pipelines.core import schema
    from pipelines.release import registry

    s = mlflow_settings
    champ = make_bundle(s, "2025-12-01")
    chall = make_bundle(s, "2025-12-02")
    assert registry.promote(s, champ, "champion")
    assert registry.promote(s, chall, "challenger")
    for day in ("2025-12-01", "2025-12-02"):  # make_bundle's one-column placeholder partitions
        shutil.rmtree(schema.partition_dir(s.validated_dir, day))
    return s, champ, chall
