"""``python -m pipelines.cluster up|status|down``: the local cluster's processes (what
``bash infra/cluster.sh`` runs after installing what is missing).

Today: PostgreSQL (the metadata database of MLflow and Airflow), the MLflow tracking server on
it and, with ``--airflow-workers N`` (or ``RECLOOP_CLUSTER_AIRFLOW_WORKERS``), Airflow's Celery
topology (:mod:`pipelines.cluster.airflow_celery`: broker, API server, scheduler, DAG processor,
triggerer, N workers; its tasks use the cluster's MLflow server). ``up`` prints the URLs, the
Airflow login and the variables that point recloop at them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from pipelines.cluster import airflow_celery, mlflow_server, postgres
from pipelines.cluster.config import ClusterConfig


def up(cfg: ClusterConfig) -> None:
    """Start PostgreSQL (initdb on first use), its databases, then the MLflow server."""
    pg = postgres.for_workspace(cfg.home, cfg.pg_port)
    postgres.start(pg)
    created = postgres.ensure_databases(pg)
    print(f"postgres: 127.0.0.1:{pg.port}, data in {pg.data_dir}, log {pg.log_path}"
          + (f" (created databases {', '.join(created)})" if created else ""))  # fmt: skip
    cfg.cluster_dir.mkdir(parents=True, exist_ok=True)
    pid = mlflow_server.start(cfg.cluster_dir, pg.url("mlflow"), cfg.mlflow_port,
                              cfg.mlflow_workers)  # fmt: skip
    logs = mlflow_server.paths(cfg.cluster_dir, cfg.mlflow_port)
    print(f"mlflow: {mlflow_server.url(cfg.mlflow_port)} (UI and API; pid {pid}, "
          f"artifacts in {logs['artifacts']}, log {logs['log']})")  # fmt: skip
    if cfg.airflow_workers:
        up_airflow(cfg, pg)
    print("use it:")
    print(f"  export RECLOOP_MLFLOW_URI={mlflow_server.url(cfg.mlflow_port)}")


def _airflow(cfg: ClusterConfig, pg: postgres.Postgres) -> airflow_celery.CeleryTopology:
    """The cluster's Celery topology; its tasks track to the cluster's MLflow server."""
    from pipelines.core.settings import Settings

    settings = dataclasses.replace(
        Settings.from_env(), mlflow_uri=mlflow_server.url(cfg.mlflow_port)
    )
    return airflow_celery.CeleryTopology(settings, pg.url("airflow"), cfg.airflow_broker_port,
                                         cfg.airflow_port, cfg.airflow_workers)  # fmt: skip


def up_airflow(cfg: ClusterConfig, pg: postgres.Postgres) -> None:
    """Start Airflow's Celery topology and print where its UI is and the admin login."""
    from pipelines.orchestration.airflow_runner import admin_password

    topo = _airflow(cfg, pg)
    seconds = airflow_celery.start(topo)
    print(f"airflow: {topo.api_url} (UI and REST API) user admin password "
          f"{admin_password(topo.settings)}; CeleryExecutor, {topo.workers} worker(s), "
          f"broker {topo.broker_url}, metadata {pg.url('airflow')}; ready in "
          f"{max(seconds.values()):.0f}s, pids and logs in {topo.run_dir}")  # fmt: skip


def status(cfg: ClusterConfig) -> int:
    """Print each process's state; 0 when all run, 1 otherwise."""
    pg = postgres.for_workspace(cfg.home, cfg.pg_port)
    pg_up = postgres.is_running(pg)
    print(
        f"postgres: {'running' if pg_up else 'stopped'} (127.0.0.1:{pg.port}, data {pg.data_dir})"
    )
    pid = mlflow_server.running_pid(cfg.cluster_dir, cfg.mlflow_port)
    where = mlflow_server.url(cfg.mlflow_port)
    print(f"mlflow: {'running, pid ' + str(pid) if pid else 'stopped'} ({where})")
    airflow = airflow_celery.status(airflow_celery.run_dir(cfg.home))
    for name, apid in airflow.items():
        print(f"airflow {name}: {'running, pid ' + str(apid) if apid else 'stopped'}")
    return 0 if pg_up and pid and all(airflow.values()) else 1


def down(cfg: ClusterConfig) -> None:
    """Stop Airflow's processes, the MLflow server, then PostgreSQL (data kept)."""
    stopped_airflow = airflow_celery.stop(airflow_celery.run_dir(cfg.home))
    if stopped_airflow:
        print(f"airflow: stopped {', '.join(stopped_airflow)}")
    stopped = mlflow_server.stop(cfg.cluster_dir, cfg.mlflow_port)
    print(f"mlflow: {'stopped' if stopped else 'was not running'}")
    pg = postgres.for_workspace(cfg.home, cfg.pg_port)
    running = postgres.is_running(pg)
    postgres.stop(pg)
    print(f"postgres: {'stopped' if running else 'was not running'} (data kept in {pg.data_dir})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="infra/cluster.sh",
        description="Start, inspect or stop recloop's local cluster on loopback: PostgreSQL "
        "(MLflow's and Airflow's metadata, run as the postgres user) and the MLflow tracking "
        "server; with --airflow-workers N, Airflow on Celery with N workers. Ports and paths: "
        "RECLOOP_HOME, RECLOOP_CLUSTER_PG_PORT (5433), RECLOOP_CLUSTER_MLFLOW_PORT (5001), "
        "RECLOOP_CLUSTER_MLFLOW_WORKERS (2), RECLOOP_CLUSTER_AIRFLOW_WORKERS (0), "
        "RECLOOP_CLUSTER_AIRFLOW_PORT (8080), RECLOOP_CLUSTER_AIRFLOW_BROKER_PORT (6390).",
    )
    parser.add_argument("action", choices=["up", "status", "down"])
    parser.add_argument(
        "--airflow-workers", type=int, default=None, metavar="N",
        help="up: also start Airflow's Celery topology with N workers (0: none; default "
        "RECLOOP_CLUSTER_AIRFLOW_WORKERS, else 0)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        cfg = ClusterConfig.from_env()
        if args.airflow_workers is not None:
            if not 0 <= args.airflow_workers <= 32:
                raise ValueError(f"--airflow-workers {args.airflow_workers}: expected 0..32")
            cfg = dataclasses.replace(cfg, airflow_workers=args.airflow_workers)
        if args.action == "up":
            up(cfg)
            return 0
        if args.action == "down":
            down(cfg)
            return 0
        return status(cfg)
    except (postgres.PostgresError, RuntimeError, TimeoutError, ValueError) as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
