"""The A/B experiments' daily decisions, ``reports/ab/<experiment>/date=D.json``: their one reader
and writer.

One JSON object per experiment (``<champion>-vs-<challenger>`` bundle versions) and analysed day
D, written by :func:`pipelines.experiments.ab.analyze` (``pipelines.experiments.ab.Decision``
lists the fields: ``experiment``, ``date``, ``action``, ``reason``, ``day``, ``arms``,
``looks``, ``guardrails``, ...). Read by the A/B analysis itself (an experiment's history), the
closed loop's day records, ``recloop demo`` and the HTML report.

A missing file reads as ``None``; a file that is not a JSON object raises ``ValueError`` naming
the file (the HTML report logs it and goes on).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pipelines.core import layout, schema
from pipelines.core.settings import Settings


def ab_experiments(settings: Settings) -> list[str]:
    """Sorted names of the experiments that have a ``reports/ab/<experiment>`` folder."""
    root = layout.ab_reports_dir(settings)
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def ab_decision_dates(settings: Settings, experiment: str) -> list[dt.date]:
    """Sorted dates D with a decision of ``experiment`` (other file names are ignored)."""
    return schema.dated_json_dates(layout.ab_report_dir(settings, experiment))


def read_ab_decision(
    settings: Settings, experiment: str, date: str | dt.date
) -> dict[str, Any] | None:
    """The decision of ``experiment`` on ``date``; None when the file does not exist.

    Raises ``ValueError`` naming the file when it cannot be read or is not a JSON object."""
    return schema.read_json_file(layout.ab_report_path(settings, experiment, date), "A/B decision")


def write_ab_decision(settings: Settings, record: dict[str, Any]) -> Path:
    """Write ``record`` (its ``experiment`` and ``date`` name the file) atomically; the path."""
    path = layout.ab_report_path(settings, record["experiment"], record["date"])
    return schema.write_json_atomic(record, path)
