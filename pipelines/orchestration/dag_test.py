"""``airflow dags test DAG DATE [ARGS...]`` that leaves the run with its real start time.

Airflow 3.3's ``dag.test()`` creates the run with ``start_date = logical_date``, so the UI shows
a run of 2026-01-02 made today as lasting months. This runs Airflow's own CLI in-process (same
arguments, same output, same exit status), then, through Airflow's ORM, sets that run's
``start_date`` to its ``run_after`` (the wall-clock time ``dags test`` created it; a run cannot
start before it) when it is earlier. Task instances already carry real times.

Run as ``python -m pipelines.orchestration.dag_test DAG_ID YYYY-MM-DD [--conf JSON ...]`` with
the environment of :func:`pipelines.orchestration.airflow_runner.airflow_env`.
"""

from __future__ import annotations

import datetime as dt
import sys


def fix_run_start(dag_id: str, logical_date: dt.datetime) -> dt.datetime | None:
    """Set the newest run of ``dag_id`` at ``logical_date`` (UTC) to start at its ``run_after``
    when its ``start_date`` is earlier; returns the start it has now (None: no such run)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        run = session.scalars(
            select(DagRun)
            .where(DagRun.dag_id == dag_id, DagRun.logical_date == logical_date)
            .order_by(DagRun.id.desc())
            .limit(1)
        ).first()
        if run is None:
            return None
        if run.run_after is not None and (run.start_date is None or run.start_date < run.run_after):
            run.start_date = run.run_after
        return run.start_date


def main(argv: list[str]) -> int:
    """``argv``: ``[DAG_ID, YYYY-MM-DD, extra dags-test arguments...]``; Airflow's exit status."""
    from airflow.__main__ import main as airflow_main

    dag_id, day = argv[0], dt.date.fromisoformat(argv[1])
    sys.argv = ["airflow", "dags", "test", *argv]
    status = 0
    try:
        airflow_main()
    except SystemExit as exc:  # "DagRun failed" and argument errors end this way
        if isinstance(exc.code, int):
            status = exc.code
        elif exc.code is not None:
            print(exc.code, file=sys.stderr)
            status = 1
    finally:
        logical = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
        try:
            fix_run_start(dag_id, logical)
        except Exception as exc:  # noqa: BLE001 - the run's outcome matters more than its start
            print(f"dag_test: could not correct the run's start_date: {exc}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
