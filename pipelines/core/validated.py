"""Which validated log partitions exist (``data/validated/date=D/*.parquet``), and their files.

The one listing of the validated logs: every stage that reads them by date range (training,
features, statistics, volume checks, the A/B analysis, the registry's data hash) asks here.
Only complete partitions count (a publish in progress is a temporary folder, skipped).
``first`` and ``last`` are inclusive; None leaves that end open.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pipelines.core import layout, schema
from pipelines.core.settings import Settings

Date = str | dt.date


def validated_dates(
    settings: Settings, first: Date | None = None, last: Date | None = None
) -> list[dt.date]:
    """Sorted dates of the validated partitions in ``[first, last]`` (``[]`` when none)."""
    lo = schema.parse_date(first) if first is not None else dt.date.min
    hi = schema.parse_date(last) if last is not None else dt.date.max
    return [d for d in schema.partition_dates(settings.validated_dir) if lo <= d <= hi]


def validated_files(
    settings: Settings, first: Date | None = None, last: Date | None = None
) -> list[Path]:
    """Parquet files of the validated partitions in ``[first, last]``: by date, then by name."""
    return [
        f
        for d in validated_dates(settings, first, last)
        for f in sorted(layout.validated_partition(settings, d).glob("*.parquet"))
    ]
