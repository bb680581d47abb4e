"""The daily statistics of the validated logs, ``reports/stats/date=D.json``: its one reader and
writer.

One JSON object per day D, written by :func:`pipelines.data.stats.daily_stats` (which lists the
fields: ``date``, ``rows``, ``events``, ``users``, ``items``, ``new_users``, ``new_items``,
``ctr``, ``ctr_by_position``).

A missing file reads as ``None``; a file that is not a JSON object raises ``ValueError`` naming
the file (the HTML report logs it and goes on; ``recloop demo`` stops on it).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pipelines.core import layout, schema
from pipelines.core.settings import Settings


def stats_report_dates(settings: Settings) -> list[dt.date]:
    """Sorted dates D that have a ``reports/stats/date=D.json`` (other file names are ignored)."""
    return schema.dated_json_dates(layout.stats_reports_dir(settings))


def read_stats_report(settings: Settings, date: str | dt.date) -> dict[str, Any] | None:
    """The statistics of ``date``; None when the file does not exist.

    Raises ``ValueError`` naming the file when it cannot be read or is not a JSON object."""
    return schema.read_json_file(layout.stats_report_path(settings, date), "statistics report")


def write_stats_report(settings: Settings, report: dict[str, Any]) -> Path:
    """Write ``report`` (its ``date`` names the day) atomically; the path written."""
    return schema.write_json_atomic(report, layout.stats_report_path(settings, report["date"]))
