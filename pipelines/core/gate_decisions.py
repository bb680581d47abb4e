"""The gate decisions file, ``reports/gates/date=D.json``: its one reader and its one writer.

One JSON object per logical date D, written by the gate task (:func:`pipelines.release.gate.gate_day`):
``date``, ``candidate_version``, ``champion_version``, ``action``, ``reason``, ``gates`` (one
object per gate), ``aliases``, ``tolerances``, ``mlflow_run_id``, ``passed``.

On a missing file the reader answers ``None`` (no decision that day); on a file that is not a JSON
object it raises ``ValueError`` naming the file. Callers that must go on past a bad file (the
HTML report, the A/B analysis) catch that ``ValueError``; nobody reads the file another way.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pipelines.core import layout, schema
from pipelines.core.settings import Settings


def gate_decision_dates(settings: Settings) -> list[dt.date]:
    """Sorted dates D that have a ``reports/gates/date=D.json`` (other file names are ignored)."""
    return schema.dated_json_dates(layout.gate_reports_dir(settings))


def read_gate_decision(settings: Settings, date: str | dt.date) -> dict[str, Any] | None:
    """The gate decision of ``date``; None when the file does not exist.

    Raises ``ValueError`` naming the file when it cannot be read or is not a JSON object."""
    return schema.read_json_file(layout.gate_report_path(settings, date), "gate decision")


def write_gate_decision(settings: Settings, record: dict[str, Any]) -> Path:
    """Write ``record`` (its ``date`` names the day) atomically; the path written."""
    return schema.write_json_atomic(record, layout.gate_report_path(settings, record["date"]))
