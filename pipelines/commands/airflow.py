"""Start Airflow (scheduler, DAG processor, triggerer, API server + UI) on loopback.

Runs `airflow standalone` with AIRFLOW_HOME under RECLOOP_HOME/airflow, a SQLite metadata DB and
the project's dags/ folder, bound to 127.0.0.1. Prints the UI address and the generated admin
password, then runs until Ctrl-C or SIGTERM (`kill PID`), either of which stops every Airflow
process it started (SIGINT to Airflow, then SIGTERM, then SIGKILL after 30 s). DAGs start paused:
unpause recloop_daily in the UI (or trigger a run for a date whose logs exist) and watch, retry
and clear runs there as usual.
"""

from __future__ import annotations

import argparse
import signal
from types import FrameType

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port", type=int, default=8080, help="API server / UI port (default 8080)"
    )


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM handler: unwind like Ctrl-C, so ``run`` stops Airflow on the way out."""
    raise KeyboardInterrupt


def run(args: argparse.Namespace, settings: Settings) -> int:
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
