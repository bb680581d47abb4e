"""One screen on a workspace: how far each stage got, the DAG runs, the registry, the experiment,
the service, and the next thing an operator should do (``recloop status``).

:func:`collect` returns a JSON-able dict (the ``--json`` document); :func:`format_status` renders
it as text. The keys:

- ``home``: the workspace; ``stages``: {stage: the last logical date ``YYYY-MM-DD`` it reached, or
  None} for ``raw`` (logs present), ``validated``, ``features``, ``materialized`` (Redis'
  materialization marker, :data:`pipelines.features.online.MARKER_KEY`), ``trained`` (the
  two-tower, which every bundle needs), ``registered`` (the newest serving bundle's logical
  date) and ``gated``; ``pending``: raw dates not yet validated; ``notes``: {stage: why a value
  is unknown}; ``models``: {model: last date trained};
- ``dag_runs``: the latest run of each DAG in Airflow's metadata database (``dag_id``,
  ``run_id``, ``logical_date``, ``state``, ``start_date``, ``end_date``, ``failed_tasks``);
- ``registry``: ``champion`` / ``challenger``: {``version``, ``logical_date``, ``gate``: the
  newest gate decision that judged that version: ``date``, ``action``, ``numbers`` {gate:
  {candidate, champion, verdict}}} or None; ``latest_bundle``: {``version``, ``logical_date``};
- ``experiment``: the running A/B experiment (champion vs challenger): ``name``, ``date`` and
  ``day`` of its latest decision, ``impressions`` {arm: n}, ``p_value``, ``action``,
  ``reason``, ``next`` (when a decision can come at the current traffic) — None when no
  challenger;
- ``service``: {``url``, ``ready`` (bool), ``detail``}; ``quarantine_rows``: rows under
  ``quarantine/`` (all partitions, served feedback included); ``next``: one line.

Fast by design (``recloop status`` answers in well under 2 s): files are read through their one
reader in ``pipelines.core``; Airflow's and MLflow's SQLite databases are queried read-only with
``sqlite3`` (importing Airflow's ORM costs ~2 s of CPU, MLflow's client ~1.5 s); only a non-SQLite
``RECLOOP_MLFLOW_URI`` goes through :mod:`pipelines.release.registry`. Redis and the service get
short timeouts; a part that cannot be read is reported in ``notes``, never raised.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.core import fmt, layout, schema
from pipelines.core.ab_decisions import ab_decision_dates, read_ab_decision
from pipelines.core.gate_decisions import gate_decision_dates, read_gate_decision
from pipelines.core.settings import Settings
from pipelines.core.validated import validated_dates

log = logging.getLogger(__name__)

MODELS = ("mf", "two_tower", "ranker", "popular", "itemknn")
"""Models the daily DAG trains (``artifacts/models/<name>/date=D``)."""
BUNDLE = "serving_bundle"
"""The registered model of serving bundles (as ``pipelines.release.registry.BUNDLE``)."""
SERVICE_TIMEOUT_S = 0.5
"""Seconds the service's ``/health/ready`` gets to answer."""


def _last(dates: list[dt.date]) -> str | None:
    return dates[-1].isoformat() if dates else None


@contextlib.contextmanager
def read_only_db(path: Path) -> Iterator[sqlite3.Connection]:
    """A read-only ``sqlite3`` connection to ``path`` (never creates it; 1 s busy timeout)."""
    con = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=1.0)
    try:
        yield con
    finally:
        con.close()


# --- stages -------------------------------------------------------------------------------


def materialized_date(settings: Settings) -> tuple[str | None, str | None, str | None]:
    """``(date, note, partial)`` from one Redis round trip: the materialization marker (None with
    why in ``note`` when Redis is unreachable) and what a materialization under way, or one that
    failed part way, left (:data:`pipelines.features.online.PARTIAL_KEY`: a mix of days) as a
    sentence (None when there is none)."""
    from pipelines.features import online

    try:
        with online.connection_errors(settings.redis_url):
            raw, partial = online.read_marker(online.redis_client(settings))
    except ConnectionError as exc:
        return None, str(exc), None
    sentence = None
    if partial:
        day, _, since = partial.decode().partition(" ")
        sentence = (
            f"materialization of {day} under way or failed part way (since {since}): Redis holds "
            f"a mix of days; if it failed, rerun `recloop features materialize --date {day}`"
        )
    return (raw.decode() if raw else None), None, sentence


