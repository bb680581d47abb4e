"""The whole loop, day by day: logs → daily DAG → service → simulated users → A/B DAG → next day.

``run_loop(settings, LoopConfig(...))`` drives a simulated world through the platform the way it
runs in production, one logical date at a time:

1. **the day's logs.** Until a ``champion`` bundle exists, the simulator's logging policy writes
   day D (``source = "logging_policy"``). From then on the platform's own service writes it
   (``source = "service"``): the service (``recloop serve``, a separate process on loopback, with
   an admin token the loop generates) is started or told to re-read the registry aliases
   (``POST /admin/reload``: champion and challenger hot-swap), the simulator's users of day D are
   sent to it over HTTP and respond to what they are shown (:func:`pipelines.loop.traffic.simulate_traffic`),
   and the service's impression and feedback logs become D's partition
   (:func:`pipelines.loop.served.ingest_served`); D's user and item attribute tables are written from
   the world (the product database of a real deployment).
2. **the daily DAG** for D (validate → features → train → index → ranker → register → gate;
   fit_linucb refits the LinUCB explorer's state on D's logs): the
   gate makes the newest passing bundle the ``challenger`` (one experiment at a time).
3. **the A/B DAG** for D: the running experiment (champion vs challenger arms of the service) is
   analysed on the validated logs; it may promote the challenger (the service serves it from
   the next day), roll it back or keep collecting.

``runner = "airflow"`` runs both DAGs through Airflow (``airflow dags test``, as ``recloop run``
does); ``"inline"`` calls the same task functions in-process in the DAG's order (tests).

**Progress and restarts.** After every phase the day's record in ``reports/loop/days.json``
(format below) is rewritten atomically with the phases done. A rerun of the loop on the same
workspace skips what is done and resumes at the first phase not done: stopping the loop (and
the service it started) mid-experiment and starting it again continues the experiment from its
logged state. The traffic phase is recognised as done by its traffic manifest
(``serving/traffic/date=D/``), so a day's users are never sent twice; a traffic run killed
half-way leaves no manifest, and its orphan rows (in the service log's wall-clock partitions)
are claimed by no simulated day. Ingest, the DAGs and the A/B analysis are idempotent.

Each day record::

    {"date", "source", "phases": [...], "seconds": {phase: s, ..., "total": s},
     "traffic": simulate_traffic counts | null, "ingest": ingest_served counts | null,
     "dag": {"recloop_daily": state, "recloop_ab": state},
     "aliases_before", "aliases_after": {"champion": v, "challenger": v},
     "bundles": {arm: {"version", "kind", "trained_through", "ranker"}} (what served D),
     "gate": {"candidate_version", "action", "kind", "reason"} | null,
     "ab": {"experiment", "action", "reason"} | null,
     "served": {arm: {"impressions", "clicks", "ctr", "true_ctr", "versions"}} | null}

``served.true_ctr`` is the mean true click probability of the impressions the arm showed (the
simulator's truth, so whether an A/B decision was right can be checked). ``bundles`` names the
bundle each alias pointed at when D's traffic was served, its ``kind`` as the gate recorded it
(``refresh``: the champion's configuration retrained, which replaced it; ``change``: a new
configuration, A/B tested; ``first``: the first champion), the day it was trained through and
whether it pins a ranker (the stage gate may leave it out).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.core import fmt, layout, schema
from pipelines.core.ab_decisions import ab_experiments, read_ab_decision
from pipelines.core.gate_decisions import read_gate_decision
from pipelines.core.loop_days import read_loop_days, save_loop_day
from pipelines.core.net import free_port
from pipelines.core.settings import Settings
from pipelines.core.wait import wait_until

log = logging.getLogger("recloop.closed_loop")

RUNNERS = ("airflow", "inline", "celery")
DAILY_TASKS: tuple[tuple[str, str | None], ...] = (
    ("validate", None), ("stats", None), ("compute_features", None), ("evaluate", None),
    ("evaluate_ranker", None), ("gate", None), ("materialize", None), ("train_model", "mf"),
    ("train_model", "two_tower"), ("train_model", "popular"), ("train_model", "itemknn"),
    ("build_index", None), ("train_ranker", None), ("train_extra", None), ("register", None),
    ("fit_linucb", None),
)  # fmt: skip
"""The daily DAG's tasks in an order its dependencies allow (the inline runner's order)."""
FLUSH_S = 1.0  # the service's impression-log flush interval in the loop (seconds)


@dataclass(frozen=True)
class LoopConfig:
    """How the loop runs (``recloop demo`` flags)."""

    days: int = 5
    """Logical dates to run, from ``start``."""
    start: dt.date = dt.date(2026, 1, 1)
    """First logical date to run."""
    world_start: dt.date | None = None
    """First day of the simulated world (default ``start``; an existing world keeps its own)."""
    retrain: bool = True
    """Run the whole daily DAG; False (inline runner only): validate and stats, then the A/B
    analysis — the serving/A/B half of the loop alone, for its scenario tests."""
    scale: str | None = None
    """Simulator scale (default: ``RECLOOP_SCALE``)."""
    seed: int | None = None
    """World seed (default: ``RECLOOP_SEED``)."""
    max_requests: int | None = None
    """Simulated requests sent to the service per served day (None: all of the day's)."""
    concurrency: int = 4
    """Requests in flight from the simulated users."""
    challenger_share: float = 0.5
    """Share of users the service routes to the challenger arm."""
    runner: str = "airflow"
    """``airflow`` (the DAGs through ``airflow dags test``), ``inline`` (their task functions
    in-process) or ``celery`` (triggered through the REST API of the local cluster's Celery
    topology on ``airflow_port``, :mod:`pipelines.loop.cluster_run`)."""
    airflow_port: int | None = None
    """The ``celery`` runner's Airflow API server port."""
    external_service: Any = None
    """A running service to send the traffic to instead of the loop's own ``recloop serve``
    (the cluster's replicas: :class:`pipelines.loop.cluster_run.ReplicaService`)."""
    ab_config: Any = None
    """``pipelines.experiments.ab.ABConfig`` for the inline runner (the A/B DAG uses its defaults)."""
    port: int | None = None
    """The service's port (None: a free one)."""
    stop_after: tuple[str, str] | None = None
    """``(date, phase)``: raise :class:`LoopStopped` after that phase (tests of restarts)."""
    extra_env: dict[str, str] = field(default_factory=dict)
    """More environment for the service process (``RECLOOP_SERVE_*``)."""

    def __post_init__(self) -> None:
        if self.days < 1:
            raise ValueError(f"days must be >= 1, got {self.days}")
        if self.runner not in RUNNERS:
            raise ValueError(f"runner must be one of {RUNNERS}, got {self.runner!r}")
        if not 0.0 <= self.challenger_share <= 1.0:
            raise ValueError(f"challenger_share must be in [0, 1], got {self.challenger_share}")
        if self.runner == "celery" and self.airflow_port is None:
            raise ValueError("the celery runner needs airflow_port")
        if not self.retrain and self.runner != "inline":
            raise ValueError("retrain=False needs the inline runner")
        if self.max_requests is not None and self.max_requests < 1:
            raise ValueError(f"max_requests must be >= 1, got {self.max_requests}")

    @property
    def dates(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=d) for d in range(self.days)]


