"""The loop through the local cluster (``recloop demo --cluster``): the daily and A/B DAGs through
Airflow on Celery, the service's traffic through HAProxy to the serving replicas, MLflow and the
online store as the cluster has them (``bash infra/cluster.sh up ...`` started them).

:func:`cluster_plan` reads what runs; :class:`ReplicaService` stands in for the loop's own
``recloop serve`` (:class:`pipelines.loop.closed_loop.Service`): the replicas belong to the
cluster, so ``stop()`` leaves them running; ``start()`` waits until every replica is ready and
sets the loop's experiment (challenger share, impression-log flush) through ``/admin``, which the
replicas share; ``reload()`` asks every replica to follow the registry aliases now.
:func:`run_dags_celery` triggers each DAG through the Airflow REST API and waits for it.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

from pipelines.cluster import airflow_celery, mlflow_server
from pipelines.cluster import serving_replicas as sr
from pipelines.cluster.config import ClusterConfig
from pipelines.core.wait import wait_until

log = logging.getLogger(__name__)

DAGS = ("recloop_daily", "recloop_ab")


class ClusterNotUp(RuntimeError):
    """The local cluster does not run what ``recloop demo --cluster`` needs."""


@dataclass(frozen=True)
class ClusterPlan:
    """What the loop uses of the running cluster: ``env`` (``RECLOOP_MLFLOW_URI`` and, with a
    Redis Cluster, ``RECLOOP_REDIS_URL``), ``airflow_port`` (None: no Celery topology, the DAGs
    run through ``airflow dags test``), ``serving`` (None: no replicas, the loop starts its own
    ``recloop serve``), ``admin_token`` of the replicas."""

    env: dict[str, str]
    airflow_port: int | None = None
    serving: sr.Layout | None = None
    admin_token: str | None = None
    notes: list[str] = field(default_factory=list)


def cluster_plan(cfg: ClusterConfig) -> ClusterPlan:
    """Read what the cluster of ``cfg.home`` runs; :class:`ClusterNotUp` when not even its MLflow
    server does."""
    from pipelines.cluster.__main__ import cluster_env, serving_layout

    if mlflow_server.running_pid(cfg.cluster_dir, cfg.mlflow_port) is None:
        raise ClusterNotUp(
            f"no MLflow server of the local cluster on port {cfg.mlflow_port} for {cfg.home}: "
            "start it with `bash infra/cluster.sh up [--redis-cluster] [--airflow-workers N] "
            "[--serve-replicas N]` (same RECLOOP_HOME)"
        )
    notes = []
    airflow = airflow_celery.status(airflow_celery.run_dir(cfg.home))
    airflow_port = cfg.airflow_port if airflow and all(airflow.values()) else None
    if airflow_port is None:
        notes.append("no Celery topology running: the DAGs run through `airflow dags test`")
    folder = cfg.cluster_dir / "serving"
    replicas = len(list(folder.glob("replica-*.pid"))) if folder.exists() else 0
    serving = serving_layout(cfg, replicas) if replicas else None
    token = None
    if serving is not None:
        token = sr.admin_token(serving)
    else:
        notes.append("no serving replicas running: the loop starts its own `recloop serve`")
    return ClusterPlan(cluster_env(cfg), airflow_port, serving, token, notes)


class ReplicaService:
    """The cluster's replicas behind HAProxy, with the interface the loop uses (module
    docstring): ``url`` (HAProxy), ``start()``, ``reload()``, ``stop()``."""

    def __init__(self, serving: sr.Layout, token: str, experiment: dict[str, Any]):
        self.serving = serving
        self.url = f"http://127.0.0.1:{serving.front_port}"
        self.token = token
        self.experiment = dict(experiment)

    def _replica(self, i: int) -> str:
        return f"http://127.0.0.1:{self.serving.ports[i]}"

    def _post(self, url: str, body: dict | None = None) -> dict[str, Any]:
        import httpx

        r = httpx.post(url, json=body, headers={"Authorization": f"Bearer {self.token}"},
                       timeout=120.0, trust_env=False)  # fmt: skip
        r.raise_for_status()
        return r.json()

    def start(self, timeout_s: float = 180.0) -> None:
        """Every replica loads the aliases now and answers ``/health/ready``; the loop's
        experiment settings are set once (shared by the replicas through Redis)."""
        import httpx

        for i in range(len(self.serving.ports)):
            self._post(f"{self._replica(i)}/admin/reload")

        def ready() -> bool:
            for i in range(len(self.serving.ports)):
                try:
                    got = httpx.get(
                        f"{self._replica(i)}/health/ready", timeout=2.0, trust_env=False
                    )
                except httpx.HTTPError:
                    return False
                if got.status_code != 200:
                    return False
            return True

        wait_until(ready, timeout_s, f"the serving replicas behind {self.url}")
        if self.experiment:
            self._post(f"{self._replica(0)}/admin/experiment", self.experiment)

    def reload(self) -> dict[str, Any]:
        """``POST /admin/reload`` on every replica: ``{"outcome": replica 0's, "replicas": all}``."""
        answers = [self._post(f"{self._replica(i)}/admin/reload")
                   for i in range(len(self.serving.ports))]  # fmt: skip
        return {"outcome": answers[0]["outcome"], "replicas": answers}

    def stop(self, timeout_s: float = 30.0) -> None:
        """Nothing: the replicas belong to the cluster (``infra/cluster.sh down`` stops them)."""


def run_dags_celery(settings: Any, day: dt.date, airflow_port: int) -> dict[str, tuple[str, list]]:
    """Trigger the daily, then the A/B DAG for ``day`` through the REST API of the Celery
    topology on ``airflow_port`` and wait for each: ``{dag_id: (state, task instances)}``."""
    from pipelines.orchestration.airflow_runner import (
        admin_password,
        api_client,
        trigger_run,
        wait_run,
    )

    out = {}
    with api_client(airflow_port, admin_password(settings)) as client:
        for dag_id in DAGS:
            run_id = trigger_run(client, dag_id, day)
            out[dag_id] = wait_run(client, dag_id, run_id, timeout=3600.0)
            hosts = sorted({t.get("hostname") or "?" for t in out[dag_id][1]})
            log.info("%s %s: %s on %s", dag_id, day, out[dag_id][0], ", ".join(hosts))
            if out[dag_id][0] != "success":
                break
    return out