def materializing(settings: Settings) -> str | None:
    """The ``partial`` sentence of :func:`materialized_date`."""
    return materialized_date(settings)[2]


def stage_dates(settings: Settings) -> dict[str, Any]:
    """``{"stages", "pending", "models", "notes"}`` (module docstring) from the workspace files."""
    raw = schema.partition_dates(settings.interactions_dir)
    validated = validated_dates(settings)
    features = sorted(
        set(schema.partition_dates(layout.feature_table_dir(settings, "user")))
        & set(schema.partition_dates(layout.feature_table_dir(settings, "item")))
    )
    models = {m: _last(schema.partition_dates(layout.models_dir(settings, m))) for m in MODELS}
    materialized, note, partial = materialized_date(settings)
    stages = {
        "raw": _last(raw),
        "validated": _last(validated),
        "features": _last(features),
        "materialized": materialized,
        "trained": models["two_tower"],
        "registered": None,
        "gated": _last(gate_decision_dates(settings)),
    }
    pending = [d.isoformat() for d in sorted(set(raw) - set(validated))]
    notes = {"materialized": note} if note else {}
    if partial:
        notes["materializing"] = partial
    return {"stages": stages, "pending": pending, "models": models, "notes": notes}


# --- registry -----------------------------------------------------------------------------


def _sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI, None for any other URI."""
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _bundles_sqlite(path: Path) -> dict[str, Any]:
    """Aliases and the newest serving bundle straight from MLflow's SQLite tables."""
    with read_only_db(path) as con:
        aliases = dict(
            con.execute(
                "SELECT alias, version FROM registered_model_aliases WHERE name = ?", (BUNDLE,)
            ).fetchall()
        )
        dates = dict(
            con.execute(
                "SELECT version, value FROM model_version_tags WHERE name = ? "
                "AND key = 'logical_date'",
                (BUNDLE,),
            ).fetchall()
        )
        (latest,) = con.execute(
            "SELECT max(version) FROM model_versions WHERE name = ?", (BUNDLE,)
        ).fetchone()
    return {
        "aliases": {a: str(v) for a, v in aliases.items()},
        "dates": {str(v): d for v, d in dates.items()},
        "latest": None if latest is None else str(latest),
    }


def _bundles_client(settings: Settings) -> dict[str, Any]:
    """Same as :func:`_bundles_sqlite` through the MLflow client (a remote registry)."""
    from pipelines.release import registry

    versions = registry.find_versions(settings, BUNDLE)
    aliases = {a: registry.get_alias(settings, a) for a in registry.ALIASES}
    return {
        "aliases": {a: v for a, v in aliases.items() if v is not None},
        "dates": {str(v.version): (v.tags or {}).get("logical_date") for v in versions},
        "latest": max((str(v.version) for v in versions), key=int, default=None),
    }


def gate_numbers(settings: Settings, version: str) -> dict[str, Any] | None:
    """The newest gate decision whose candidate was bundle ``version``: ``{date, action,
    numbers: {gate: {candidate, champion, verdict}}}``; None when no gate judged it."""
    for day in reversed(gate_decision_dates(settings)):
        rec = read_gate_decision(settings, day)
        if rec and str(rec.get("candidate_version")) == version:
            numbers = {
                g["name"]: {k: g.get(k) for k in ("candidate", "champion", "verdict")}
                for g in rec.get("gates") or []
            }
            return {"date": rec["date"], "action": rec.get("action"), "numbers": numbers}
    return None


def registry_status(settings: Settings) -> tuple[dict[str, Any], str | None]:
    """``(registry dict, note)``: champion, challenger (with gate numbers), latest bundle."""
    path = _sqlite_path(settings.mlflow_uri)
    empty = {"champion": None, "challenger": None, "latest_bundle": None}
    try:
        if path is not None and not path.exists():
            return empty, None
        found = _bundles_sqlite(path) if path is not None else _bundles_client(settings)
    except (sqlite3.Error, OSError) as exc:
        return empty, f"MLflow registry at {settings.mlflow_uri} unreadable: {exc}"
    out: dict[str, Any] = {}
    for alias in ("champion", "challenger"):
        v = found["aliases"].get(alias)
        out[alias] = None
        if v is not None:
            gate = gate_numbers(settings, v)
            out[alias] = {"version": v, "logical_date": found["dates"].get(v), "gate": gate}
    latest = found["latest"]
    out["latest_bundle"] = (
        None if latest is None else {"version": latest, "logical_date": found["dates"].get(latest)}
    )
    return out, None


