"""``recloop demo --cluster``'s reading of the local cluster, without starting one."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.cluster.config import ClusterConfig
from pipelines.loop.closed_loop import LoopConfig
from pipelines.loop.cluster_run import ClusterNotUp, cluster_plan


def test_no_cluster_says_how_to_start_one(tmp_path: Path):
    cfg = ClusterConfig.from_env(
        {"RECLOOP_HOME": str(tmp_path), "RECLOOP_CLUSTER_MLFLOW_PORT": "1"}
    )
    with pytest.raises(ClusterNotUp, match="infra/cluster.sh up"):
        cluster_plan(cfg)


def test_the_celery_runner_needs_the_api_port():
    with pytest.raises(ValueError, match="airflow_port"):
        LoopConfig(days=1, runner="celery")
    assert LoopConfig(days=1, runner="celery", airflow_port=8080).runner == "celery"
