"""The off-policy evaluations of the bundles' policies, ``reports/ope/date=D/<label>.json``: their
one reader and writer.

One JSON object per policy ``label`` and logged day D. ``target`` says which policy:

- ``"served"`` (label ``bundle-<version>``; the gate's, written by
  :func:`pipelines.release.bundle_ope.evaluate_served_bundle`): the bundle through the serving
  pipeline. ``date``, ``policy`` (the label), ``bundle_version``, ``k``, ``rows``, ``requests``,
  ``max_requests``, ``excluded_rows``, ``excluded_simulator_rows``, ``explore_rows``,
  ``examination``, ``logging_ctr``, ``seconds``, ``estimates`` ({estimator: {``estimate``,
  ``ci_low``, ``ci_high``, ``ess``, ``mean_weight``, ``n``}} of
  :mod:`pipelines.release.served_ope`, with ``snips`` / ``dr`` the headline PBM SNIPS / DR again,
  ``estimator`` naming the source) and, on simulated data, ``truth`` (the policy's exact true CTR
  on the same requests) and ``rel_error`` (:func:`relative_error`).
- ``"softmax"`` (label ``bundle-<version>-softmax``; :func:`pipelines.release.bundle_ope.evaluate_bundle`):
  the two-tower softmax policy: ``temperature``, ``logging_propensities``, ``users``,
  ``estimates`` (:func:`pipelines.release.ope.estimate`), ``truth``, ``logging_ctr``. Reports
  written before ``target`` existed are of this kind (:func:`target_of`).

Read by the A/B analysis (the OPE prediction of each arm: ``bundle-<version>``), ``recloop demo``
and the HTML report.

A missing file reads as ``None``; a file that is not a JSON object raises ``ValueError`` naming
the file (the A/B analysis and the HTML report log it and go on).
"""

from __future__ import annotations

import datetime as dt
import json
import math
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


def target_of(report: dict[str, Any]) -> str:
    """The report's ``target`` (``served`` / ``softmax``); ``softmax`` when absent (older)."""
    return str(report.get("target") or "softmax")


def relative_error(report: dict[str, Any], estimator: str = "snips") -> float | None:
    """``|estimate − truth| / truth`` of ``estimator`` in ``report``; None without a finite
    estimate or a positive truth (real data has no truth)."""
    est = ((report.get("estimates") or {}).get(estimator) or {}).get("estimate")
    truth = report.get("truth")
    if not isinstance(est, (int, float)) or not isinstance(truth, (int, float)):
        return None
    if not (math.isfinite(est) and math.isfinite(truth)) or truth <= 0:
        return None
    return abs(float(est) - float(truth)) / float(truth)
