"""What the service served, as a day's data (``recloop ingest-served``, a step of the closed loop).

``ingest_served(settings, date)`` turns the service's log (``serving/impressions/date=*/``, written
by :mod:`serving.logging` in the INTERACTIONS shape: impressions *and* ``/feedback`` rows) into the
day's partition ``data/interactions/date=D/``:

- rows of requests listed in D's traffic manifest (:mod:`pipelines.loop.traffic`; found in
  whichever wall-clock log partitions they landed in) are moved to their simulated times; rows of
  ``serving/impressions/date=D/`` whose request is in no manifest are real traffic of D and kept
  as they are; rows of requests that a manifest of another day claims are left to that day;
- each click / purchase must match an impression of the same request (same ``request_id``,
  ``item_id``, ``position``, ``arm``, ``model_version``, ``propensity``); the others are counted and
  written to ``quarantine/served/date=D/part-0.parquet`` with a ``reason``, never dropped silently;
- a log file that cannot be read (damaged) is moved to ``quarantine/files/serving/impressions/``
  with a ``.reason.json`` naming it and what was wrong, and the other files are ingested;
- rows already in the partition (e.g. from the simulator's logging policy) are kept; the union is
  de-duplicated by ``event_id`` (first kept), sorted by ``(ts, event_id)`` and written atomically
  as one file, so a rerun writes identical bytes.

The daily DAG then validates the partition through the same gate as any other source.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core import layout, schema
from pipelines.core.settings import Settings
from pipelines.loop.traffic import FEEDBACK_EVENTS, MANIFEST, traffic_dir

log = logging.getLogger("recloop.loop")

MATCH_COLUMNS = ("request_id", "item_id", "position", "arm", "model_version", "propensity")
UNKNOWN_REQUEST = "unknown request_id (no impression of this request in the served log)"
MISMATCH = "no impression of this request with the same item, position, arm, version, propensity"


def served_quarantine_dir(settings: Settings) -> Path:
    """``quarantine/served``: unmatched feedback rows, one ``date=D`` partition per day."""
    return layout.served_quarantine_dir(settings)


def _read_folder(
    folder: Path, columns_schema: pa.Schema, quarantine: Callable[[Path, str], Any] | None = None
) -> pd.DataFrame:
    """Every ``*.parquet`` of ``folder`` (sorted by name), cast to ``columns_schema``, as pandas
    with nullable dtypes; empty frame when there are none. A file that cannot be read raises a
    ``ValueError`` naming it, or, with ``quarantine``, is handed to ``quarantine(file, reason)``
    and skipped."""
    files = sorted(folder.glob("*.parquet")) if folder.exists() else []
    tables = []
    for f in files:
        try:
            t = pq.read_table(f)
            tables.append(t.select(columns_schema.names).cast(columns_schema))
        except (pa.ArrowException, OSError, KeyError, ValueError) as exc:
            reason = f"not a readable {columns_schema.names} parquet file: {exc}"
            if quarantine is None:
                raise ValueError(f"{f}: {reason}") from exc
            quarantine(f, reason)
    if not tables:
        return columns_schema.empty_table().to_pandas(types_mapper=pd.ArrowDtype)
    return pa.concat_tables(tables).to_pandas(types_mapper=pd.ArrowDtype)


def read_manifests(settings: Settings) -> pd.DataFrame:
    """All traffic manifests, with the simulated ``date`` they belong to (from the folder)."""
    frames = []
    for day in schema.partition_dates(traffic_dir(settings)):
        f = _read_folder(schema.partition_dir(traffic_dir(settings), day), MANIFEST)
        f["date"] = day
        frames.append(f)
    if not frames:
        empty = MANIFEST.empty_table().to_pandas(types_mapper=pd.ArrowDtype)
        empty["date"] = pd.Series([], dtype=object)
        return empty
    return pd.concat(frames, ignore_index=True)


def _to_table(frame: pd.DataFrame) -> pa.Table:
    """INTERACTIONS table from a frame of Arrow-backed columns."""
    return pa.Table.from_pandas(frame[list(schema.INTERACTIONS.names)], preserve_index=False).cast(
        schema.INTERACTIONS
    )


def _manifest_times(
    manifests: pd.DataFrame, day: dt.date
) -> tuple[dict[str, Any], dict[str, Any], set[str], set[dt.date]]:
    """From the manifests: ``(request id → simulated time, logged event id → simulated time)``
    of day ``day``'s requests and feedback, the request ids other days' manifests claim, and the
    log partitions to read (``day`` and each wall-clock day the requests were served on, plus
    the next: a request served just before midnight logs its feedback after it)."""
    mine = manifests[manifests["date"] == day]
    others = set(manifests.loc[manifests["date"] != day, "request_id"].astype(str))
    req_ts = {
        str(r): t for r, t in zip(
            mine.loc[mine["kind"] == "request", "request_id"],
            mine.loc[mine["kind"] == "request", "ts"], strict=True)
    }  # fmt: skip
    fb = mine[mine["kind"] == "feedback"]
    fb_ts = {str(e): t for e, t in zip(fb["event_id"], fb["ts"], strict=True)}
    dates = {day}
    for on in mine["served_on"].dropna().unique():
        on = schema.parse_date(on)
        dates |= {on, on + dt.timedelta(days=1)}
    return req_ts, fb_ts, others, dates


def _read_served_log(
    settings: Settings,
    day: dt.date,
    dates: set[dt.date],
    requests: set[str],
    others: set[str],
    corrupt: list[str],
) -> tuple[pd.DataFrame, int]:
    """Rows of the service's log partitions ``dates`` that belong to ``day`` (its manifest's
    ``requests``, and in ``day``'s own partition the requests no manifest claims), first row per
    ``event_id``; and the number of log files found. A log file that cannot be read is moved to
    ``quarantine/files/serving/impressions/date=*/`` with its reason
    (:func:`pipelines.core.schema.quarantine_file`), appended to ``corrupt`` and skipped."""
    root = layout.impressions_dir(settings)

    def quarantine(path: Path, reason: str) -> None:
        schema.quarantine_file(path, settings.home, settings.quarantine_dir, reason)
        corrupt.append(str(path))

    parts, files = [], 0
    for d in sorted(dates):
        folder = schema.partition_dir(root, d)
        files += len(list(folder.glob("*.parquet"))) if folder.exists() else 0
        f = _read_folder(folder, schema.INTERACTIONS, quarantine)
        rid = f["request_id"].astype(str)
        keep = rid.isin(requests)
        if d == day:  # real traffic of D: requests no manifest claims
            keep |= ~rid.isin(others) & ~rid.isin(requests) & ~f["request_id"].isna()
        parts.append(f[keep.fillna(False).to_numpy(dtype=bool)])
    logs = pd.concat(parts, ignore_index=True)
    return logs[~logs["event_id"].duplicated()].reset_index(drop=True), files


def _to_simulated_time(
    logs: pd.DataFrame, req_ts: dict[str, Any], fb_ts: dict[str, Any]
) -> pd.DataFrame:
    """``logs`` with the rows of simulated requests moved to their simulated times
    (impressions: the request's; feedback: its own, else the request's); real traffic as is."""
    rids = logs["request_id"].astype(str)
    at_request = rids.map(req_ts)  # simulated request time; NaN/None for real traffic
    at_feedback = logs["event_id"].astype(str).map(fb_ts)
    is_imp_row = logs["event"] == "impression"
    sim_ts = at_request.where(is_imp_row.to_numpy(dtype=bool), at_feedback.fillna(at_request))
    sim = rids.isin(req_ts.keys()).to_numpy(dtype=bool)
    if sim.any():
        new_ts = pd.to_datetime(logs["ts"].astype(object).where(~sim, sim_ts), utc=True)
        logs["ts"] = new_ts.astype(pd.ArrowDtype(pa.timestamp("us", tz="UTC")))
    return logs


def _match_feedback(
    logs: pd.DataFrame,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """``(impressions, matched feedback, quarantined feedback with a reason, served rows)``:
    feedback matches when an impression of its request has the same :data:`MATCH_COLUMNS`;
    served rows = impressions, matched feedback and any other events."""
    is_imp = (logs["event"] == "impression").to_numpy(dtype=bool)
    is_fb = logs["event"].isin(FEEDBACK_EVENTS).to_numpy(dtype=bool)
    imps = logs[is_imp]
    feedback = logs[is_fb]
    known = feedback["request_id"].isin(set(imps["request_id"].astype(str))).to_numpy(dtype=bool)
    key = list(MATCH_COLUMNS)
    shown = imps[key].drop_duplicates().assign(_match=True)
    joined = feedback[key].merge(shown, on=key, how="left")
    matched = joined["_match"].notna().to_numpy(dtype=bool)
    bad = ~matched
    reasons = np.where(known, MISMATCH, UNKNOWN_REQUEST)[bad]
    quarantined = feedback[bad].assign(reason=reasons)
    served = pd.concat([imps, feedback[matched], logs[~is_imp & ~is_fb]], ignore_index=True)
    return imps, feedback[matched], quarantined, served


def _quarantine(settings: Settings, day: dt.date, quarantined: pd.DataFrame) -> Path:
    """Write the unmatched feedback rows (sorted by ``ts, event_id``) to D's served quarantine."""
    qtable = pa.Table.from_pandas(
        quarantined.sort_values(["ts", "event_id"], kind="stable"), preserve_index=False
    )
    qpath = schema.write_partition_atomic(qtable, served_quarantine_dir(settings), day)
    if len(quarantined):
        log.warning("ingest-served %s: %d unmatched feedback rows quarantined in %s",
                    day, len(quarantined), qpath)  # fmt: skip
    return qpath


