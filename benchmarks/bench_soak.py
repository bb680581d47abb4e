"""Soak test: ``recloop serve --workers 2`` under steady load with feedback, Redis killed once.

    .venv/bin/python benchmarks/bench_soak.py [--minutes 10] [--rps 100] [--scale small]
        [--home DIR] [--warmup-s 60] [--outage-s 30] [--grace-s 5] [--click-rate 0.3]
        [--out FILE.json]

1. **Workspace**: ``--scale`` (tiny/small) simulated for 2 days and run through the daily task
   functions (validate, features → Redis, mf, two-tower, index, ranker, register, gate), so a
   champion bundle exists (``--home`` reuses one built before; its latest validated day is then
   re-materialized). Redis is the workspace's own, started the way an operator starts it
   (``infra/redis.sh start``: daemonized, ``maxmemory`` 1gb, ``volatile-ttl``, pid file under
   ``RECLOOP_HOME``) on a free loopback port.
2. **Server**: ``recloop serve --workers 2`` (a real subprocess, default settings, loopback, free
   port, its output in ``$TMPDIR/recloop-soak-server-PORT.log``); ready once ``/health/ready``
   answers 200. Its worker processes are the supervisor's ``spawn_main`` children.
3. **Load** (httpx ``AsyncClient``, open loop, fixed rate): ``/recommend`` ``i`` is due at
   ``start + i / rps`` and is sent then whatever earlier requests are doing; its latency counts
   from that due time (no coordinated omission). Users: the champion's known users (90 %) and
   new ids (10 %), k=10. After each 200, with probability ``--click-rate`` a ``/feedback`` click
   on one shown item (position drawn with weight ``(1+pos)^-0.7``, the simulator's examination
   curve), sent on a new connection each time (as a browser's beacon would be: accepted by
   either worker, so about half reach the worker that did not serve the request and need the
   request record shared through Redis), and 10 % of those
   clicks sent twice (the repeat must come back ``duplicate: true``);
   a feedback call's latency counts from when its recommend answer arrived. First
   ``--warmup-s`` seconds at the same rate, not counted; then ``--minutes`` measured.
4. **Fault**: at the middle of the measured run the workspace's ``redis-server`` is SIGKILLed
   (pid from its pid file); ``--outage-s`` later it is started again on the same port
   (``infra/redis.sh start``). It runs without persistence, so it comes back empty: when
   database 0 has no keys the latest validated day is re-materialized
   (``recloop features materialize --date D --force``, a subprocess). The **outage window** is
   from the kill to the end of that materialization plus ``--grace-s`` (the service's Redis
   breaker cool-down is 2 s); a request belongs to the window its due time falls in.
5. **Reported** (stdout JSON, also ``--out``): per window (before / outage / after the outage)
   requests, errors (non-2xx by status, transport errors by type), degraded share and p50/p99
   ms of ``/recommend`` and ``/feedback``; outside the outage (before + after) the same,
   with the floors of issue 17 checked (0 errors, p99 ≤ 50 ms, RSS growth ≤ 10 %); each
   worker's RSS (MiB) and open files (``/proc/PID/fd``) after warm-up and at the end (and
   sampled every 10 s); Redis ``used_memory`` and key counts before the kill, after the restore,
   at the end; a 10 s timeline; the server output's line and Traceback counts and commonest
   messages; the load average.

The load generator runs on the same machine as the server and Redis (2 cores here): latency
figures include its own CPU use and are conservative.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DAYS = ("2026-01-01", "2026-01-02")
SAMPLE_S = 10.0
"""Seconds between samples of the workers' RSS / open files and Redis memory (and the timeline
bucket width)."""
FLOORS = {"errors_outside": 0, "p99_ms_outside": 50.0, "rss_growth": 0.10}


# --- workspace and Redis --------------------------------------------------------------------


def redis_env(home: Path, port: int) -> dict[str, str]:
    """The environment of every child: workspace, its Redis, no MLflow server, no admin token."""
    env = {
        **os.environ,
        "RECLOOP_HOME": str(home),
        "RECLOOP_REDIS_URL": f"redis://127.0.0.1:{port}/0",
    }
    for name in ("RECLOOP_MLFLOW_URI", "RECLOOP_ADMIN_TOKEN", "RECLOOP_SERVE_SHARED_REDIS_URL"):
        env.pop(name, None)
    return env


def redis_start(env: dict[str, str]) -> None:
    """``infra/redis.sh start`` (daemonized, maxmemory, pid file under ``RECLOOP_HOME``)."""
    subprocess.run(
        ["bash", str(REPO / "infra" / "redis.sh"), "start"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def redis_stop(env: dict[str, str]) -> None:
    subprocess.run(
        ["bash", str(REPO / "infra" / "redis.sh"), "stop"],
        env=env,
        stdout=subprocess.DEVNULL,
        check=False,
    )


def redis_pid(home: Path, port: int) -> int:
    """The workspace redis-server's pid, from ``infra/redis.sh``'s pid file."""
    return int((home / f"redis-{port}.pid").read_text().strip())


def redis_stats(port: int) -> dict[str, Any]:
    """``used_memory`` (bytes, and MiB) and key counts of databases 0 (features) and 1 (request
    records); ``{"error": ...}`` when Redis does not answer."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:
        r = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1, socket_connect_timeout=1,
                        retry=Retry(NoBackoff(), 0))  # fmt: skip
        mem = r.info("memory")
        keys = r.info("keyspace")
        r.close()
    except redis.RedisError as exc:
        return {"error": type(exc).__name__}
    return {
        "used_memory": mem["used_memory"],
        "used_memory_mib": round(mem["used_memory"] / 2**20, 2),
        "keys_db0": keys.get("db0", {}).get("keys", 0),
        "keys_db1": keys.get("db1", {}).get("keys", 0),
    }


