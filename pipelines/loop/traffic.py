"""Closing the loop: simulated users on the live service, and the service's logs as a day's data.

``simulate_traffic(settings, date, base_url)`` replays the simulator's requests of day D
(:func:`pipelines.data.simulate.requests_for_day`) against the running service over real HTTP on
loopback (``POST /recommend``), lets the simulated users respond to the slates they were shown
(:func:`pipelines.data.simulate.respond`: clicks and purchases drawn from the truth) and reports those
outcomes through ``POST /feedback``. The service stamps its log rows with the wall clock; the
simulated times are kept in a *traffic manifest*,
``RECLOOP_HOME/serving/traffic/date=D/part-<run>.parquet`` (columns :data:`MANIFEST_COLUMNS`), one
row per served request (``kind = "request"``) and per logged feedback (``kind = "feedback"``).

``ingest_served(settings, date)`` turns the service's log (``serving/impressions/date=*/``, written
by :mod:`serving.logging` in the INTERACTIONS shape: impressions *and* ``/feedback`` rows) into the
day's partition ``data/interactions/date=D/``:

- rows of requests listed in D's manifest (found in whichever wall-clock log partitions they
  landed in) are moved to their simulated times; rows of ``serving/impressions/date=D/`` whose
  request is in no manifest are real traffic of D and kept as they are; rows of requests that a
  manifest of another day claims are left to that day;
- each click / purchase must match an impression of the same request (same ``request_id``,
  ``item_id``, ``position``, ``arm``, ``model_version``, ``propensity``); the others are counted and
  written to ``quarantine/served/date=D/part-0.parquet`` with a ``reason``, never dropped silently;
- rows already in the partition (e.g. from the simulator's logging policy) are kept; the union is
  de-duplicated by ``event_id`` (first kept), sorted by ``(ts, event_id)`` and written atomically
  as one file, so a rerun writes identical bytes.

The daily DAG then validates the partition through the same gate as any other source.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core import schema
from pipelines.core.settings import Settings

log = logging.getLogger("recloop.loop")

FEEDBACK_EVENTS = ("click", "purchase")
MATCH_COLUMNS = ("request_id", "item_id", "position", "arm", "model_version", "propensity")
MANIFEST = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),  # "request" | "feedback"
        pa.field("request_id", pa.string(), nullable=False),  # the service's request id
        pa.field("event_id", pa.string()),  # the service's logged event id (feedback rows)
        pa.field("sim_request_id", pa.string()),  # the simulator's request id
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),  # simulated time
        pa.field("served_on", pa.date32(), nullable=False),  # wall-clock UTC date of the call
    ]
)
MANIFEST_COLUMNS = tuple(MANIFEST.names)
UNKNOWN_REQUEST = "unknown request_id (no impression of this request in the served log)"
MISMATCH = "no impression of this request with the same item, position, arm, version, propensity"


def traffic_dir(settings: Settings) -> Path:
    """``RECLOOP_HOME/serving/traffic`` (manifest partitions ``date=D`` below it)."""
    return settings.home / "serving" / "traffic"


def served_quarantine_dir(settings: Settings) -> Path:
    """``quarantine/served``: unmatched feedback rows, one ``date=D`` partition per day."""
    return settings.quarantine_dir / "served"


def check_loopback(base_url: str) -> str:
    """``base_url`` without a trailing slash; ``ValueError`` unless it is http(s) on loopback."""
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(f"base_url must be http://HOST:PORT, got {base_url!r}")
    if host != "localhost":
        try:
            loop_ok = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loop_ok = False
        if not loop_ok:
            raise ValueError(f"refusing non-loopback base_url {base_url!r}: loopback only")
    return base_url.rstrip("/")


# --- simulated traffic ---------------------------------------------------------------------------
async def _post_all(
    base_url: str,
    path: str,
    bodies: list[dict[str, Any]],
    concurrency: int,
    timeout_s: float,
    deadline: float,
    desc: str,
) -> list[tuple[int, dict[str, Any] | None, dt.date]]:
    """POST each body; ``(status, json or None, wall-clock UTC date)`` per body, in order.

    Status 0 = transport error, -1 = skipped because the deadline passed."""
    import httpx
    from tqdm import tqdm

    sem = asyncio.Semaphore(concurrency)
    out: list[tuple[int, dict[str, Any] | None, dt.date]] = [(-1, None, dt.date.today())] * len(
        bodies
    )
    bar = tqdm(total=len(bodies), desc=desc, unit="req", leave=False, disable=None)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=timeout_s, limits=limits, trust_env=False
    ) as client:

        async def one(j: int, body: dict[str, Any]) -> None:
            async with sem:
                if time.monotonic() > deadline:
                    bar.update()
                    return
                try:
                    r = await client.post(path, json=body)
                    payload = r.json() if r.headers.get("content-type", "").startswith(
                        "application/json"
                    ) else None  # fmt: skip
                    out[j] = (r.status_code, payload, dt.datetime.now(dt.UTC).date())
                except httpx.HTTPError as exc:
                    log.warning("POST %s failed: %r", path, exc)
                    out[j] = (0, None, dt.datetime.now(dt.UTC).date())
                bar.update()

        await asyncio.gather(*(one(j, b) for j, b in enumerate(bodies)))
    bar.close()
    return out


def simulate_traffic(
    settings: Settings,
    date: str | dt.date,
    base_url: str = "http://127.0.0.1:8000",
    max_requests: int | None = None,
    concurrency: int = 8,
    seed: int = 0,
    k: int = 10,
    timeout_s: float = 10.0,
    deadline_s: float = 600.0,
) -> dict[str, Any]:
    """Send day D's simulated requests to the service, respond as the users, report feedback.

    ``max_requests``: the first N requests of the day (all if ``None``); ``k``: slate size asked;
    ``timeout_s``: per HTTP call; ``deadline_s``: wall-clock budget for the whole run (requests not
    sent by then are counted as ``skipped``). Writes the traffic manifest (module docstring).
    Returns counts: ``requests, served, errors, skipped, degraded, impressions, clicks,
    purchases, ratings_not_reported, feedback_errors``, ``ctr_by_arm`` (reported clicks /
    impressions per arm) and ``manifest`` (path or ``None``).
    """
    from pipelines.data.simulate import load_world, requests_for_day, respond

    url = check_loopback(base_url)
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    day = schema.parse_date(date)
    world = load_world(settings)
    reqs = requests_for_day(world, day)
    if max_requests is not None:
        reqs = reqs.head(int(max_requests))
    deadline = time.monotonic() + deadline_s
    bodies = [{"user_id": u, "k": k} for u in reqs["user_id"]]
    served = asyncio.run(
        _post_all(url, "/recommend", bodies, concurrency, timeout_s, deadline, f"{day} recommend")
    )
    ok = [j for j, (status, body, _) in enumerate(served) if status == 200 and body]
    ok = [j for j in ok if served[j][1]["items"]]
    counts: dict[str, Any] = {
        "date": day.isoformat(),
        "requests": len(reqs),
        "served": len(ok),
        "errors": sum(1 for s, _, _ in served if s not in (200, -1)),
        "skipped": sum(1 for s, _, _ in served if s == -1),
        "degraded": sum(1 for j in ok if served[j][1]["degraded"]),
    }
    manifest: list[dict[str, Any]] = []
    per_arm_imps: dict[str, int] = {}
    per_arm_clicks: dict[str, int] = {}
    for j in ok:
        body, on = served[j][1], served[j][2]
        manifest.append(
            {"kind": "request", "request_id": body["request_id"], "event_id": None,
             "sim_request_id": reqs["request_id"].iat[j], "user_id": body["user_id"],
             "ts": reqs["ts"].iat[j], "served_on": on}
        )  # fmt: skip
        per_arm_imps[body["arm"]] = per_arm_imps.get(body["arm"], 0) + len(body["items"])
    counts["impressions"] = sum(per_arm_imps.values())
    feedback = pd.DataFrame(columns=["request_id", "item_id", "event", "value", "ts"])
    if ok:
        resp = respond(
            world,
            [served[j][1]["user_id"] for j in ok],
            [[x["item_id"] for x in served[j][1]["items"]] for j in ok],
            day,
            seed,
            request_ids=[served[j][1]["request_id"] for j in ok],
            ts=reqs["ts"].iloc[ok].reset_index(drop=True),
            propensities=[[x["propensity"] for x in served[j][1]["items"]] for j in ok],
        )
        ev = resp.events
        feedback = ev[ev["event"].isin(FEEDBACK_EVENTS)].reset_index(drop=True)
        counts["ratings_not_reported"] = int((ev["event"] == "rating").sum())
    else:
        counts["ratings_not_reported"] = 0
    fb_bodies = [
        {"request_id": r.request_id, "item_id": r.item_id, "event": r.event, "value": r.value}
        for r in feedback.itertuples(index=False)
    ]
    answers = asyncio.run(
        _post_all(url, "/feedback", fb_bodies, concurrency, timeout_s, deadline, f"{day} feedback")
    )
    arm_of = {served[j][1]["request_id"]: served[j][1]["arm"] for j in ok}
    sim_of = {m["request_id"]: m["sim_request_id"] for m in manifest}
    n_click = n_buy = fb_errors = 0
    for r, (status, body, on) in zip(feedback.itertuples(index=False), answers, strict=True):
        if status != 200 or not body:
            fb_errors += 1
            continue
        manifest.append(
            {"kind": "feedback", "request_id": r.request_id, "event_id": body["logged"],
             "sim_request_id": sim_of[r.request_id], "user_id": r.user_id, "ts": r.ts,
             "served_on": on}
        )  # fmt: skip
        if r.event == "click":
            n_click += 1
            arm = arm_of[r.request_id]
            per_arm_clicks[arm] = per_arm_clicks.get(arm, 0) + 1
        else:
            n_buy += 1
    counts.update(clicks=n_click, purchases=n_buy, feedback_errors=fb_errors)
    counts["ctr_by_arm"] = {
        arm: per_arm_clicks.get(arm, 0) / n for arm, n in sorted(per_arm_imps.items()) if n
    }
    counts["manifest"] = None
    if manifest:
        frame = pd.DataFrame(manifest, columns=list(MANIFEST_COLUMNS))
        table = schema.conform(frame, MANIFEST)
        name = (
            f"part-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}.parquet"
        )
        path = schema.write_table_atomic(
            table, schema.partition_dir(traffic_dir(settings), day) / name
        )
        counts["manifest"] = str(path)
    log.info(
        "simulated traffic %s: %d/%d requests served (%d errors, %d degraded), %d impressions, "
        "%d clicks, %d purchases, ctr by arm %s",
        day, counts["served"], counts["requests"], counts["errors"], counts["degraded"],
        counts["impressions"], n_click, n_buy, counts["ctr_by_arm"],
    )  # fmt: skip
    return counts


# --- ingest what was served ----------------------------------------------------------------------
def _read_folder(folder: Path, columns_schema: pa.Schema) -> pd.DataFrame:
    """Every ``*.parquet`` of ``folder`` (sorted by name), cast to ``columns_schema``, as pandas
    with nullable dtypes; empty frame when there are none."""
    files = sorted(folder.glob("*.parquet")) if folder.exists() else []
    tables = []
    for f in files:
        try:
            t = pq.read_table(f)
            tables.append(t.select(columns_schema.names).cast(columns_schema))
        except (pa.ArrowInvalid, KeyError, ValueError) as exc:
            raise ValueError(
                f"{f}: not a readable {columns_schema.names} parquet file: {exc}"
            ) from exc
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


def ingest_served(settings: Settings, date: str | dt.date) -> dict[str, Any]:
    """Write the served rows of day D into ``data/interactions/date=D/`` (module docstring).

    Returns ``date, log_files, impressions, clicks, purchases, unmatched_feedback,
    missing_requests`` (manifest requests with no impression in the log: not flushed yet?),
    ``existing_rows, rows_written, path, quarantine_path`` (``path`` is ``None`` when there was
    nothing served to add).
    """
    from serving.logging import impressions_dir

    day = schema.parse_date(date)
    manifests = read_manifests(settings)
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
    root = impressions_dir(settings.home)
    parts, files = [], 0
    for d in sorted(dates):
        folder = schema.partition_dir(root, d)
        files += len(list(folder.glob("*.parquet"))) if folder.exists() else 0
        f = _read_folder(folder, schema.INTERACTIONS)
        rid = f["request_id"].astype(str)
        keep = rid.isin(req_ts.keys())
        if d == day:  # real traffic of D: requests no manifest claims
            keep |= ~rid.isin(others) & ~rid.isin(req_ts.keys()) & ~f["request_id"].isna()
        parts.append(f[keep.fillna(False).to_numpy(dtype=bool)])
    logs = pd.concat(parts, ignore_index=True)
    logs = logs[~logs["event_id"].duplicated()].reset_index(drop=True)
    rids = logs["request_id"].astype(str)
    at_request = rids.map(req_ts)  # simulated request time; NaN/None for real traffic
    at_feedback = logs["event_id"].astype(str).map(fb_ts)
    is_imp_row = logs["event"] == "impression"
    sim_ts = at_request.where(is_imp_row.to_numpy(dtype=bool), at_feedback.fillna(at_request))
    sim = rids.isin(req_ts.keys()).to_numpy(dtype=bool)
    if sim.any():
        new_ts = pd.to_datetime(logs["ts"].astype(object).where(~sim, sim_ts), utc=True)
        logs["ts"] = new_ts.astype(pd.ArrowDtype(pa.timestamp("us", tz="UTC")))

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

    qtable = pa.Table.from_pandas(
        quarantined.sort_values(["ts", "event_id"], kind="stable"), preserve_index=False
    )
    qpath = schema.write_partition_atomic(qtable, served_quarantine_dir(settings), day)
    if len(quarantined):
        log.warning("ingest-served %s: %d unmatched feedback rows quarantined in %s",
                    day, len(quarantined), qpath)  # fmt: skip
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
        "clicks": int((feedback[matched]["event"] == "click").sum()),
        "purchases": int((feedback[matched]["event"] == "purchase").sum()),
        "unmatched_feedback": int(len(quarantined)),
        "missing_requests": missing,
        "existing_rows": int(len(existing)),
        "quarantine_path": str(qpath),
        "path": None,
        "rows_written": 0,
    }
    if served.empty:
        log.info("ingest-served %s: nothing served to add", day)
        return out
    table = pa.concat_tables([_to_table(existing), _to_table(served)])
    first = ~pd.Series(table.column("event_id").to_numpy(zero_copy_only=False)).duplicated()
    table = table.filter(pa.array(first.to_numpy()))
    table = table.sort_by([("ts", "ascending"), ("event_id", "ascending")])
    path = schema.write_partition_atomic(table, settings.interactions_dir, day)
    out.update(path=str(path), rows_written=table.num_rows)
    log.info(
        "ingest-served %s: %d impressions, %d clicks, %d purchases, %d unmatched; "
        "%d rows in %s (%d were there)",
        day, out["impressions"], out["clicks"], out["purchases"], out["unmatched_feedback"],
        table.num_rows, path, out["existing_rows"],
    )  # fmt: skip
    return out
