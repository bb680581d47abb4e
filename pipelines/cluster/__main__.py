"""``python -m pipelines.cluster up|status|down``: the local cluster's processes (what
``bash infra/cluster.sh`` runs after installing what is missing).

PostgreSQL (the metadata database of MLflow and Airflow) and the MLflow tracking server on it;
with ``--redis-cluster`` the online store on a Redis Cluster (``infra/redis-cluster.sh``: 3
masters, 3 replicas); with ``--airflow-workers N`` Airflow's Celery topology
(:mod:`pipelines.cluster.airflow_celery`: broker, API server, scheduler, DAG processor,
triggerer, N workers); with ``--serve-replicas N`` N ``recloop serve`` replicas behind HAProxy
(:mod:`pipelines.cluster.serving_replicas`). Airflow's tasks and the replicas use the cluster's
MLflow server and online store. ``up`` prints the URLs, the Airflow login and the variables that
point recloop at them; ``restart-serving`` restarts the replicas one by one, dropping no request.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

from pipelines.cluster import airflow_celery, mlflow_server, postgres
from pipelines.cluster import serving_replicas as sr
from pipelines.cluster.config import ClusterConfig

REDIS_CLUSTER_SCRIPT = Path(__file__).resolve().parents[2] / "infra" / "redis-cluster.sh"
SERVICE_ID = "recloop-cluster"
"""``RECLOOP_SERVE_ID`` of the replicas: one service, its state shared in Redis."""


def redis_cluster(cfg: ClusterConfig, action: str) -> str:
    """Run ``infra/redis-cluster.sh ACTION`` for the workspace; its output. ``start`` keeps the
    URL it prints in ``<cluster>/redis-cluster.url``."""
    env = {**os.environ, "RECLOOP_HOME": str(cfg.home)}
    res = subprocess.run(["bash", str(REDIS_CLUSTER_SCRIPT), action], env=env,
                         capture_output=True, text=True, check=False)  # fmt: skip
    if res.returncode != 0 and action != "status":
        raise RuntimeError(f"infra/redis-cluster.sh {action}: {(res.stdout + res.stderr).strip()}")
    if action == "start":
        found = re.search(r"redis\+cluster://\S+", res.stdout)
        if found is None:
            raise RuntimeError(f"infra/redis-cluster.sh start printed no URL: {res.stdout!r}")
        (cfg.cluster_dir / "redis-cluster.url").write_text(found.group(0) + "\n")
    return (res.stdout + res.stderr).strip()


def cluster_env(cfg: ClusterConfig) -> dict[str, str]:
    """The ``RECLOOP_*`` variables that point recloop at the cluster's MLflow server and, when
    one runs, its Redis Cluster (the others as this process has them)."""
    env = {"RECLOOP_HOME": str(cfg.home), "RECLOOP_MLFLOW_URI": mlflow_server.url(cfg.mlflow_port)}
    url_file = cfg.cluster_dir / "redis-cluster.url"
    if url_file.exists():
        env["RECLOOP_REDIS_URL"] = url_file.read_text().strip()
    return env


def serving_layout(cfg: ClusterConfig, replicas: int | None = None) -> sr.Layout:
    """HAProxy on ``serve_port``, replica ``i`` on ``serve_port + 1 + i``."""
    n = cfg.serve_replicas if replicas is None else replicas
    ports = tuple(cfg.serve_port + 1 + i for i in range(n))
    return sr.Layout(cfg.serve_port, ports, cfg.cluster_dir / "serving")


def _replica_env(cfg: ClusterConfig) -> dict[str, str]:
    """The replicas' environment: the cluster's settings, one service id, the admin token."""
    token = sr.admin_token(serving_layout(cfg, 0))
    env = {**os.environ, **cluster_env(cfg), "RECLOOP_ADMIN_TOKEN": token}
    return sr.replica_env(env, SERVICE_ID)


def up_serving(cfg: ClusterConfig) -> None:
    """Start the replicas (each up once ``/health/live`` answers) and HAProxy in front."""
    layout = serving_layout(cfg)
    env = _replica_env(cfg)
    for i in range(len(layout.ports)):
        sr.start_replica(layout, i, env, ready_path="/health/live")
    sr.start_haproxy(layout)
    print(f"serving: http://127.0.0.1:{layout.front_port} (HAProxy, admin socket "
          f"{layout.socket_path}) over {len(layout.ports)} replica(s) on "
          f"{', '.join(map(str, layout.ports))}; a replica takes traffic once a champion "
          f"answers its /health/ready; logs in {layout.folder}")  # fmt: skip


def down_serving(cfg: ClusterConfig) -> list[str]:
    """Stop HAProxy and every replica that has a pid file; what was stopped."""
    folder = cfg.cluster_dir / "serving"
    stopped = []
    layout = serving_layout(cfg, 0)
    if sr.stop_haproxy(layout):
        stopped.append("haproxy")
    for pid_file in sorted(folder.glob("replica-*.pid")):
        if sr.stop_pid_file(pid_file):
            stopped.append(pid_file.stem)
    return stopped


def up(cfg: ClusterConfig) -> None:
    """Start PostgreSQL (initdb on first use), its databases, the MLflow server, then what
    ``cfg`` asks for: the Redis Cluster, Airflow on Celery, the serving replicas."""
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
    if cfg.redis_cluster:
        redis_cluster(cfg, "start")
        print(f"redis cluster: {cluster_env(cfg)['RECLOOP_REDIS_URL']} (infra/redis-cluster.sh)")
    if cfg.airflow_workers:
        up_airflow(cfg, pg)
    if cfg.serve_replicas:
        up_serving(cfg)
    print("use it:")
    for var, value in cluster_env(cfg).items():
        if var != "RECLOOP_HOME":
            print(f"  export {var}={value}")


def _airflow(cfg: ClusterConfig, pg: postgres.Postgres) -> airflow_celery.CeleryTopology:
    """The cluster's Celery topology; its tasks track to the cluster's MLflow server."""
    from pipelines.core.settings import Settings

    env = cluster_env(cfg)
    settings = dataclasses.replace(
        Settings.from_env(), mlflow_uri=env["RECLOOP_MLFLOW_URI"],
        redis_url=env.get("RECLOOP_REDIS_URL") or Settings.from_env().redis_url,
    )  # fmt: skip
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
    ok = bool(pg_up and pid and all(airflow.values()))
    if (cfg.cluster_dir / "redis-cluster.url").exists():
        said = redis_cluster(cfg, "status")
        print(f"redis cluster: {said}")
    serving = cfg.cluster_dir / "serving"
    if serving.exists():
        layout = serving_layout(cfg, len(list(serving.glob("replica-*.pid"))))
        try:
            for name, row in sr.server_stats(layout).items():
                print(f"serving {name}: {row['status']} (sessions so far {row['stot']})")
        except OSError as exc:
            ok = False
            print(f"serving: HAProxy's admin socket {layout.socket_path} does not answer ({exc})")
    return 0 if ok else 1


def down(cfg: ClusterConfig) -> None:
    """Stop the serving replicas and HAProxy, Airflow's processes, the Redis Cluster, the MLflow
    server, then PostgreSQL (data kept)."""
    stopped_serving = down_serving(cfg)
    if stopped_serving:
        print(f"serving: stopped {', '.join(stopped_serving)}")
    stopped_airflow = airflow_celery.stop(airflow_celery.run_dir(cfg.home))
    if stopped_airflow:
        print(f"airflow: stopped {', '.join(stopped_airflow)}")
    url_file = cfg.cluster_dir / "redis-cluster.url"
    if url_file.exists():
        print(redis_cluster(cfg, "stop").splitlines()[-1])
        url_file.unlink()
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
        "server; with --redis-cluster the online store on a Redis Cluster; with "
        "--airflow-workers N Airflow on Celery with N workers; with --serve-replicas N that "
        "many `recloop serve` behind HAProxy (restart-serving: one by one, no request "
        "dropped). Ports and paths: RECLOOP_HOME, RECLOOP_CLUSTER_PG_PORT (5433), "
        "RECLOOP_CLUSTER_MLFLOW_PORT (5001), RECLOOP_CLUSTER_MLFLOW_WORKERS (2), "
        "RECLOOP_CLUSTER_AIRFLOW_WORKERS (0), RECLOOP_CLUSTER_AIRFLOW_PORT (8080), "
        "RECLOOP_CLUSTER_AIRFLOW_BROKER_PORT (6390), RECLOOP_CLUSTER_REDIS_CLUSTER (0; nodes "
        "on RECLOOP_REDIS_CLUSTER_PORT..+5, 7000), RECLOOP_CLUSTER_SERVE_REPLICAS (0), "
        "RECLOOP_CLUSTER_SERVE_PORT (8000; replicas on the next ports).",
    )
    parser.add_argument("action", choices=["up", "status", "down", "restart-serving"])
    parser.add_argument(
        "--redis-cluster", action="store_true", default=None,
        help="up: the online store on a Redis Cluster of 3 masters + 3 replicas "
        "(default RECLOOP_CLUSTER_REDIS_CLUSTER)",
    )  # fmt: skip
    parser.add_argument(
        "--serve-replicas", type=int, default=None, metavar="N",
        help="up: N recloop serve replicas behind HAProxy on RECLOOP_CLUSTER_SERVE_PORT "
        "(default RECLOOP_CLUSTER_SERVE_REPLICAS, else 0)",
    )  # fmt: skip
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
        if args.redis_cluster:
            cfg = dataclasses.replace(cfg, redis_cluster=True)
        if args.serve_replicas is not None:
            if not 0 <= args.serve_replicas <= 16:
                raise ValueError(f"--serve-replicas {args.serve_replicas}: expected 0..16")
            cfg = dataclasses.replace(cfg, serve_replicas=args.serve_replicas)
        if args.action == "restart-serving":
            serving = cfg.cluster_dir / "serving"
            layout = serving_layout(cfg, len(list(serving.glob("replica-*.pid"))))
            sr.rolling_restart(layout, _replica_env(cfg))
            print(f"serving: restarted {len(layout.ports)} replica(s) one by one")
            return 0
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
