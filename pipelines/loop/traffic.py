"""Simulated users on the live service (``recloop simulate-traffic``, a step of the closed loop).

``simulate_traffic(settings, date, base_url)`` replays the simulator's requests of day D
(:func:`pipelines.data.simulate.requests_for_day`) against the running service over real HTTP on
loopback (``POST /recommend``), lets the simulated users respond to the slates they were shown
(:func:`pipelines.data.simulate.respond`: clicks and purchases drawn from the truth) and reports those
outcomes through ``POST /feedback``. The service stamps its log rows with the wall clock; the
simulated times are kept in a *traffic manifest*,
``RECLOOP_HOME/serving/traffic/date=D/part-<run>.parquet`` (columns :data:`MANIFEST_COLUMNS`), one
row per served request (``kind = "request"``) and per logged feedback (``kind = "feedback"``).

:mod:`pipelines.loop.served` then turns the service's log into the day's data, at the simulated
times the manifest records.
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

import pandas as pd
import pyarrow as pa

from pipelines.core import layout, schema
from pipelines.core.settings import Settings

log = logging.getLogger("recloop.loop")

FEEDBACK_EVENTS = ("click", "purchase")
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


def traffic_dir(settings: Settings) -> Path:
    """``RECLOOP_HOME/serving/traffic`` (manifest partitions ``date=D`` below it)."""
    return layout.traffic_dir(settings)


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


Served = list[tuple[int, dict[str, Any] | None, dt.date]]
"""What :func:`_post_all` answers: ``(status, json body or None, wall-clock UTC date)`` per call."""


def _request_rows(reqs: pd.DataFrame, served: Served, ok: list[int]) -> tuple[list[dict], dict]:
    """Manifest rows of the served requests ``ok`` (indices into ``reqs`` and ``served``) and the
    number of impressions per arm."""
    manifest: list[dict[str, Any]] = []
    per_arm_imps: dict[str, int] = {}
    for j in ok:
        body, on = served[j][1], served[j][2]
        manifest.append(
            {"kind": "request", "request_id": body["request_id"], "event_id": None,
             "sim_request_id": reqs["request_id"].iat[j], "user_id": body["user_id"],
             "ts": reqs["ts"].iat[j], "served_on": on}
        )  # fmt: skip
        per_arm_imps[body["arm"]] = per_arm_imps.get(body["arm"], 0) + len(body["items"])
    return manifest, per_arm_imps


def _respond(
    world: Any, reqs: pd.DataFrame, served: Served, ok: list[int], day: dt.date, seed: int
) -> tuple[pd.DataFrame, int]:
    """The simulated users' clicks and purchases on the slates they were shown (rows of
    :func:`pipelines.data.simulate.respond`'s events, at the requests' simulated times), and how
    many ratings they gave (not reported: ``/feedback`` takes clicks and purchases)."""
    from pipelines.data.simulate import respond

    if not ok:
        return pd.DataFrame(columns=["request_id", "item_id", "event", "value", "ts"]), 0
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
    return feedback, int((ev["event"] == "rating").sum())


def _feedback_rows(
    feedback: pd.DataFrame, answers: Served, arm_of: dict[str, str], sim_of: dict[str, str]
) -> tuple[list[dict], dict[str, int], dict[str, int]]:
    """Manifest rows of the feedback the service logged, counts (``clicks``, ``purchases``,
    ``feedback_errors``) and reported clicks per arm. ``arm_of`` / ``sim_of``: the service's
    request id → arm / simulator's request id."""
    manifest: list[dict[str, Any]] = []
    per_arm_clicks: dict[str, int] = {}
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
    return (
        manifest,
        dict(clicks=n_click, purchases=n_buy, feedback_errors=fb_errors),
        per_arm_clicks,
    )


def _write_manifest(settings: Settings, day: dt.date, manifest: list[dict]) -> Path:
    """One new ``part-<time>-<random>.parquet`` of day ``day``'s manifest partition."""
    frame = pd.DataFrame(manifest, columns=list(MANIFEST_COLUMNS))
    table = schema.conform(frame, MANIFEST)
    name = f"part-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:8]}.parquet"
    return schema.write_table_atomic(table, schema.partition_dir(traffic_dir(settings), day) / name)


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
    from pipelines.data.simulate import load_world, requests_for_day

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
    manifest, per_arm_imps = _request_rows(reqs, served, ok)
    counts["impressions"] = sum(per_arm_imps.values())
    feedback, counts["ratings_not_reported"] = _respond(world, reqs, served, ok, day, seed)
    fb_bodies = [
        {"request_id": r.request_id, "item_id": r.item_id, "event": r.event, "value": r.value}
        for r in feedback.itertuples(index=False)
    ]
    answers = asyncio.run(
        _post_all(url, "/feedback", fb_bodies, concurrency, timeout_s, deadline, f"{day} feedback")
    )
    arm_of = {served[j][1]["request_id"]: served[j][1]["arm"] for j in ok}
    sim_of = {m["request_id"]: m["sim_request_id"] for m in manifest}
    fb_manifest, fb_counts, per_arm_clicks = _feedback_rows(feedback, answers, arm_of, sim_of)
    manifest += fb_manifest
    counts.update(fb_counts)
    counts["ctr_by_arm"] = {
        arm: per_arm_clicks.get(arm, 0) / n for arm, n in sorted(per_arm_imps.items()) if n
    }
    counts["manifest"] = str(_write_manifest(settings, day, manifest)) if manifest else None
    log.info(
        "simulated traffic %s: %d/%d requests served (%d errors, %d degraded), %d impressions, "
        "%d clicks, %d purchases, ctr by arm %s",
        day, counts["served"], counts["requests"], counts["errors"], counts["degraded"],
        counts["impressions"], counts["clicks"], counts["purchases"], counts["ctr_by_arm"],
    )  # fmt: skip
    return counts
