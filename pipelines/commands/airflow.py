"""Start Airflow (scheduler, DAG processor, triggerer, API server + UI) on loopback.

Runs `airflow standalone` with AIRFLOW_HOME under RECLOOP_HOME/airflow, a SQLite metadata DB and
the project's dags/ folder, bound to 127.0.0.1. Prints the UI address and the generated admin
password, then runs until Ctrl-C or SIGTERM (`kill PID`), either of which stops every Airflow
process it started (SIGINT to Airflow, then SIGTERM, then SIGKILL after 30 s). DAGs start paused:
unpause recloop_daily in the UI (or trigger a run for a date whose logs exist) and watch, retry
and clear runs there as usual.

``--executor celery --workers N``: Airflow's production topology instead
(:mod:`pipelines.cluster.airflow_celery`): the metadata database on the local cluster's
PostgreSQL (started if needed, port ``RECLOOP_CLUSTER_PG_PORT``), a Redis broker of its own
(``RECLOOP_CLUSTER_AIRFLOW_BROKER_PORT``), and the scheduler, DAG processor, triggerer, API
server and N Celery workers as separate processes; Ctrl-C or SIGTERM stops them all (and
PostgreSQL when this command started it).
"""

from __future__ import annotations

import argparse
import signal
import time
from pathlib import Path
from types import FrameType

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port", type=int, default=8080, help="API server / UI port (default 8080)"
    )
    parser.add_argument(
        "--executor", choices=["standalone", "celery"], default="standalone",
        help="standalone (default): `airflow standalone` on SQLite; celery: CeleryExecutor on "
        "PostgreSQL with a Redis broker, every component its own process",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=2, help="Celery workers (--executor celery; default 2)"
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: unwind like Ctrl-C, so ``run`` stops Airflow on the way out."""
    raise KeyboardInterrupt


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.executor == "celery":
        return run_celery(args, settings)
    from pipelines.core import layout
    from pipelines.orchestration import airflow_runner

    previous = signal.signal(signal.SIGTERM, _interrupt)
    proc = airflow_runner.start_standalone(settings, port=args.port)
    log = layout.airflow_standalone_log_path(settings)
    print(f"airflow: starting (log {log}) ...", flush=True)
    try:
        airflow_runner.wait_ready(args.port)
        password = airflow_runner.admin_password(settings)
        print(
            f"airflow: ready at http://127.0.0.1:{args.port}  user admin  password {password}\n"
            f"airflow: AIRFLOW_HOME={settings.airflow_home}; Ctrl-C or SIGTERM stops it",
            flush=True,
        )
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(
            signal.SIGTERM, signal.SIG_IGN
        )  # a second SIGTERM must not cut the stop short
        print("airflow: stopping ...", flush=True)
        sent = airflow_runner.stop_standalone(proc)
        print(
            f"airflow: stopped ({', '.join(s.name for s in sent) or 'already exited'})", flush=True
        )
        signal.signal(signal.SIGTERM, previous)


def _watch(run_dir: Path) -> int:
    """Return 1 (after saying which) once a process of the topology has died; runs until then."""
    from pipelines.cluster import airflow_celery

    while True:
        time.sleep(2.0)
        dead = [name for name, pid in airflow_celery.status(run_dir).items() if pid is None]
        if dead:
            print(f"airflow: {', '.join(dead)} exited (logs in {run_dir})", flush=True)
            return 1


def run_celery(args: argparse.Namespace, settings: Settings) -> int:
    """``--executor celery``: start PostgreSQL (unless it runs), the topology, print the login,
    then run until Ctrl-C, SIGTERM or a process's death; stop what this call started."""
    from pipelines.cluster import airflow_celery, postgres
    from pipelines.cluster.config import ClusterConfig
    from pipelines.orchestration import airflow_runner

    if not 1 <= args.workers <= 32:
        raise SystemExit(f"recloop airflow: --workers {args.workers}: expected 1..32")
    cfg = ClusterConfig.from_env()
    folder = airflow_celery.run_dir(settings.home)
    if any(airflow_celery.status(folder).values()):
        raise SystemExit(f"recloop airflow: the Celery topology already runs ({folder}); "
                         "`python -m pipelines.cluster down` stops it")  # fmt: skip
    pg = postgres.for_workspace(settings.home, cfg.pg_port)
    pg_was_running = postgres.is_running(pg)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    topo = airflow_celery.CeleryTopology(settings, pg.url("airflow"), cfg.airflow_broker_port,
                                         args.port, args.workers)  # fmt: skip
    try:
        postgres.start(pg)
        postgres.ensure_databases(pg)
        print(f"airflow: starting the Celery topology ({args.workers} workers; PostgreSQL "
              f"127.0.0.1:{pg.port}, data {pg.data_dir}; logs in {folder}) ...",
              flush=True)  # fmt: skip
        seconds = airflow_celery.start(topo)
        password = airflow_runner.admin_password(settings)
        print(f"airflow: ready in {max(seconds.values()):.0f}s at {topo.api_url}  user admin  "
              f"password {password}\nairflow: broker {topo.broker_url}, metadata "
              f"{pg.url('airflow')}; Ctrl-C or SIGTERM stops it", flush=True)  # fmt: skip
        return _watch(folder)
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut it short
        print("airflow: stopping ...", flush=True)
        stopped = airflow_celery.stop(folder)
        if not pg_was_running:
            postgres.stop(pg)
        print(f"airflow: stopped {', '.join(stopped) or 'nothing'}"
              + ("" if pg_was_running else " and PostgreSQL"), flush=True)  # fmt: skip
        signal.signal(signal.SIGTERM, previous)
