"""One screen on the workspace: each stage's last date, DAG runs, champion and challenger, the
experiment, the service, the quarantine, and what to do next.

  recloop status [--json]

Reads the workspace only (pipelines.report.status): the last logical date through each stage
(raw logs, validated, features, materialized into Redis, trained, registered, gated), the latest
run of each DAG in Airflow's metadata database, the serving bundle's champion and challenger
with the numbers of the gate that judged them, the running A/B experiment (day, impressions per
arm, p-value, when a decision can come at the current traffic), the service's /health/ready
(RECLOOP_SERVE_URL, default http://127.0.0.1:8000), the rows in quarantine/, and a "next:" line.
With --json, stdout is the JSON document only. Answers in well under 2 s; changes nothing.
"""

from __future__ import annotations

import argparse

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the status as JSON only")


def run(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from pipelines.report.status import collect, format_status

    status = collect(settings, f"{settings.serve_url}/health/ready")
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(format_status(status))
    return 0
