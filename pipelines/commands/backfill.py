"""Backfill a range of days in one process: validate and featurize each, train and gate at the end.

  recloop backfill --start 1997-09-20 --end 1998-03-15 [--every 30]

The fast path for an imported history (`recloop ingest ...` first). Every day of the range is
validated and gets its feature tables, in date order; then the models are trained through the
day before --end, registered with their serving bundle, scored forward on --end and gated there
(the first bundle that passes becomes `champion`, ready for `recloop serve`). With --every N the
same checkpoint also runs every N days, which leaves a history of forward metrics
(reports/eval/, reports/gates/). Only checkpoint days are materialized into Redis.

Resumable and idempotent: a day whose outputs are current is skipped, so a rerun after a failure
starts where it stopped and a rerun of a finished range does nothing new. A failure names the day
and the step (exit 2); earlier days stay done. Prints a progress bar and, at the end, a table of
what ran and the seconds per step.
"""

from __future__ import annotations

import argparse
import sys

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--start", required=True, help="first logical date, YYYY-MM-DD")
    parser.add_argument("--end", required=True, help="last logical date (inclusive), YYYY-MM-DD")
    parser.add_argument(
        "--every",
        type=int,
        metavar="N",
        help="also train, evaluate and gate every N days (a history of forward metrics)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.orchestration.backfill import BackfillError, backfill, format_summary

    try:
        summary = backfill(
            settings, args.start, args.end, every=args.every, progress=not args.no_progress
        )
    except BackfillError as exc:
        print(format_summary(exc.summary), file=sys.stderr)
        raise
    print(format_summary(summary))
    return 0 if summary.champion else 1
