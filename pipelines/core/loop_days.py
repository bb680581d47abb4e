"""The closed loop's day records, ``reports/loop/days.json``: its one reader and its one writer.

A JSON list with one object per logical date the loop has worked on, sorted by ``date``
(``YYYY-MM-DD``); :mod:`pipelines.loop.closed_loop` describes the other fields.

A missing file reads as ``[]`` (the loop has not run). A file that is not a JSON list of objects
each with a string ``date`` raises ``ValueError`` naming the file: the loop stops rather than
overwrite it (move it aside to start over), and the HTML report logs it and shows no days.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.core import layout, schema
from pipelines.core.settings import Settings


def read_loop_days(settings: Settings) -> list[dict[str, Any]]:
    """The loop's day records, sorted by date; ``[]`` when the file does not exist.

    Raises ``ValueError`` naming the file when it is unreadable or not a list of day records."""
    path = layout.loop_days_path(settings)
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not JSON ({exc}); move it aside to start the loop over") from exc
    if not isinstance(records, list) or not all(
        isinstance(r, dict) and isinstance(r.get("date"), str) for r in records
    ):
        raise ValueError(
            f"{path}: not a JSON list of day records (objects with a 'date'); "
            "move it aside to start the loop over"
        )
    return sorted(records, key=lambda r: r["date"])


def save_loop_day(settings: Settings, record: dict[str, Any]) -> Path:
    """Put ``record`` in place of the record of its ``date`` (or add it), atomically; the path."""
    others = [r for r in read_loop_days(settings) if r["date"] != record["date"]]
    records = sorted([*others, record], key=lambda r: r["date"])
    return schema.write_json_atomic(records, layout.loop_days_path(settings))