def _merged(existing: pd.DataFrame, served: pd.DataFrame) -> pa.Table:
    """``existing`` then ``served`` rows, first per ``event_id``, sorted by ``(ts, event_id)``."""
    table = pa.concat_tables([_to_table(existing), _to_table(served)])
    first = ~pd.Series(table.column("event_id").to_numpy(zero_copy_only=False)).duplicated()
    table = table.filter(pa.array(first.to_numpy()))
    return table.sort_by([("ts", "ascending"), ("event_id", "ascending")])


def ingest_served(settings: Settings, date: str | dt.date) -> dict[str, Any]:
    """Write the served rows of day D into ``data/interactions/date=D/`` (module docstring).

    Returns ``date, log_files, impressions, clicks, purchases, unmatched_feedback,
    missing_requests`` (manifest requests with no impression in the log: not flushed yet?),
    ``existing_rows, rows_written, path, quarantine_path`` (``path`` is ``None`` when there was
    nothing served to add) and ``corrupt_files`` (log files that could not be read: quarantined
    with their reason, the rest ingested).
    """
    day = schema.parse_date(date)
    req_ts, fb_ts, others, dates = _manifest_times(read_manifests(settings), day)
    corrupt: list[str] = []
    logs, files = _read_served_log(settings, day, dates, set(req_ts), others, corrupt)
    logs = _to_simulated_time(logs, req_ts, fb_ts)
    imps, matched, quarantined, served = _match_feedback(logs)
    qpath = _quarantine(settings, day, quarantined)
    missing = len(set(req_ts) - set(imps["request_id"].astype(str)))
    if missing:
        log.warning("ingest-served %s: %d manifest requests have no impression in the log "
                    "(not flushed yet?)", day, missing)  # fmt: skip
    existing = _read_folder(
        schema.partition_dir(settings.interactions_dir, day), schema.INTERACTIONS
    )
    out: dict[str, Any] = {
        "date": day.isoformat(),
        "log_files": files,
        "impressions": int(len(imps)),
        "clicks": int((matched["event"] == "click").sum()),
        "purchases": int((matched["event"] == "purchase").sum()),
        "unmatched_feedback": int(len(quarantined)),
        "missing_requests": missing,
        "existing_rows": int(len(existing)),
        "quarantine_path": str(qpath),
        "corrupt_files": corrupt,
        "path": None,
        "rows_written": 0,
    }
    if served.empty:
        log.info("ingest-served %s: nothing served to add", day)
        return out
    table = _merged(existing, served)
    path = schema.write_partition_atomic(table, settings.interactions_dir, day)
    out.update(path=str(path), rows_written=table.num_rows)
    log.info(
        "ingest-served %s: %d impressions, %d clicks, %d purchases, %d unmatched; "
        "%d rows in %s (%d were there)",
        day, out["impressions"], out["clicks"], out["purchases"], out["unmatched_feedback"],
        table.num_rows, path, out["existing_rows"],
    )  # fmt: skip
    return out