def prepare(home: Path, scale: str, env: dict[str, str]) -> str:
    """A workspace with a champion (built once, in-process), its latest validated day in Redis;
    returns that day."""
    os.environ.update({k: env[k] for k in ("RECLOOP_HOME", "RECLOOP_REDIS_URL")})
    os.environ["RECLOOP_SCALE"] = scale
    for name in ("RECLOOP_MLFLOW_URI", "RECLOOP_ADMIN_TOKEN"):
        os.environ.pop(name, None)
    from pipelines.core import layout
    from pipelines.core.settings import Settings
    from pipelines.core.validated import validated_dates
    from pipelines.data.simulate import simulate
    from pipelines.features.store import apply_repo, materialize_date
    from pipelines.orchestration import tasks
    from pipelines.release import registry

    settings = Settings.from_env()
    settings.ensure_dirs()
    if layout.mlflow_db_path(settings).exists() and registry.get_alias(settings, "champion"):
        last = validated_dates(settings)[-1]
        apply_repo(settings)
        materialize_date(settings, last, force=True)
        print(f"workspace {home}: champion {registry.get_alias(settings, 'champion')}", flush=True)
        return str(last)
    t0 = time.perf_counter()
    simulate(settings, len(DAYS), scale)
    for ds in DAYS:
        tasks.validate(ds)
        tasks.features(ds)
        tasks.train_model(ds, "mf")
        tasks.train_model(ds, "two_tower")
        tasks.build_index(ds)
        tasks.train_ranker(ds)
        tasks.evaluate_ranker(ds)
        tasks.register(ds)
        tasks.gate(ds)
    print(
        f"workspace {home} built in {time.perf_counter() - t0:.0f}s: champion "
        f"{registry.get_alias(settings, 'champion')}",
        flush=True,
    )
    return DAYS[-1]


def known_users() -> list[str]:
    """The champion two-tower's user ids (the environment names the workspace)."""
    from pipelines.core.settings import Settings
    from pipelines.core.vocab import Vocab
    from pipelines.release import registry

    tt = Path(registry.load_bundle(Settings.from_env(), "champion")["paths"]["two_tower"])
    return list(Vocab.load(tt / "users.json").ids)


# --- the server and its workers ---------------------------------------------------------------