# --- DAG runs, experiment, service, quarantine --------------------------------------------


def dag_runs(settings: Settings) -> tuple[list[dict[str, Any]], str | None]:
    """``(runs, note)``: the latest run of each DAG in ``airflow/airflow.db`` (read-only), with
    the tasks of that run that failed; ``[]`` when Airflow never ran in this workspace."""
    path = layout.airflow_db_path(settings)
    if not path.exists():
        return [], None
    cols = ("dag_id", "run_id", "logical_date", "state", "start_date", "end_date")
    try:
        with read_only_db(path) as con:
            rows = con.execute(
                f"SELECT {', '.join(cols)} FROM dag_run WHERE id IN "
                "(SELECT max(id) FROM dag_run GROUP BY dag_id) ORDER BY dag_id"
            ).fetchall()
            runs = [dict(zip(cols, r, strict=True)) for r in rows]
            for run in runs:
                run["failed_tasks"] = [
                    t
                    for (t,) in con.execute(
                        "SELECT task_id FROM task_instance WHERE dag_id = ? AND run_id = ? "
                        "AND state IN ('failed', 'upstream_failed') ORDER BY task_id",
                        (run["dag_id"], run["run_id"]),
                    )
                ]
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # created, not migrated yet: no runs
            return [], None
        return [], f"Airflow metadata {path} unreadable: {exc}"
    except sqlite3.Error as exc:
        return [], f"Airflow metadata {path} unreadable: {exc}"
    return runs, None


def experiment_status(settings: Settings, champion: str, challenger: str) -> dict[str, Any]:
    """The experiment ``<champion>-vs-<challenger>``: its latest decision summarized, with
    ``next`` estimating when a decision can come (module docstring)."""
    name = f"{champion}-vs-{challenger}"
    dates = ab_decision_dates(settings, name)
    rec = read_ab_decision(settings, name, dates[-1]) if dates else None
    if rec is None:
        return {"name": name, "date": None, "day": 0, "impressions": {}, "p_value": None,
                "action": None, "reason": "not analysed yet",
                "next": "the A/B DAG analyses it after the next validated day"}  # fmt: skip
    impressions = {a["arm"]: int(a.get("impressions") or 0) for a in rec.get("arms") or []}
    return {
        "name": name,
        "date": rec["date"],
        "day": int(rec.get("day") or 0),
        "impressions": impressions,
        "p_value": (rec.get("diff") or {}).get("p_value"),
        "action": rec.get("action"),
        "reason": rec.get("reason"),
        "next": experiment_next(rec, impressions),
    }


def experiment_next(rec: dict[str, Any], impressions: dict[str, int]) -> str:
    """When the experiment of decision ``rec`` can be decided, at the traffic seen so far."""
    cfg = rec.get("config") or {}
    day, max_days = int(rec.get("day") or 0), int(cfg.get("max_days") or 14)
    left = max(max_days - day, 0)
    if rec.get("action") in ("promote", "rollback", "stop"):
        return f"decided: {rec['action']} on {rec['date']}"
    if day == 0:
        return "waiting for challenger traffic: the next day the service logs with both arms"
    need = int(cfg.get("min_impressions") or 0)
    fewest = min(impressions.values(), default=0)
    if fewest < need:
        if fewest == 0:
            return f"no traffic in one arm yet; stops after {left} more day(s)"
        days = math.ceil((need - fewest) / (fewest / day))
        if days <= left:
            return (
                f"{days} more day(s) at current traffic to {need} impressions per arm "
                f"(fewest: {fewest})"
            )
        return (
            f"too little traffic for {need} per arm before day {max_days}: stops in {left} day(s)"
        )
    return f"decides when significant; stops after {left} more day(s) at most"