class LoopStopped(RuntimeError):
    """Raised after ``LoopConfig.stop_after`` (a deliberate stop, to test resuming)."""


class StageFailed(RuntimeError):
    """A DAG run (or inline task) of the loop failed; the message names the date and task."""


# --- the day records: pipelines.core.loop_days reads and writes them -----------------------------
def _aliases(settings: Settings) -> dict[str, str | None]:
    from pipelines.release import registry

    return {a: registry.get_alias(settings, a) for a in ("champion", "challenger")}


def _bundles(settings: Settings, aliases: dict[str, str | None]) -> dict[str, dict[str, Any]]:
    """What each alias served: ``{arm: {"version", "kind", "trained_through", "ranker"}}``."""
    from pipelines.release import registry

    out: dict[str, dict[str, Any]] = {}
    for arm, version in aliases.items():
        mv = registry.bundle_version(settings, version) if version else None
        if mv is None:
            continue
        out[arm] = {
            "version": str(version),
            "kind": mv.tags.get(registry.KIND_TAG) or "first",
            "trained_through": mv.tags.get("logical_date"),
            "ranker": mv.tags.get("ranker_version", "none") != "none",
        }
    return out


# --- the service process --------------------------------------------------------------------------
class Service:
    """``recloop serve`` as a child process on loopback, with a fresh admin token.

    ``start()`` waits until ``/health/ready``; ``reload()`` makes it follow the registry aliases
    now; ``stop()`` sends SIGTERM (uvicorn's graceful shutdown flushes the impression log).
    The process's output goes to ``RECLOOP_HOME/logs/serve.log``.
    """

    def __init__(self, settings: Settings, port: int | None = None, env: dict | None = None):
        self.settings = settings
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_hex(16)
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return layout.serve_log_path(self.settings)

    def start(self, timeout_s: float = 180.0) -> None:
        """Start the process and wait for readiness (a champion loaded, its index answering)."""
        import httpx

        if self.proc is not None and self.proc.poll() is None:
            return
        env = {
            **os.environ, **self.settings.as_env(), **self.env,
            "RECLOOP_ADMIN_TOKEN": self.token, "RECLOOP_SERVE_RELOAD_S": "0",
            "OMP_WAIT_POLICY": "PASSIVE",
        }  # fmt: skip
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        out = self.log_path.open("ab")
        cmd = [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(self.port),
               "--log-level", "warning"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        detail = ["no answer"]

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the service exited with {self.proc.returncode} while starting; "
                    f"see {self.log_path}"
                )
            try:
                r = httpx.get(f"{self.url}/health/ready", timeout=2.0, trust_env=False)
                detail[0] = r.json().get("detail", r.text)
                return r.status_code == 200
            except httpx.HTTPError as exc:
                detail[0] = repr(exc)
                return False

        try:
            wait_until(ready, timeout_s, f"the service on {self.url}")
        except TimeoutError:
            self.stop()
            raise TimeoutError(f"the service was not ready in {timeout_s:.0f}s ({detail[0]}); "
                               f"see {self.log_path}") from None  # fmt: skip
        log.info("service ready on %s: %s", self.url, detail[0])

    def reload(self) -> dict[str, Any]:
        """``POST /admin/reload``: ``{"outcome": {arm: what happened}, "rejected": n}``."""
        import httpx

        r = httpx.post(
            f"{self.url}/admin/reload", headers={"Authorization": f"Bearer {self.token}"},
            timeout=120.0, trust_env=False,
        )  # fmt: skip
        r.raise_for_status()
        return r.json()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after ``timeout_s``)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("the service did not stop in %.0fs: killing it", timeout_s)
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- phases ---------------------------------------------------------------------------------------
def _run_daily(settings: Settings, day: dt.date, cfg: LoopConfig) -> dict[str, str]:
    """The daily DAG, then the A/B DAG, for ``day``: ``{dag_id: state}``; raises on a failure."""
    if cfg.runner == "celery":
        from pipelines.loop.cluster_run import run_dags_celery

        states = {}
        for dag_id, (state, tis) in run_dags_celery(settings, day, cfg.airflow_port).items():
            states[dag_id] = state
            if state != "success":
                failed = [t["task_id"] for t in tis if t.get("state") not in ("success", "skipped")]
                raise StageFailed(f"{dag_id} {day} ended {state} (tasks not successful: {failed})")
        return states
    if cfg.runner == "airflow":
        from pipelines.orchestration.airflow_runner import run_dag

        states = {}
        for dag_id in ("recloop_daily", "recloop_ab"):
            result = run_dag(settings, day, dag_id=dag_id)
            log.info("%s", result)
            states[dag_id] = result.state
            if not result.ok:
                failed = [t for t, s, _ in result.tasks if s not in ("success", "skipped")]
                raise StageFailed(
                    f"{dag_id} {day} ended {result.state} (tasks not successful: {failed}); "
                    f"log tail:\n{result.log_tail[-2000:]}"
                )
        return states
    return _run_inline(settings, day, cfg)


