"""``python -m pipelines.cluster up|status|down``: the local cluster's processes (what
``bash infra/cluster.sh`` runs after installing what is missing).

Today: PostgreSQL (the metadata database of MLflow and Airflow) and the MLflow tracking server
on it. ``up`` prints the URLs and the variables that point recloop at them.
"""

from __future__ import annotations

import argparse
import sys

from pipelines.cluster import mlflow_server, postgres
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
    print("use it:")
    print(f"  export RECLOOP_MLFLOW_URI={mlflow_server.url(cfg.mlflow_port)}")


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
    return 0 if pg_up and pid else 1


def down(cfg: ClusterConfig) -> None:
    """Stop the MLflow server, then PostgreSQL (data kept)."""
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
        "server. Ports and paths: RECLOOP_HOME, RECLOOP_CLUSTER_PG_PORT (5433), "
        "RECLOOP_CLUSTER_MLFLOW_PORT (5001), RECLOOP_CLUSTER_MLFLOW_WORKERS (2).",
    )
    parser.add_argument("action", choices=["up", "status", "down"])
    args = parser.parse_args(argv)
    try:
        cfg = ClusterConfig.from_env()
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
