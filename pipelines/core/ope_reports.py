"""The off-policy evaluations of the bundles' policies, ``reports/ope/date=D/<label>.json``: their
one reader and writer.

One JSON object per policy ``label`` (``bundle-<version>``) and logged day D, written by
:func:`pipelines.release.bundle_ope.evaluate_bundle`: ``date``, ``policy`` (the label),
``temperature``, ``k``, ``logging_propensities``, ``users``, ``estimates`` ({estimator:
{``estimate``, ``ci_low``, ``ci_high``, ...}}) and, on simulated data, ``truth`` and
``logging_ctr``. Read by the A/B analysis (the OPE prediction of each arm), ``recloop demo`` and
the HTML report.

A missing file reads as ``None``; a file that is not a JSON object raises ``ValueError`` naming
the file (the A/B analysis and the HTML report log it and go on).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from pipelines.core import layout, schema
from pipelines.core.settings import Settings


def ope_report_dates(settings: Settings) -> list[dt.date]:
    """Sorted dates D that have a ``reports/ope/date=D`` folder."""
    return schema.partition_dates(layout.ope_reports_dir(settings))


def ope_labels(settings: Settings, date: str | dt.date) -> list[str]:
    """The policy labels evaluated on ``date`` (the ``<label>.json`` files, by file name)."""
    folder = layout.ope_report_dir(settings, date)
    return [p.stem for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def read_ope_report(settings: Settings, date: str | dt.date, label: str) -> dict[str, Any] | None:
    """The OPE report of policy ``label`` on ``date``; None when the file does not exist.

    Raises ``ValueError`` naming the file when it cannot be read or is not a JSON object."""
    return schema.read_json_file(layout.ope_report_path(settings, date, label), "OPE report")


def write_ope_report(settings: Settings, report: dict[str, Any]) -> Path:
    """Write ``report`` (its ``date`` and ``policy`` name the file) atomically, as indented,
    key-sorted JSON with numpy numbers as floats; the path written."""
    path = layout.ope_report_path(settings, report["date"], report["policy"])
    text = json.dumps(report, indent=2, sort_keys=True, default=float)
    return schema.write_text_atomic(text, path)
