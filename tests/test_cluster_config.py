"""The local cluster's settings and where PostgreSQL keeps its data (no server started)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines.cluster import postgres
from pipelines.cluster.config import ClusterConfig


def test_defaults_and_overrides(tmp_path: Path):
    cfg = ClusterConfig.from_env({"RECLOOP_HOME": str(tmp_path)})
    assert (cfg.pg_port, cfg.mlflow_port, cfg.cluster_dir) == (5433, 5001, tmp_path / "cluster")
    cfg = ClusterConfig.from_env({"RECLOOP_HOME": str(tmp_path), "RECLOOP_CLUSTER_PG_PORT": "6000"})
    assert cfg.pg_port == 6000


def test_cluster_parts_are_asked_for_by_variables(tmp_path: Path):
    env = {"RECLOOP_HOME": str(tmp_path), "RECLOOP_CLUSTER_REDIS_CLUSTER": "1",
           "RECLOOP_CLUSTER_SERVE_REPLICAS": "3", "RECLOOP_CLUSTER_SERVE_PORT": "9000"}  # fmt: skip
    cfg = ClusterConfig.from_env(env)
    assert (cfg.redis_cluster, cfg.serve_replicas, cfg.serve_port) == (True, 3, 9000)
    assert not ClusterConfig.from_env({"RECLOOP_HOME": str(tmp_path)}).redis_cluster
    with pytest.raises(ValueError, match="RECLOOP_CLUSTER_REDIS_CLUSTER"):
        ClusterConfig.from_env({**env, "RECLOOP_CLUSTER_REDIS_CLUSTER": "2"})


@pytest.mark.parametrize("value", ["five", "0", "70000"])
def test_a_bad_port_names_the_variable(tmp_path: Path, value: str):
    with pytest.raises(ValueError, match="RECLOOP_CLUSTER_MLFLOW_PORT"):
        ClusterConfig.from_env(
            {"RECLOOP_HOME": str(tmp_path), "RECLOOP_CLUSTER_MLFLOW_PORT": value}
        )


@pytest.fixture()
def private_dir() -> Iterator[Path]:
    """A mode-0700 folder in a place the ``postgres`` user can otherwise reach (``/var/tmp``)."""
    path = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="recloop-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="the postgres user's reach matters only as root")
def test_data_out_of_the_postgres_users_reach_goes_to_the_shared_root(private_dir: Path):
    private = private_dir
    (private / "ws").mkdir()
    moved = postgres.data_dir_for(private / "ws", "postgres")
    assert moved.parent == postgres.SHARED_ROOT and moved.name.startswith("postgres-")
    assert moved == postgres.data_dir_for(private / "ws", "postgres")  # one per workspace
    private.chmod(0o755)
    assert (
        postgres.data_dir_for(private / "ws", "postgres") == private / "ws" / "cluster" / "postgres"
    )


def test_as_another_user_the_data_stays_in_the_workspace(tmp_path: Path):
    assert postgres.data_dir_for(tmp_path, None) == tmp_path / "cluster" / "postgres"