def service_health(url: str, timeout_s: float = SERVICE_TIMEOUT_S) -> dict[str, Any]:
    """``{"url", "ready", "detail"}`` from ``GET url`` (``/health/ready``) within ``timeout_s``."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (loopback URL)
            return {"url": url, "ready": resp.status == 200, "detail": f"HTTP {resp.status}"}
    except urllib.error.HTTPError as exc:
        return {"url": url, "ready": False, "detail": f"HTTP {exc.code}"}
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return {"url": url, "ready": False, "detail": f"not running ({reason})"}


def quarantine_rows(settings: Settings) -> int:
    """Rows of every quarantined partition (``quarantine/date=D/`` and
    ``quarantine/served/date=D/``), from the parquet footers."""
    import pyarrow.parquet as pq

    roots = (settings.quarantine_dir, layout.served_quarantine_dir(settings))
    files = [
        f
        for root in roots
        for d in schema.partition_dates(root)
        for f in sorted(schema.partition_dir(root, d).glob("*.parquet"))
    ]
    return sum(pq.read_metadata(f).num_rows for f in files)


# --- the whole screen ---------------------------------------------------------------------


def next_step(status: dict[str, Any]) -> str:
    """The one thing an operator should do next, from a :func:`collect` document."""
    stages, reg = status["stages"], status["registry"]
    if stages["raw"] is None and stages["validated"] is None:
        return ("no logs yet: run recloop demo (the simulated loop), recloop simulate --days N, "
                "or recloop ingest movielens|table PATH")  # fmt: skip
    for run in status["dag_runs"]:
        if run["state"] == "failed":
            where = ", ".join(run["failed_tasks"]) or "a task"
            return (f"{run['dag_id']} run {run['run_id']} failed at {where}: read the task log "
                    "in the Airflow UI (recloop airflow), fix the cause, then clear the task")  # fmt: skip
    if status["pending"]:
        day, more = status["pending"][0], len(status["pending"]) - 1
        after = f" ({more} more raw day(s) after it)" if more else ""
        return (f"validate {day}: raw logs present, not validated{after}: recloop run --date "
                f"{day} (or recloop backfill --start {day} --end {status['pending'][-1]})")  # fmt: skip
    validated, features = stages["validated"], stages["features"]
    if validated and (features is None or features < validated):
        return f"features {validated}: validated, no feature tables yet: recloop run --date {validated}"
    if reg["champion"] is None:
        return _no_champion(status)
    exp = status["experiment"]
    if exp is not None and exp["action"] not in ("promote", "rollback", "stop"):
        return f"a challenger is under test ({exp['name']}): {exp['next']}"
    if "materializing" in status["notes"]:
        return status["notes"]["materializing"]
    if "materialized" not in status["notes"] and (
        stages["materialized"] is None or stages["materialized"] < (features or "")
    ):
        return f"materialize {features} into Redis: recloop features materialize --date {features}"
    if not status["service"]["ready"]:
        return f"serve the champion (bundle {reg['champion']['version']}): recloop serve"
    day = dt.date.fromisoformat(validated) + dt.timedelta(days=1)
    return f"up to date through {validated}: recloop run --date {day} once its logs arrive"


def _no_champion(status: dict[str, Any]) -> str:
    """``next`` without a champion: what the last gate said, or how to train one."""
    gated = status["stages"]["gated"]
    last = status.get("last_gate")
    if gated and last and last.get("action") == "rejected":
        return (f"no champion: the gate of {gated} rejected ({last.get('reason')}); "
                "recloop gates --date " + gated + " shows why, recloop run --date D trains again")  # fmt: skip
    return ("no champion: run recloop backfill --start D1 --end D2 (a history) or recloop run "
            "--date D (one day) to train, register and gate a bundle")  # fmt: skip


def collect(settings: Settings, serve_url: str) -> dict[str, Any]:
    """Everything ``recloop status`` shows, as the JSON-able dict the module docstring lists;
    ``serve_url``: the service's readiness URL. Never raises for an unreadable part (``notes``)."""
    t0 = time.perf_counter()
    status: dict[str, Any] = {"home": str(settings.home), **stage_dates(settings)}
    registry, note = registry_status(settings)
    if note:
        status["notes"]["registry"] = note
    latest = registry["latest_bundle"]
    status["stages"]["registered"] = latest["logical_date"] if latest else None
    status["registry"] = registry
    gated = status["stages"]["gated"]
    last = read_gate_decision(settings, gated) if gated else None
    status["last_gate"] = (
        {k: last.get(k) for k in ("date", "action", "reason", "candidate_version")}
        if last
        else None
    )
    status["dag_runs"], note = dag_runs(settings)
    if note:
        status["notes"]["airflow"] = note
    champ, chall = registry["champion"], registry["challenger"]
    status["experiment"] = (
        experiment_status(settings, champ["version"], chall["version"])
        if champ and chall and champ["version"] != chall["version"]
        else None
    )
    status["service"] = service_health(serve_url)
    status["quarantine_rows"] = quarantine_rows(settings)
    status["next"] = next_step(status)
    status["seconds"] = round(time.perf_counter() - t0, 3)
    return status


