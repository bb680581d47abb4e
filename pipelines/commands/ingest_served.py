"""Ingest what the service served on a day (impressions and feedback) into the day's partition.

  recloop ingest-served --date D

Reads the service's log (RECLOOP_HOME/serving/impressions/date=*/) for day D, moves simulated
traffic to its simulated times (RECLOOP_HOME/serving/traffic/date=D/), matches each click and
purchase to its impression and writes data/interactions/date=D/part-0.parquet, merged with the
rows already there (deduplicated by event_id; a rerun writes the same bytes). Unmatched feedback
goes to quarantine/served/date=D/; a log file that cannot be read is moved to
quarantine/files/serving/impressions/date=*/ with a .reason.json (listed as corrupt_files) and
the other files are ingested. Validate the partition afterwards (`recloop validate`).
"""

from __future__ import annotations

import argparse

from pipelines.core.settings import Settings

NAME = "ingest-served"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", required=True, help="day to ingest, YYYY-MM-DD")


def run(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from pipelines.loop.served import ingest_served

    out = ingest_served(settings, args.date)
    print(json.dumps(out, indent=2, sort_keys=True, default=str))
    return 0