def _run_inline(settings: Settings, day: dt.date, cfg: LoopConfig) -> dict[str, str]:
    from pipelines.experiments import ab
    from pipelines.orchestration import tasks

    ds = day.isoformat()
    saved = dict(os.environ)
    os.environ.update(settings.as_env())  # the task functions read Settings.from_env()
    try:
        todo = DAILY_TASKS if cfg.retrain else (("validate", None), ("stats", None))
        for name, arg in todo:
            fn = getattr(tasks, name)
            try:
                fn(ds, arg) if arg else fn(ds)
            except Exception as exc:
                raise StageFailed(f"recloop_daily {ds}: task {name}({arg or ''}) failed: {exc!r}") \
                    from exc  # fmt: skip
        try:
            ab.analyze_current(settings, ds, cfg.ab_config)
        except Exception as exc:
            raise StageFailed(f"recloop_ab {ds}: analyze failed: {exc!r}") from exc
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {"recloop_daily": "success", "recloop_ab": "success"}


def served_truth(settings: Settings, day: dt.date) -> dict[str, Any] | None:
    """Per arm of D's served impressions: impressions, clicks, CTR and the true expected CTR.

    ``None`` when the partition holds no service rows."""
    import numpy as np

    from pipelines.data import simulate

    frame = schema.read_partition(settings.interactions_dir, day)
    served = frame[frame["model_version"].fillna("").str.startswith("bundle-")]
    if served.empty:
        return None
    world = simulate.load_world(settings)
    world.extend_to(day)
    out: dict[str, Any] = {}
    for arm, rows in served.groupby("arm"):
        imp = rows[rows["event"] == "impression"]
        clicks = rows[rows["event"] == "click"].drop_duplicates(["request_id", "position"])
        truth = simulate.true_click_prob(
            world, imp["user_id"].to_numpy(), imp["item_id"].to_numpy(),
            imp["position"].to_numpy(dtype=np.int64),
        )  # fmt: skip
        out[str(arm)] = {
            "impressions": int(len(imp)),
            "clicks": int(len(clicks)),
            "ctr": float(len(clicks) / len(imp)) if len(imp) else None,
            "true_ctr": float(truth.mean()) if len(imp) else None,
            "versions": sorted(rows["model_version"].unique().tolist()),
        }
    return out