def _bundle_line(alias: str, entry: dict[str, Any] | None) -> str:
    """``champion    bundle 3 (trained through D), gate D: action; ndcg@10 0.21 vs 0.20 pass``."""
    if entry is None:
        return f"  {alias:<11} none"
    text = (
        f"  {alias:<11} bundle {entry['version']} (trained through {entry['logical_date'] or '?'})"
    )
    gate = entry["gate"]
    if gate is None:
        return text + ", no gate decision"
    numbers = "; ".join(
        f"{name} {fmt.number(n['candidate'], '.4g')} vs {fmt.number(n['champion'], '.4g')} "
        f"{n['verdict']}"
        for name, n in gate["numbers"].items()
        if name != "validation"
    )
    return f"{text}, gate {gate['date']}: {gate['action']}" + (f"; {numbers}" if numbers else "")


def format_status(status: dict[str, Any]) -> str:
    """The text screen of a :func:`collect` document."""
    st, notes = status["stages"], status["notes"]
    lines = [f"recloop status: {status['home']}", "last logical date per stage:"]
    extra = {
        "raw": f"{len(status['pending'])} day(s) not validated" if status["pending"] else "",
        "materialized": notes.get("materialized")
        or (
            "Redis marker; " + notes["materializing"]
            if "materializing" in notes
            else "Redis marker"
        ),
        "trained": ", ".join(f"{m} {d or '-'}" for m, d in status["models"].items()),
        "registered": (
            f"bundle {status['registry']['latest_bundle']['version']}"
            if status["registry"]["latest_bundle"]
            else notes.get("registry", "")
        ),
        "gated": (status.get("last_gate") or {}).get("action") or "",
    }
    for stage, day in st.items():
        lines.append(f"  {stage:<13}{day or '-':<12}{extra.get(stage, '')}".rstrip())
    runs = status["dag_runs"]
    lines.append("DAG runs (latest per DAG):" if runs else
                 "DAG runs: " + notes.get("airflow", "none in Airflow's metadata (inline or none)"))  # fmt: skip
    for r in runs:
        failed = f" failed: {', '.join(r['failed_tasks'])}" if r["failed_tasks"] else ""
        lines.append(f"  {r['dag_id']:<14}{r['logical_date'] or '-'}  {r['state']}{failed}")
    lines.append("registry (serving_bundle aliases):")
    for alias in ("champion", "challenger"):
        lines.append(_bundle_line(alias, status["registry"][alias]))
    exp = status["experiment"]
    if exp is not None:
        arms = ", ".join(f"{a} {n:,}" for a, n in exp["impressions"].items()) or "-"
        lines.append(
            f"experiment {exp['name']}: day {exp['day']} ({exp['date'] or '-'}), impressions "
            f"{arms}, p {fmt.number(exp['p_value'], '.3g')}, {exp['action'] or '-'}: "
            f"{exp['reason']}"
        )
        lines.append(f"  next decision: {exp['next']}")
    svc = status["service"]
    lines.append(
        f"service: {svc['url']}: {'ready' if svc['ready'] else 'not ready'} ({svc['detail']})"
    )
    lines.append(f"quarantine: {status['quarantine_rows']:,} row(s)")
    lines.append(f"next: {status['next']}")
    return "\n".join(lines)
