"""Validate one day's raw interactions (Great Expectations): good rows on, bad rows to quarantine.

Reads data/interactions/date=D/*.parquet, writes data/validated/date=D/, quarantine/date=D/
(bad rows with their reason, source file and row), reports/validation/date=D.json and the
Great Expectations Data Docs under reports/data_docs/. A partition-level failure (missing or
unreadable file, missing column, empty partition, too many bad rows, volume collapse) exits 2
and leaves the previous outputs of that date in place.
"""

from __future__ import annotations

import argparse

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", required=True, help="logical date to validate, YYYY-MM-DD")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.data.validate import format_summary, validate_partition

    result = validate_partition(settings, args.date)
    print(format_summary(result))
    return 0