def _ingest_when_flushed(settings: Settings, day: dt.date, wait_s: float = 30.0) -> dict:
    """``ingest_served`` once the service's log holds every request of the day's manifest."""
    from pipelines.loop.served import ingest_served

    time.sleep(FLUSH_S * 2)  # the service flushes its log every FLUSH_S seconds
    out: dict[str, Any] = {}

    def flushed() -> bool:
        out.clear()
        out.update(ingest_served(settings, day))
        return out.get("missing_requests", 0) == 0

    try:
        wait_until(flushed, wait_s, f"the served log of {day}", interval_s=1.0)
    except TimeoutError:
        log.warning("%s: %d served requests never reached the log", day,
                    out["missing_requests"])  # fmt: skip
    return out


def _gate_record(settings: Settings, day: dt.date) -> dict[str, Any] | None:
    d = read_gate_decision(settings, day)
    if d is None:
        return None
    return {k: d.get(k) for k in ("candidate_version", "action", "kind", "reason")}


def _ab_record(settings: Settings, day: dt.date) -> dict[str, Any] | None:
    found = (read_ab_decision(settings, name, day) for name in ab_experiments(settings))
    recs = [r for r in found if r is not None]
    if not recs:
        return None
    rec = next((r for r in recs if r.get("day", 0) and r.get("arms")), recs[-1])
    return {k: rec.get(k) for k in ("experiment", "action", "reason", "day")}


