"""Start Airflow (scheduler, DAG processor, triggerer, API server + UI) on loopback.

Runs `airflow standalone` with AIRFLOW_HOME under RECLOOP_HOME/airflow, a SQLite metadata DB and
the project's dags/ folder, bound to 127.0.0.1. Prints the UI address and the generated admin
password, then runs until Ctrl-C. DAGs start paused: unpause recloop_daily in the UI (or trigger a
run for a date whose logs exist) and watch, retry and clear runs there as usual.
"""

from __future__ import annotations

import argparse
import signal

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port", type=int, default=8080, help="API server / UI port (default 8080)"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.core import layout
    from pipelines.orchestration import airflow_runner

    proc = airflow_runner.start_standalone(settings, port=args.port)
    log = layout.airflow_standalone_log_path(settings)
    print(f"airflow: starting (log {log}) ...", flush=True)
    try:
        airflow_runner.wait_ready(args.port)
        password = airflow_runner.admin_password(settings)
        print(
            f"airflow: ready at http://127.0.0.1:{args.port}  user admin  password {password}\n"
            f"airflow: AIRFLOW_HOME={settings.airflow_home}; Ctrl-C stops it",
            flush=True,
        )
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            import os

            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except Exception:  # noqa: BLE001 - last resort on shutdown
                os.killpg(proc.pid, signal.SIGKILL)
