"""Backfill a range of days in one process: validate and featurize each, train and gate at the end.

  recloop backfill --start 1997-09-20 --end 1998-03-15 [--every 30] [--test-days auto|H]

The fast path for an imported history (`recloop ingest ...` first). Every day of the range is
validated and gets its feature tables, in date order; then the models are trained through
--end minus H days, registered with their serving bundle, scored forward on the H test days
ending on --end and gated there (the first bundle that passes becomes `champion`, ready for
`recloop serve`). With --every N the same checkpoint also runs every N days, which leaves a
history of forward metrics (reports/eval/, reports/gates/). Only checkpoint days are
materialized into Redis.

The test window H: one day of a real history can hold a handful of users (MovieLens 100K's
1998-03-15: 6), too few to judge a model on. The default, `--test-days auto`, takes at each
checkpoint the smallest H (from RECLOOP_GATE_TEST_DAYS, default 1, up) whose window holds at
least --min-test-users (50) users the models know: 11 days (52 users) on MovieLens 100K
ending 1998-03-15. `--test-days 14` fixes it; `--test-days 1` is the daily DAG's evaluation. The chosen H is in the final table and in
every report (`test_days`, `test_window`).

The final refit: the champion judged on the test window was trained without its H days, and
would serve the days after --end without them. So the same configuration is then retrained
through --end and replaces the champion as a refresh (same configuration fingerprint, the
service's load and smoke test; held, and said so, when the champion is pinned or an A/B test
runs). --no-refit leaves the judged champion serving. On MovieLens 100K the refit lifted the
served NDCG@10 of the next days from 0.3673 to 0.3951.

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
    parser.add_argument(
        "--test-days",
        type=_test_days,
        default="auto",
        metavar="H|auto",
        help="test window: train through the checkpoint minus H days, evaluate and gate on the "
        "H days ending on it (default auto: the smallest H with --min-test-users users)",
    )
    parser.add_argument(
        "--min-test-users",
        type=int,
        default=None,
        metavar="N",
        help="--test-days auto: the fewest users a test window should score (default 50)",
    )
    parser.add_argument(
        "--no-refit",
        action="store_true",
        help="leave the champion trained through --end minus H (default: retrain its "
        "configuration through --end and promote it as a refresh)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _test_days(text: str) -> int | str:
    """``auto`` or a positive integer (argparse type)."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(
            f"expected a positive number of days or 'auto', got {text!r}"
        )
    return value


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.orchestration.backfill import (
        MIN_TEST_USERS,
        BackfillError,
        backfill,
        format_summary,
    )

    try:
        summary = backfill(
            settings,
            args.start,
            args.end,
            every=args.every,
            progress=not args.no_progress,
            test_days=args.test_days,
            min_test_users=args.min_test_users or MIN_TEST_USERS,
            refit=not args.no_refit,
        )
    except BackfillError as exc:
        print(format_summary(exc.summary), file=sys.stderr)
        raise
    print(format_summary(summary))
    return 0 if summary.champion else 1