def _manifest_done(settings: Settings, day: dt.date) -> bool:
    from pipelines.loop.traffic import traffic_dir

    folder = schema.partition_dir(traffic_dir(settings), day)
    return folder.exists() and any(folder.glob("*.parquet"))


# --- the loop -------------------------------------------------------------------------------------
def run_loop(
    settings: Settings,
    cfg: LoopConfig,
    on_phase: Callable[[dt.date, str, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) the loop over ``cfg.dates``; the day records (module docstring).

    ``on_phase(date, phase, record)`` is called after each phase (progress display)."""
    from tqdm import tqdm

    from pipelines.data import simulate

    settings.ensure_dirs()
    world = _world(settings, cfg)
    done = {r["date"]: r for r in read_loop_days(settings)}
    service: Service | None = None
    records = []
    bar = tqdm(cfg.dates, desc="closed loop", unit="day", disable=None)
    try:
        for day in bar:
            rec = done.get(day.isoformat()) or {"date": day.isoformat(), "phases": [],
                                                "seconds": {}}  # fmt: skip
            phases = rec["phases"]

            def finish(phase: str, t0: float, rec: dict = rec, day: dt.date = day) -> None:
                rec["phases"].append(phase)
                rec["seconds"][phase] = round(time.perf_counter() - t0, 2)
                rec["seconds"]["total"] = round(
                    sum(v for k, v in rec["seconds"].items() if k != "total"), 2
                )
                save_loop_day(settings, rec)
                if on_phase:
                    on_phase(day, phase, rec)
                if cfg.stop_after == (day.isoformat(), phase):
                    raise LoopStopped(f"stopped after {phase} of {day} (as configured)")

            if "logs" not in phases:
                t0 = time.perf_counter()
                rec["aliases_before"] = _aliases(settings)
                rec["bundles"] = _bundles(settings, rec["aliases_before"])
                if rec["aliases_before"]["champion"] is None:
                    rec["source"] = "logging_policy"
                    simulate.simulate_dates(settings, world, [day])
                    rec["traffic"] = rec["ingest"] = None
                else:
                    rec["source"] = "service"
                    if service is None:
                        service = cfg.external_service or Service(
                            settings, cfg.port, _service_env(cfg)
                        )
                    try:
                        service.start()
                        rec["reload"] = service.reload()["outcome"]
                    except Exception as exc:
                        raise StageFailed(f"{day}: the service did not come up: {exc}") from exc
                    simulate.write_attributes(settings, world, day)
                    rec["traffic"] = _traffic(settings, day, service, cfg)
                    rec["ingest"] = _ingest_when_flushed(settings, day)
                rec["served"] = served_truth(settings, day) if rec["source"] == "service" else None
                finish("logs", t0)
            if "dags" not in phases:
                t0 = time.perf_counter()
                rec["dag"] = _run_daily(settings, day, cfg)
                rec["gate"] = _gate_record(settings, day)
                rec["ab"] = _ab_record(settings, day)
                rec["aliases_after"] = _aliases(settings)
                finish("dags", t0)
            records.append(rec)
            bar.set_postfix_str(f"{day} {rec.get('ab') and rec['ab'].get('action') or ''}")
    finally:
        if service is not None:
            service.stop()
    return records


def _world(settings: Settings, cfg: LoopConfig):
    """The simulated world of this workspace (created and recorded on the first run)."""
    from pipelines.data import simulate

    meta_path = layout.world_path(settings)
    scale = cfg.scale or settings.scale
    seed = settings.seed if cfg.seed is None else int(cfg.seed)
    start = cfg.world_start or cfg.start
    meta = simulate.read_world_meta(settings)
    if meta is not None:
        have = (meta["scale"], int(meta["seed"]), meta["start_date"])
        if cfg.world_start is None and start > schema.parse_date(have[2]):
            start = schema.parse_date(have[2])  # a world that began earlier: keep it
        want = (scale, seed, start.isoformat())
        if have != want and (read_loop_days(settings) or start > schema.parse_date(have[2])):
            raise ValueError(
                f"{meta_path} describes world {have} but the loop asks for {want}: use another "
                "RECLOOP_HOME, or the same --scale/--seed/--start-date to resume"
            )
    world = simulate.build_world(scale, seed, start)
    simulate.write_world_meta(settings, world)
    return world


def _service_env(cfg: LoopConfig) -> dict[str, str]:
    return {
        "RECLOOP_SERVE_CHALLENGER_SHARE": str(cfg.challenger_share),
        "RECLOOP_SERVE_LOG_FLUSH_S": str(FLUSH_S),
        **cfg.extra_env,
    }


def _traffic(settings: Settings, day: dt.date, service: Service, cfg: LoopConfig) -> dict:
    from pipelines.loop.traffic import simulate_traffic

    if _manifest_done(settings, day):
        log.info("%s: traffic already sent (manifest present): not sending it again", day)
        return {"resumed": True}
    counts = simulate_traffic(
        settings, day, service.url, max_requests=cfg.max_requests, concurrency=cfg.concurrency
    )
    return {k: v for k, v in counts.items() if k != "manifest"}


# --- display --------------------------------------------------------------------------------------
def served_bundle(record: dict[str, Any]) -> str:
    """``v3 refresh (01-02)``: the champion that served the day, its kind and the day it was
    trained through (``-R`` after the kind: no ranker); ``-`` when none served."""
    b = (record.get("bundles") or {}).get("champion")
    if not b:
        return "-"
    trained = str(b.get("trained_through") or "?")[5:]
    return f"v{b['version']} {b.get('kind')}{'' if b.get('ranker', True) else '-R'} ({trained})"


def format_days(records: list[dict[str, Any]]) -> str:
    """One line per day: source, the champion that served (version, kind, trained through),
    per-arm CTR (measured / true), gate action and kind, A/B action, aliases, seconds."""
    lines = [f"{'date':<11} {'logs by':<15}{'champion served':<22}"
             f"{'arms: CTR measured / true':<52}{'gate':<19}"
             f"{'A/B':<22}{'aliases after':<16}{'sec':>6}"]  # fmt: skip
    for r in records:
        arms = r.get("served") or {}
        cells = []
        for arm, s in sorted(arms.items()):
            v = ",".join(x.removeprefix("bundle-") for x in s.get("versions", []))
            cells.append(
                f"{arm[:5]} v{v} {fmt.number(s.get('ctr'))}/{fmt.number(s.get('true_ctr'))}"
            )
        g = r.get("gate") or {}
        gate = "/".join(x for x in (g.get("action"), g.get("kind")) if x) or "-"
        ab = r.get("ab") or {}
        ab_s = f"{ab.get('experiment')} {ab.get('action')}" if ab else "-"
        al = r.get("aliases_after") or {}
        al_s = f"C{al.get('champion') or '-'} c{al.get('challenger') or '-'}"
        lines.append(
            f"{r['date']:<11} {r.get('source', '-'):<15}{served_bundle(r):<22}"
            f"{'; '.join(cells) or '-':<52}{gate:<19}"
            f"{ab_s:<22}{al_s:<16}{r.get('seconds', {}).get('total', 0):>6.0f}"
        )
    return "\n".join(lines)
