"""The daily DAG's wall time through Airflow's Celery topology against ``airflow dags test``.

  OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_airflow_celery.py
      [--scale tiny] [--workers 1,2] [--day 2026-01-01]

Each mode gets a fresh workspace with the same two simulated days (seed 7), an emptied Redis
online store and a migrated MLflow database, then runs ``recloop_daily`` for ``--day``:

- ``dags test``: :func:`pipelines.orchestration.airflow_runner.run_dag` (one process, SQLite).
- ``celery N``: :mod:`pipelines.cluster.airflow_celery` with N workers of one task each on one
  PostgreSQL (a database per mode), the run created through the REST API; the figures are the
  seconds each process took to serve (``start``), the DAG run's own duration as Airflow records
  it (first task queued to last task done) and the wall time from the trigger to the API
  reporting success.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.cluster import airflow_celery, postgres  # noqa: E402
from pipelines.core.net import free_port  # noqa: E402
from pipelines.core.redis_server import RedisServer  # noqa: E402
from pipelines.core.settings import Settings  # noqa: E402
from pipelines.data import simulate  # noqa: E402
from pipelines.orchestration import airflow_runner  # noqa: E402

DAG = "recloop_daily"


def workspace(root: Path, name: str, scale: str, redis_url: str) -> Settings:
    """A fresh workspace ``root/name`` with two simulated days, an empty MLflow database and
    an empty online store (the modes run one after the other on one redis-server)."""
    import redis

    from tests.helpers import fresh_mlflow

    redis.Redis.from_url(redis_url).flushall()
    s = Settings.from_env({"RECLOOP_HOME": str(root / name), "RECLOOP_REDIS_URL": redis_url})
    s.ensure_dirs()
    fresh_mlflow(s)
    simulate.simulate(s, 2, scale, 7)
    return s


def run_celery(s: Settings, pg: postgres.Postgres, workers: int, day: str) -> dict:
    """Start the topology on database ``airflow_w<workers>``, run ``day``, stop; the figures."""
    db = f"airflow_w{workers}"
    postgres.ensure_databases(pg, (db,))
    topo = airflow_celery.CeleryTopology(s, pg.url(db), free_port(), free_port(), workers)
    try:
        started = airflow_celery.start(topo)
        client = airflow_runner.api_client(topo.api_port, airflow_runner.admin_password(s))
        begin = time.perf_counter()
        run_id = airflow_runner.trigger_run(client, DAG, day)
        state, tis = airflow_runner.wait_run(client, DAG, run_id, timeout=1800)
        wall = time.perf_counter() - begin
        run = client.get(f"/dags/{DAG}/dagRuns/{run_id}").json()
    finally:
        airflow_celery.stop(topo.run_dir, grace_s=10.0)
    span = dt.datetime.fromisoformat(run["end_date"]) - dt.datetime.fromisoformat(run["start_date"])
    return {"mode": f"celery {workers}", "state": state, "wall_s": round(wall, 1),
            "run_s": round(span.total_seconds(), 1),
            "start_s": {k: round(v, 1) for k, v in started.items()},
            "hosts": sorted({t["hostname"] for t in tis})}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="tiny")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    ap.add_argument("--day", default="2026-01-01")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="recloop-bench-celery-"))
    root.chmod(0o755)  # the postgres user keeps its data under it
    results = []
    with RedisServer(root) as redis:
        s = workspace(root, "dags-test", args.scale, redis.url)
        result = airflow_runner.run_dag(s, args.day)
        results.append({"mode": "dags test", "state": result.state,
                        "wall_s": round(result.seconds, 1)})  # fmt: skip
        print(json.dumps(results[-1]), flush=True)
        pg = postgres.for_workspace(root, free_port())
        postgres.start(pg)
        try:
            for workers in (int(w) for w in args.workers.split(",")):
                s = workspace(root, f"celery-{workers}", args.scale, redis.url)
                results.append(run_celery(s, pg, workers, args.day))
                print(json.dumps(results[-1]), flush=True)
        finally:
            postgres.stop(pg)
    shutil.rmtree(root, ignore_errors=True)
    return 0 if all(r["state"] == "success" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
