"""The retrievers' forward evaluation, ``reports/eval/date=D.json``: its one reader and writer.

One JSON object per test day D, written by the ``evaluate`` task
(:func:`pipelines.retrieval.evaluate.evaluate_forward`): ``date``, ``trained_through`` (D−H),
``test_days`` (H, default 1) and ``test_window`` ([D−H+1, D]), ``k``, and either ``metrics`` ({model: {metric: value}}, e.g. ``ndcg@10``, ``recall@100``) or a
``note`` saying why nothing was evaluated.

A missing file reads as ``None``; a file that is not a JSON object raises ``ValueError`` naming
the file (the HTML report logs it and goes on; ``recloop demo`` stops on it).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pipelines.core import layout, schema
from pipelines.core.settings import Settings


def eval_report_dates(settings: Settings) -> list[dt.date]:
    """Sorted dates D that have a ``reports/eval/date=D.json`` (other file names are ignored)."""
    return schema.dated_json_dates(layout.eval_reports_dir(settings))


def read_eval_report(settings: Settings, date: str | dt.date) -> dict[str, Any] | None:
    """The forward evaluation of ``date``; None when the file does not exist.

    Raises ``ValueError`` naming the file when it cannot be read or is not a JSON object."""
    return schema.read_json_file(layout.eval_report_path(settings, date), "evaluation report")


def write_eval_report(settings: Settings, report: dict[str, Any]) -> Path:
    """Write ``report`` (its ``date`` names the day) atomically; the path written."""
    return schema.write_json_atomic(report, layout.eval_report_path(settings, report["date"]))