def start_server(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen:
    """``recloop serve --workers 2`` on ``port``; returns once ``/health/ready`` is 200."""
    import httpx

    from pipelines.core.wait import wait_until

    log = open(log_path, "wb")  # noqa: SIM115 - closed with the process (see stop_server)
    cmd = [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port), "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}) before it was ready: {log_path}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, 300, "the server's /health/ready", interval_s=0.5)
    return proc


def stop_server(proc: subprocess.Popen) -> None:
    """SIGINT (uvicorn's graceful stop: workers flush their logs), SIGKILL after 30 s."""
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def worker_pids(server_pid: int) -> list[int]:
    """The uvicorn worker processes: the supervisor's ``spawn_main`` children."""
    import psutil

    out = []
    for child in psutil.Process(server_pid).children(recursive=False):
        try:
            if any("spawn_main" in part for part in child.cmdline()):
                out.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return sorted(out)


def proc_stats(pid: int) -> dict[str, Any]:
    """RSS (MiB), open file descriptors and established TCP connections (clients and Redis) of
    ``pid``; ``{"gone": True}`` when it exited."""
    import psutil

    try:
        rss = psutil.Process(pid).memory_info().rss
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        conns = psutil.Process(pid).net_connections(kind="tcp")
    except (psutil.NoSuchProcess, FileNotFoundError):
        return {"pid": pid, "gone": True}
    est = sum(c.status == psutil.CONN_ESTABLISHED for c in conns)
    return {"pid": pid, "rss_mib": round(rss / 2**20, 1), "open_files": fds, "tcp_established": est}


def sample(server_pid: int, redis_port: int, t: float) -> dict[str, Any]:
    """One sample: ``t`` (s since the measured start), each worker's stats, Redis's."""
    workers = [proc_stats(pid) for pid in worker_pids(server_pid)]
    return {"t": round(t, 1), "workers": workers, "redis": redis_stats(redis_port)}


# --- load -----------------------------------------------------------------------------------


@dataclass
class Record:
    """One HTTP call: ``kind`` (recommend / feedback), ``due`` (s since the measured start;
    negative in the warm-up), ``outcome`` (the status code as text, or a transport error's
    type), latency (ms from due), ``degraded`` (recommend 200s)."""

    kind: str
    due: float
    outcome: str
    ms: float
    degraded: bool = False
    duplicate: bool | None = None


@dataclass
class Soak:
    """The run's state: client, schedule and what happened."""

    client: Any
    feedback_client: Any
    users: list[str]
    rps: float
    click_rate: float
    t0: float = 0.0
    records: list[Record] = field(default_factory=list)
    tasks: set = field(default_factory=set)

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


async def call(soak: Soak, kind: str, path: str, body: dict, due: float) -> dict | None:
    """POST ``body`` (``/feedback`` on a new connection: either worker may take it); records the outcome with latency from ``due`` (perf_counter); the JSON
    answer of a 2xx, else None."""
    import httpx

    try:
        client = soak.client if kind == "recommend" else soak.feedback_client
        r = await client.post(path, json=body)
    except httpx.HTTPError as exc:
        ms = (time.perf_counter() - due) * 1e3
        soak.records.append(Record(kind, due - soak.t0, type(exc).__name__, ms))
        return None
    ms = (time.perf_counter() - due) * 1e3
    out = r.json() if 200 <= r.status_code < 300 else None
    rec = Record(kind, due - soak.t0, str(r.status_code), ms)
    if out is not None:
        rec.degraded = bool(out.get("degraded", False))
        rec.duplicate = out.get("duplicate")
    soak.records.append(rec)
    return out


async def one(soak: Soak, user: str, due: float, rng: Any) -> None:
    """A recommend call, then (maybe) a click on one shown item, sometimes sent twice."""
    out = await call(soak, "recommend", "/recommend", {"user_id": user, "k": 10}, due)
    if out is None or not out.get("items") or rng.random() >= soak.click_rate:
        return
    import numpy as np

    items = [it["item_id"] for it in out["items"]]
    w = (1.0 + np.arange(len(items))) ** -0.7
    p = w / w.sum()
    item = items[int(rng.choice(len(items), p=p))]
    body = {"request_id": out["request_id"], "item_id": item, "event": "click"}
    sent = time.perf_counter()
    first = await call(soak, "feedback", "/feedback", body, sent)
    if first is not None and rng.random() < 0.1:
        await call(soak, "feedback_repeat", "/feedback", body, time.perf_counter())


async def schedule(soak: Soak, seconds: float, start_index: int, rng: Any) -> None:
    """Requests due at ``soak.t0 + i / rps`` for ``i`` in ``[start_index, start_index +
    seconds * rps)``, each sent at its due time (open loop)."""
    for i in range(start_index, start_index + int(seconds * soak.rps)):
        due = soak.t0 + i / soak.rps
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        user = soak.users[int(rng.integers(len(soak.users)))] if rng.random() < 0.9 else f"n{i}"
        soak.spawn(one(soak, user, due, rng))


# --- the fault and the samples ----------------------------------------------------------------


@dataclass
class Fault:
    """When (s since the measured start) Redis was killed, answered again, had its features
    back; whether a materialization was needed and how long it took; Redis stats around it."""

    killed: float | None = None
    restarted: float | None = None
    restored: float | None = None
    rematerialized: bool = False
    materialize_s: float | None = None
    redis_before_kill: dict = field(default_factory=dict)
    redis_after_restart: dict = field(default_factory=dict)
    redis_after_restore: dict = field(default_factory=dict)


async def inject(soak: Soak, at_s: float, outage_s: float, ws: dict[str, Any], f: Fault) -> None:
    """SIGKILL the workspace's redis-server at ``t0 + at_s``; restart it ``outage_s`` later on
    the same port; re-materialize the latest day when database 0 came back empty."""
    await asyncio.sleep(max(0.0, soak.t0 + at_s - time.perf_counter()))
    port = ws["redis_port"]
    f.redis_before_kill = await asyncio.to_thread(redis_stats, port)
    os.kill(redis_pid(ws["home"], port), signal.SIGKILL)
    f.killed = time.perf_counter() - soak.t0
    print(f"[{f.killed:6.1f}s] redis-server SIGKILLed", flush=True)
    await asyncio.sleep(outage_s)
    await asyncio.to_thread(redis_start, ws["env"])
    f.restarted = time.perf_counter() - soak.t0
    f.redis_after_restart = await asyncio.to_thread(redis_stats, port)
    print(f"[{f.restarted:6.1f}s] redis-server restarted: {f.redis_after_restart}", flush=True)
    if f.redis_after_restart.get("keys_db0", 0) == 0:
        t = time.perf_counter()
        cmd = [
            sys.executable,
            "-m",
            "pipelines.cli",
            "features",
            "materialize",
            "--date",
            ws["day"],
            "--force",
        ]
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            cwd=REPO,
            env=ws["env"],
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        if await proc.wait() != 0:
            raise RuntimeError(f"re-materialization failed ({proc.returncode}): {cmd}")
        f.rematerialized, f.materialize_s = True, round(time.perf_counter() - t, 1)
    f.restored = time.perf_counter() - soak.t0
    f.redis_after_restore = await asyncio.to_thread(redis_stats, port)
    print(
        f"[{f.restored:6.1f}s] features back ({f.materialize_s}s): {f.redis_after_restore}",
        flush=True,
    )


async def sampler(soak: Soak, ws: dict[str, Any], out: list[dict], stop: asyncio.Event) -> None:
    """Every :data:`SAMPLE_S` seconds from the measured start, :func:`sample` (in a thread)."""
    await asyncio.sleep(max(0.0, soak.t0 - time.perf_counter()))
    while not stop.is_set():
        t = time.perf_counter() - soak.t0
        out.append(await asyncio.to_thread(sample, ws["server_pid"], ws["redis_port"], t))
        try:
            await asyncio.wait_for(stop.wait(), SAMPLE_S)
        except TimeoutError:
            pass


async def soak_run(args: argparse.Namespace, ws: dict[str, Any]) -> dict[str, Any]:
    """Warm-up then the measured run with the fault in its middle; the raw results."""
    import httpx
    import numpy as np

    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    one_shot = httpx.Limits(max_connections=256, max_keepalive_connections=0)  # new connection each
    async with (
        httpx.AsyncClient(base_url=ws["url"], timeout=10.0, limits=limits) as client,
        httpx.AsyncClient(base_url=ws["url"], timeout=10.0, limits=one_shot) as feedback_client,
    ):
        soak = Soak(client, feedback_client, ws["users"], args.rps, args.click_rate)
        seconds = args.minutes * 60.0
        soak.t0 = time.perf_counter() + args.warmup_s
        rng = np.random.default_rng(0)
        fault, samples, stop = Fault(), [], asyncio.Event()
        sampling = asyncio.create_task(sampler(soak, ws, samples, stop))
        faulting = asyncio.create_task(inject(soak, seconds / 2, args.outage_s, ws, fault))
        await schedule(soak, args.warmup_s + seconds, -int(args.warmup_s * args.rps), rng)
        await asyncio.gather(*list(soak.tasks))
        await faulting
        stop.set()
        await sampling
        end = time.perf_counter() - soak.t0
        samples.append(await asyncio.to_thread(sample, ws["server_pid"], ws["redis_port"], end))
    return {"records": soak.records, "fault": fault, "samples": samples, "seconds": seconds}


# --- the report -----------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    import numpy as np

    return round(float(np.percentile(values, q)), 2) if values else None


def summarize(records: list[Record]) -> dict[str, Any]:
    """Counts, errors by outcome, degraded share and latency percentiles of ``records``."""
    out: dict[str, Any] = {}
    for kind in ("recommend", "feedback", "feedback_repeat"):
        rs = [r for r in records if r.kind == kind]
        ok = [r for r in rs if r.outcome.startswith("2")]
        errors: dict[str, int] = {}
        for r in rs:
            if not r.outcome.startswith("2"):
                errors[r.outcome] = errors.get(r.outcome, 0) + 1
        s = {
            "calls": len(rs),
            "ok": len(ok),
            "errors": sum(errors.values()),
            "errors_by_outcome": errors,
            "p50_ms": pct([r.ms for r in ok], 50),
            "p99_ms": pct([r.ms for r in ok], 99),
            "max_ms": pct([r.ms for r in ok], 100),
        }
        if kind == "recommend":
            s["degraded"] = sum(r.degraded for r in ok)
            s["degraded_share"] = round(s["degraded"] / len(ok), 4) if ok else None
        if kind == "feedback_repeat":
            s["answered_duplicate"] = sum(bool(r.duplicate) for r in ok)
        out[kind] = s
    return out


def windows(raw: dict[str, Any], grace_s: float) -> dict[str, dict]:
    """Records (measured ones) split by due time: before the kill, the outage (kill → features
    restored + ``grace_s``), after; and ``outside`` = before + after."""
    f: Fault = raw["fault"]
    lo, hi = f.killed or 0.0, (f.restored or 0.0) + grace_s
    rec = [r for r in raw["records"] if r.due >= 0]
    parts = {
        "before": [r for r in rec if r.due < lo],
        "outage": [r for r in rec if lo <= r.due < hi],
        "after": [r for r in rec if r.due >= hi],
    }
    parts["outside"] = parts["before"] + parts["after"]
    out = {name: summarize(rs) for name, rs in parts.items()}
    for name in out:
        out[name]["window_s"] = {
            "before": [0, round(lo, 1)],
            "outage": [round(lo, 1), round(hi, 1)],
            "after": [round(hi, 1), raw["seconds"]],
        }.get(name)
    return out


def timeline(records: list[Record]) -> list[dict[str, Any]]:
    """Per :data:`SAMPLE_S` bucket of due time: recommend calls, errors, degraded, p99 ms, and
    feedback calls and errors."""
    buckets: dict[int, list[Record]] = {}
    for r in records:
        if r.due >= 0:
            buckets.setdefault(int(r.due // SAMPLE_S), []).append(r)
    out = []
    for b in sorted(buckets):
        rec = [r for r in buckets[b] if r.kind == "recommend"]
        fb = [r for r in buckets[b] if r.kind != "recommend"]
        ok = [r for r in rec if r.outcome.startswith("2")]
        out.append(
            {
                "t": b * SAMPLE_S,
                "recommend": len(rec),
                "errors": len(rec) - len(ok),
                "degraded": sum(r.degraded for r in ok),
                "p99_ms": pct([r.ms for r in ok], 99),
                "feedback": len(fb),
                "feedback_errors": sum(not r.outcome.startswith("2") for r in fb),
            }
        )
    return out


def workers_report(samples: list[dict]) -> dict[str, Any]:
    """Each worker's RSS and open files in the first sample (after warm-up) and the last, with
    RSS growth; whether the worker pids changed (a worker restarted)."""
    first, last = samples[0]["workers"], samples[-1]["workers"]
    end = {w["pid"]: w for w in last}
    out = []
    for w in first:
        e = end.get(w["pid"], {"gone": True})
        row = {
            "pid": w["pid"],
            "rss_mib_start": w.get("rss_mib"),
            "rss_mib_end": e.get("rss_mib"),
            "open_files_start": w.get("open_files"),
            "open_files_end": e.get("open_files"),
        }
        if row["rss_mib_start"] and row["rss_mib_end"]:
            row["rss_growth"] = round(row["rss_mib_end"] / row["rss_mib_start"] - 1, 4)
        out.append(row)
    same = sorted(end) == sorted(w["pid"] for w in first)
    return {
        "workers": out,
        "same_pids_start_end": same,
        "rss_mib_max_seen": max((w.get("rss_mib") or 0) for s in samples for w in s["workers"]),
    }


def server_log_counts(path: Path) -> dict[str, Any]:
    """The server output's line count, Traceback lines and its 6 commonest messages (hex ids
    and numbers masked)."""
    import re
    from collections import Counter

    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    masked = Counter(re.sub(r"[0-9a-f]{32}|\d+(\.\d+)?", "#", line)[:160] for line in lines)
    return {
        "lines": len(lines),
        "tracebacks": sum("Traceback" in line for line in lines),
        "top": masked.most_common(6),
    }


def report(args: argparse.Namespace, raw: dict[str, Any], ws: dict[str, Any]) -> dict[str, Any]:
    """The JSON report (see the module docstring), with the floors of issue 17 checked."""
    f: Fault = raw["fault"]
    win = windows(raw, args.grace_s)
    wk = workers_report(raw["samples"])
    outside = win["outside"]
    errors_outside = sum(outside[k]["errors"] for k in ("recommend", "feedback", "feedback_repeat"))
    growth = max((w.get("rss_growth", float("inf")) for w in wk["workers"]), default=float("inf"))
    floors = {
        "errors_outside_outage": [errors_outside, errors_outside <= FLOORS["errors_outside"]],
        "recommend_p99_ms_outside": [
            outside["recommend"]["p99_ms"],
            (outside["recommend"]["p99_ms"] or 1e9) <= FLOORS["p99_ms_outside"],
        ],
        "max_worker_rss_growth": [growth, growth <= FLOORS["rss_growth"]],
    }
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "config": {
            "rps": args.rps,
            "minutes": args.minutes,
            "warmup_s": args.warmup_s,
            "outage_s": args.outage_s,
            "grace_s": args.grace_s,
            "click_rate": args.click_rate,
            "scale": args.scale,
            "workers": 2,
        },
        "floors": floors,
        "windows": win,
        "fault": {k: (round(v, 1) if isinstance(v, float) else v) for k, v in vars(f).items()},
        "workers": wk,
        "redis_end": raw["samples"][-1]["redis"],
        "server_log": server_log_counts(ws["log"]),
        "load_1min": [ws["load_before"], round(os.getloadavg()[0], 2)],
        "timeline": timeline(raw["records"]),
        "samples": raw["samples"],
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="measured minutes")
    p.add_argument("--rps", type=float, default=100.0, help="/recommend calls per second")
    p.add_argument("--scale", default="small", choices=("tiny", "small"))
    p.add_argument("--home", type=Path, help="workspace to build or reuse (default: a temp dir)")
    p.add_argument("--warmup-s", type=float, default=60.0, help="seconds of load not counted")
    p.add_argument("--outage-s", type=float, default=30.0, help="seconds Redis stays down")
    p.add_argument(
        "--grace-s",
        type=float,
        default=5.0,
        help="seconds after the features are back still counted in the outage",
    )
    p.add_argument("--click-rate", type=float, default=0.3, help="share of answers clicked")
    p.add_argument("--out", type=Path, help="also write the JSON report here")
    args = p.parse_args()
    from pipelines.core.net import free_port

    home = args.home or Path(tempfile.mkdtemp(prefix="recloop-bench-soak-")) / "home"
    home.mkdir(parents=True, exist_ok=True)
    redis_port, port = free_port(), free_port()
    env = {**redis_env(home, redis_port), "RECLOOP_SCALE": args.scale}
    ws: dict[str, Any] = {
        "home": home,
        "redis_port": redis_port,
        "env": env,
        "url": f"http://127.0.0.1:{port}",
        "log": Path(tempfile.gettempdir()) / f"recloop-soak-server-{port}.log",
    }
    redis_start(env)
    server = None
    try:
        ws["day"] = prepare(home, args.scale, env)
        ws["users"] = known_users()
        ws["load_before"] = round(os.getloadavg()[0], 2)
        server = start_server(env, port, ws["log"])
        ws["server_pid"] = server.pid
        print(
            f"serving on {ws['url']} (workers {worker_pids(server.pid)}), redis :{redis_port}, "
            f"{len(ws['users'])} known users; warm-up {args.warmup_s}s",
            flush=True,
        )
        raw = asyncio.run(soak_run(args, ws))
        out = report(args, raw, ws)
    finally:
        if server is not None:
            stop_server(server)
        redis_stop(env)
        if args.home is None:
            shutil.rmtree(home.parent, ignore_errors=True)
    text = json.dumps(out, indent=1)
    if args.out:
        args.out.write_text(text)
    brief = {
        k: out[k] for k in ("floors", "fault", "workers", "redis_end", "server_log", "load_1min")
    }
    brief["windows"] = out["windows"]
    print(json.dumps(brief, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
