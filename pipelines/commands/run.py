"""Run the daily DAG through Airflow for one logical date or a range.

  recloop run --date 2026-01-01 [--end-date 2026-01-05]

Each date is one `airflow dags test recloop_daily DATE` (Airflow's own in-process DAG run, with
AIRFLOW_HOME and a SQLite metadata DB under RECLOOP_HOME/airflow); then each task's outcome is
printed. A rerun of a date recomputes that date's outputs and nothing else. Exit code 1 when a run
failed (the range stops there); --keep-going runs the remaining dates anyway.
"""

from __future__ import annotations

import argparse
import datetime as dt

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", required=True, help="logical date YYYY-MM-DD")
    parser.add_argument("--end-date", help="last logical date of a range (inclusive)")
    parser.add_argument("--keep-going", action="store_true", help="continue after a failed date")
    parser.add_argument("--show-log", action="store_true", help="stream Airflow's own log")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.core.schema import parse_date
    from pipelines.orchestration.airflow_runner import run_dag

    first = parse_date(args.date)
    last = parse_date(args.end_date) if args.end_date else first
    if last < first:
        raise ValueError(f"--end-date {last} is before --date {first}")
    code = 0
    day = first
    while day <= last:
        result = run_dag(settings, day, echo=args.show_log)
        print(result, flush=True)
        if not result.ok:
            code = 1
            if not args.show_log:
                print("--- Airflow log (tail) ---\n" + result.log_tail[-2500:])
            if not args.keep_going:
                break
        day += dt.timedelta(days=1)
    return code
