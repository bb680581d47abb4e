"""Settings of the local cluster (``bash infra/cluster.sh``), read from the environment.

| variable                        | default | meaning |
|---------------------------------|---------|---------|
| ``RECLOOP_HOME``                | ``~/.recloop`` | the workspace; the cluster's files go to ``<home>/cluster/`` |
| ``RECLOOP_CLUSTER_PG_PORT``     | ``5433``  | PostgreSQL (Airflow's and MLflow's metadata) on 127.0.0.1 |
| ``RECLOOP_CLUSTER_MLFLOW_PORT`` | ``5001``  | the MLflow tracking server on 127.0.0.1 |
| ``RECLOOP_CLUSTER_MLFLOW_WORKERS`` | ``2`` | the tracking server's worker processes |
| ``RECLOOP_CLUSTER_AIRFLOW_WORKERS`` | ``0`` | Airflow's Celery workers (0: no Airflow) |
| ``RECLOOP_CLUSTER_AIRFLOW_PORT`` | ``8080`` | Airflow's API server (UI, REST, execution API) |
| ``RECLOOP_CLUSTER_AIRFLOW_BROKER_PORT`` | ``6390`` | the Celery broker's own ``redis-server`` |
| ``RECLOOP_CLUSTER_REDIS_CLUSTER`` | ``0`` | 1: the online store on a Redis Cluster (``infra/redis-cluster.sh``, ports ``RECLOOP_REDIS_CLUSTER_PORT`` 7000..7005) |
| ``RECLOOP_CLUSTER_SERVE_REPLICAS`` | ``0`` | ``recloop serve`` replicas behind HAProxy (0: none) |
| ``RECLOOP_CLUSTER_SERVE_PORT``  | ``8000``  | HAProxy's port; the replicas listen on the next ones |

Nothing here is read at import time: :meth:`ClusterConfig.from_env` reads it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ClusterConfig:
    """Where the local cluster's processes listen and keep their files."""

    home: Path
    pg_port: int = 5433
    mlflow_port: int = 5001
    mlflow_workers: int = 2
    airflow_workers: int = 0
    airflow_port: int = 8080
    airflow_broker_port: int = 6390
    redis_cluster: bool = False
    serve_replicas: int = 0
    serve_port: int = 8000

    @property
    def cluster_dir(self) -> Path:
        """``<home>/cluster``: pid files, logs, the artifact root (and PostgreSQL's data when the
        ``postgres`` user can reach it, see :mod:`pipelines.cluster.postgres`)."""
        return self.home / "cluster"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClusterConfig:
        """Read the ``RECLOOP_CLUSTER_*`` variables (and ``RECLOOP_HOME``); ``ValueError`` naming
        the variable when one is not an integer in its range."""
        env = os.environ if env is None else env
        home = Path(env.get("RECLOOP_HOME") or Path.home() / ".recloop").expanduser().resolve()
        values = {}
        for var, field, low, high in (
            ("RECLOOP_CLUSTER_PG_PORT", "pg_port", 1, 65535),
            ("RECLOOP_CLUSTER_MLFLOW_PORT", "mlflow_port", 1, 65535),
            ("RECLOOP_CLUSTER_MLFLOW_WORKERS", "mlflow_workers", 1, 64),
            ("RECLOOP_CLUSTER_AIRFLOW_WORKERS", "airflow_workers", 0, 32),
            ("RECLOOP_CLUSTER_AIRFLOW_PORT", "airflow_port", 1, 65535),
            ("RECLOOP_CLUSTER_AIRFLOW_BROKER_PORT", "airflow_broker_port", 1, 65535),
            ("RECLOOP_CLUSTER_REDIS_CLUSTER", "redis_cluster", 0, 1),
            ("RECLOOP_CLUSTER_SERVE_REPLICAS", "serve_replicas", 0, 16),
            ("RECLOOP_CLUSTER_SERVE_PORT", "serve_port", 1, 65535 - 16),
        ):
            raw = env.get(var)
            if raw:
                try:
                    values[field] = int(raw)
                except ValueError:
                    raise ValueError(f"{var}={raw!r}: expected an integer") from None
                if not low <= values[field] <= high:
                    raise ValueError(f"{var}={raw}: expected {low}..{high}")
        if "redis_cluster" in values:
            values["redis_cluster"] = bool(values["redis_cluster"])
        return cls(home=home, **values)
