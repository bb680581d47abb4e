"""Soak test: ``recloop serve --workers 2`` under steady load with feedback, Redis killed once.

    .venv/bin/python benchmarks/bench_soak.py [--minutes 10] [--rps 100] [--scale small]
        [--home DIR] [--warmup-s 60] [--outage-s 30] [--grace-s 5] [--click-rate 0.3]
        [--max-lag-p99-ms 10] [--max-lag-ms 100] [--redis-port P] [--port P] [--out FILE.json]

Exit status: 0 a valid run with every floor met; 1 a valid run with a floor missed; 2 an
**invalid run** (the load generator did not keep its schedule: ``INVALID RUN`` and why).

1. **Workspace**: ``--scale`` (tiny/small) built by ``tests.helpers.tiny_trained_workspace``
   (2 simulated days through the daily DAG's task bodies, in-process), so a champion bundle
   exists (``--home`` reuses one built before; its latest validated day is then
   re-materialized). Redis is the workspace's own, started the way an operator starts it
   (``infra/redis.sh start``: daemonized, ``maxmemory`` 1gb, ``volatile-ttl``, pid file under
   ``RECLOOP_HOME``) on ``--redis-port`` (default a free loopback port).
2. **Server**: ``recloop serve --workers 2`` (a real subprocess, default settings, loopback,
   ``--port`` or a free one, its output in ``$TMPDIR/recloop-soak-server-PORT.log``); ready once
   ``/health/ready`` answers 200. Its worker processes are the supervisor's ``spawn_main``
   children.
3. **Load** (open loop, fixed rate, the minimal asyncio HTTP/1.1 client of
   ``bench_serving._http_post``): ``/recommend`` ``i`` is due at ``start + i / rps`` and is
   started then whatever earlier requests are doing, on an idle kept-alive connection (a new
   one when none is idle, at most :data:`POOL_SIZE`; none idle over :data:`IDLE_MAX_S`, below
   uvicorn's 5 s keep-alive); its latency counts from that due time (no coordinated omission).
   Its **send lag** is how late its bytes were written against the due time (event-loop delay
   plus any wait for a connection): p50 / p99 / max over the measured run; above
   ``--max-lag-p99-ms`` (p99) or ``--max-lag-ms`` (max) the run is invalid (the offered load
   was not what it claims: at 100 req/s a p99 of 10 ms is one inter-arrival gap). On a box
   shared with other jobs the lag is the OS not running the client (it needs a few % of a core):
   ``--client-nice -5`` (root) raises the load generator's priority alone; the server, Redis
   and the re-materialization keep their own. Users: the
   champion's known users (90 %) and new ids (10 %), k=10. After each 200, with probability
   ``--click-rate`` a ``/feedback`` click on one shown item (position drawn with weight
   ``(1+pos)^-0.7``, the simulator's examination curve), sent on a new connection each time (as
   a browser's beacon would be: accepted by either worker, so about half reach the worker that
   did not serve the request and need the request record shared through Redis), and 10 % of
   those clicks sent twice (the repeat must come back ``duplicate: true``); a feedback call's
   latency counts from its send, and it belongs to the window of its ``/recommend``. First
   ``--warmup-s`` seconds at the same rate, not counted; then ``--minutes`` measured.
4. **Fault**: at the middle of the measured run the workspace's ``redis-server`` is SIGKILLed
   (pid from its pid file); ``--outage-s`` later it is started again on the same port
   (``infra/redis.sh start``). It runs without persistence, so it comes back empty: when
   database 0 has no keys the latest validated day is re-materialized
   (``recloop features materialize --date D --force``, a subprocess at ``nice``
   :data:`MATERIALIZE_NICE`: a batch job that in production runs beside, not inside, the
   serving box's CPU budget; on 2 shared cores at normal priority it starves the service and the
   load generator alike). The **outage window** is
   from the kill to the end of that materialization plus ``--grace-s`` (the service's Redis
   breaker cool-down is 2 s); a request belongs to the window its due time falls in.
   **Expected in the outage**: a request served then is not shared through Redis, so a click on
   it that the *other* worker answers gets 503 "shared request store does not answer" while
   Redis is down, 404 "unknown request_id" once it is back empty (that worker never saw it).
   Such answers in the outage window (a feedback belongs to it when its request was served or
   it was sent there) are counted apart (``unshared_404``), not as errors; anywhere else they
   are errors.
5. **Reported** (stdout JSON, also ``--out``): the client's check (valid or not and why, send
   lag, its CPU seconds); per window (before / outage / after the outage) the offered rate,
   requests, errors (non-2xx by status, transport errors by type), ``unshared_404``, degraded
   share, p50/p99 ms and send lag of ``/recommend`` and ``/feedback``; outside the outage
   (before + after) the same, with the floors of issue 17 checked (0 errors, p99 ≤ 50 ms, RSS
   growth ≤ 10 %); each worker's RSS (MiB) and open files (``/proc/PID/fd``) after warm-up and at
   the end (and sampled every 10 s); Redis ``used_memory`` and key counts before the kill, after
   the restore, at the end; a 10 s timeline; the server output's line and Traceback counts and
   commonest messages; the load average.

The load generator runs on the same machine as the server and Redis (2 cores here): latency
figures include its own CPU use and are conservative.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
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
MAX_LAG_P99_MS = 10.0
"""Default bound on the client's send lag p99 (ms): above it the run is invalid."""
MAX_LAG_MS = 100.0
"""Default bound on the client's largest send lag (ms): above it the run is invalid."""


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


def redis_start(env: dict[str, str], nice: int | None = None) -> None:
    """``infra/redis.sh start`` (daemonized, maxmemory, pid file under ``RECLOOP_HOME``), at
    ``nice`` (absolute; default: this process's)."""
    subprocess.run(
        ["bash", str(REPO / "infra" / "redis.sh"), "start"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        preexec_fn=None if nice is None else lambda: os.setpriority(os.PRIO_PROCESS, 0, nice),
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
    """A workspace with a champion, its latest validated day in Redis; returns that day. Built
    once, in-process, by ``tests.helpers.tiny_trained_workspace`` (the daily DAG's task bodies
    over :data:`DAYS`); a workspace that has a champion already is reused, its latest day
    re-materialized."""
    os.environ.update({k: env[k] for k in ("RECLOOP_HOME", "RECLOOP_REDIS_URL")})
    os.environ["RECLOOP_SCALE"] = scale
    for name in ("RECLOOP_MLFLOW_URI", "RECLOOP_ADMIN_TOKEN"):
        os.environ.pop(name, None)
    from pipelines.core import layout
    from pipelines.core.settings import Settings
    from pipelines.core.validated import validated_dates
    from pipelines.features.store import apply_repo, materialize_date
    from pipelines.release import registry

    settings = Settings.from_env()
    if layout.mlflow_db_path(settings).exists() and registry.get_alias(settings, "champion"):
        last = validated_dates(settings)[-1]
        apply_repo(settings)
        materialize_date(settings, last, force=True)
        print(f"workspace {home}: champion {registry.get_alias(settings, 'champion')}", flush=True)
        return str(last)
    from tests.helpers import tiny_trained_workspace

    t0 = time.perf_counter()
    _, patched = tiny_trained_workspace(home, env["RECLOOP_REDIS_URL"], DAYS, scale)
    patched.undo()  # back to the environment set above (the same workspace)
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
    """``recloop serve --workers 2`` on ``port``, its output in ``log_path``; returns once
    ``/health/ready`` is 200 (killed, and the log's tail raised, when it exits or 300 s pass)."""
    from pipelines.core.service_process import start_service

    cmd = [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port), "--workers", "2"]
    url = f"http://127.0.0.1:{port}/health/ready"
    return start_service(cmd, env, url, 300, log_path, cwd=REPO)


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
    """One sample: ``t`` (s since the measured start), each worker's stats, Redis's, the
    machine's 1-minute load average (other tenants' load shows there)."""
    workers = [proc_stats(pid) for pid in worker_pids(server_pid)]
    return {"t": round(t, 1), "workers": workers, "redis": redis_stats(redis_port),
            "load_1min": round(os.getloadavg()[0], 2)}  # fmt: skip


# --- load -----------------------------------------------------------------------------------

REQUEST_TIMEOUT_S = 10.0
POOL_SIZE = 256
"""Most ``/recommend`` connections open at once (100 req/s at 2.5 s latency)."""
POOL_WARM = 16
"""Connections opened before the warm-up."""
IDLE_MAX_S = 2.0
MATERIALIZE_NICE = 10
"""``nice`` increment of the re-materialization after the restart (a batch job)."""
"""Seconds a kept-alive connection may sit idle and still be reused (uvicorn's limit: 5)."""
"""Seconds a call may take before it counts as a ``TimeoutError`` (its connection dropped)."""
UNKNOWN_REQUEST = b"unknown request_id"
STORE_DOWN = b"shared request store (Redis) does not answer"
"""In the body of a ``/feedback`` 404 for a request the answering worker does not know."""


@dataclass
class Record:
    """One HTTP call: ``kind`` (recommend / feedback / feedback_repeat); ``due`` (s since the
    measured start, negative in the warm-up) of the ``/recommend`` it belongs to, so a click
    falls in the window its request was served in; ``outcome`` (the status code as text, or a
    transport error's type); ``ms`` latency (recommend: from due; feedback: from its send);
    ``lag_ms`` (recommend) how late its bytes were written against its due time; ``degraded``
    (recommend 200s); ``duplicate`` (feedback 2xx); ``unknown`` (a feedback 404 "unknown
    request_id" or 503 "shared request store … does not answer": the answering worker never
    saw the request and Redis could not tell it); ``detail`` (a non-2xx answer's body, hex ids
    masked, 100 characters); ``sent`` (s since the measured start) when the call was sent
    (recommend: ``due``)."""

    kind: str
    due: float
    outcome: str
    ms: float
    sent: float | None = None
    lag_ms: float | None = None
    degraded: bool = False
    duplicate: bool | None = None
    unknown: bool = False
    detail: str = ""


class Pool:
    """Kept-alive connections for ``/recommend``: an idle one is reused, else a new one opened,
    at most ``size`` at a time (a call then waits for one: that wait shows as send lag). A
    connection idle for :data:`IDLE_MAX_S` or closed by the server is not reused (uvicorn closes
    keep-alive connections idle for 5 s: a request written as it does would fail for the
    client's sake, not the server's)."""

    def __init__(self, port: int, size: int) -> None:
        self.port, self.size = port, size
        self.idle: list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.free = asyncio.Semaphore(size)
        self.opened = 0

    async def get(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        await self.free.acquire()
        while self.idle:
            since, reader, writer = self.idle.pop()
            if time.perf_counter() - since < IDLE_MAX_S and not reader.at_eof():
                return reader, writer
            writer.close()
        try:
            conn = await asyncio.open_connection("127.0.0.1", self.port)
        except BaseException:
            self.free.release()
            raise
        self.opened += 1
        return conn

    def put(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.idle.append((time.perf_counter(), *conn))
        self.free.release()

    def drop(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        conn[1].close()
        self.free.release()

    def close(self) -> None:
        for _, _, writer in self.idle:
            writer.close()
        self.idle.clear()


@dataclass
class Soak:
    """The run's state: connections, schedule and what happened."""

    pool: Pool
    port: int
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


async def post(conn: Any, path: str, body: dict) -> tuple[str, bytes]:
    """``bench_serving._http_post`` (the minimal HTTP/1.1 client) with a timeout:
    ``(status as text, body)``; transport errors and timeouts are raised."""
    from benchmarks.bench_serving import _http_post

    data = json.dumps(body).encode()
    status, raw = await asyncio.wait_for(_http_post(*conn, path, data), REQUEST_TIMEOUT_S)
    return str(status), raw


def record(
    soak: Soak,
    kind: str,
    due: float,
    outcome: str,
    raw: bytes,
    ms: float,
    sent: float | None = None,
) -> dict | None:
    """Append the call's :class:`Record` (``sent``: perf_counter when sent, default ``due``);
    the JSON answer of a 2xx, else None."""
    rec = Record(kind, due - soak.t0, outcome, ms, sent=(due if sent is None else sent) - soak.t0)
    out = json.loads(raw) if outcome.startswith("2") else None
    if out is not None:
        rec.degraded = bool(out.get("degraded", False))
        rec.duplicate = out.get("duplicate")
    rec.unknown = (outcome == "404" and UNKNOWN_REQUEST in raw) or (
        outcome == "503" and STORE_DOWN in raw
    )
    if out is None:
        rec.detail = re.sub(r"[0-9a-f]{32}", "#", raw[:200].decode(errors="replace"))[:100]
    soak.records.append(rec)
    return out


async def recommend(soak: Soak, user: str, due: float) -> dict | None:
    """``/recommend`` on a kept-alive connection; latency from ``due`` (perf_counter), the
    send lag noted; the JSON answer of a 2xx, else None."""
    body = {"user_id": user, "k": 10}
    conn, lag = None, None
    try:
        conn = await soak.pool.get()
        lag = time.perf_counter() - due
        outcome, raw = await post(conn, "/recommend", body)
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        if conn is not None:
            soak.pool.drop(conn)
        ms = (time.perf_counter() - due) * 1e3
        rec = Record("recommend", due - soak.t0, type(exc).__name__, ms)
        rec.lag_ms = None if lag is None else lag * 1e3
        soak.records.append(rec)
        return None
    soak.pool.put(conn)
    out = record(soak, "recommend", due, outcome, raw, (time.perf_counter() - due) * 1e3)
    soak.records[-1].lag_ms = lag * 1e3
    return out


async def feedback(soak: Soak, kind: str, body: dict, due: float) -> dict | None:
    """``/feedback`` on a new connection (a browser beacon: either worker may take it), filed
    under the window of the request served at ``due``; latency from its send."""
    sent = time.perf_counter()
    conn = None
    try:
        conn = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", soak.port), REQUEST_TIMEOUT_S
        )
        outcome, raw = await post(conn, "/feedback", body)
    except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
        outcome, raw = type(exc).__name__, b""
    finally:
        if conn is not None:
            conn[1].close()
    return record(soak, kind, due, outcome, raw, (time.perf_counter() - sent) * 1e3, sent)


async def one(soak: Soak, user: str, due: float, rng: random.Random) -> None:
    """A recommend call, then (maybe) a click on one shown item, sometimes sent twice."""
    out = await recommend(soak, user, due)
    if out is None or not out.get("items") or rng.random() >= soak.click_rate:
        return
    items = [it["item_id"] for it in out["items"]]
    item = rng.choices(items, weights=[(1.0 + pos) ** -0.7 for pos in range(len(items))])[0]
    body = {"request_id": out["request_id"], "item_id": item, "event": "click"}
    first = await feedback(soak, "feedback", body, due)
    if first is not None and rng.random() < 0.1:
        await feedback(soak, "feedback_repeat", body, due)


async def schedule(soak: Soak, seconds: float, start_index: int, rng: random.Random) -> None:
    """Requests due at ``soak.t0 + i / rps`` for ``i`` in ``[start_index, start_index +
    seconds * rps)``, each started at its due time whatever earlier ones are doing (open loop)."""
    for i in range(start_index, start_index + int(seconds * soak.rps)):
        due = soak.t0 + i / soak.rps
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        user = soak.users[rng.randrange(len(soak.users))] if rng.random() < 0.9 else f"n{i}"
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
    await asyncio.to_thread(redis_start, ws["env"], ws["nice"])
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
            preexec_fn=lambda: os.setpriority(os.PRIO_PROCESS, 0, ws["nice"] + MATERIALIZE_NICE),
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
    """Warm-up then the measured run with the fault in its middle; the raw results, with the
    load generator's CPU seconds over the run."""
    pool = Pool(ws["port"], POOL_SIZE)
    for _ in range(POOL_WARM):  # opened up front: connecting is not counted as send lag
        pool.put(await pool.get())
    soak = Soak(pool, ws["port"], ws["users"], args.rps, args.click_rate)
    seconds = args.minutes * 60.0
    soak.t0 = time.perf_counter() + args.warmup_s
    rng = random.Random(0)
    fault, samples, stop = Fault(), [], asyncio.Event()
    sampling = asyncio.create_task(sampler(soak, ws, samples, stop))
    faulting = asyncio.create_task(inject(soak, seconds / 2, args.outage_s, ws, fault))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        await schedule(soak, args.warmup_s + seconds, -int(args.warmup_s * args.rps), rng)
        await asyncio.gather(*list(soak.tasks))
        await faulting
    finally:
        stop.set()
        await sampling
        pool.close()
    cpu = {"cpu_s": round(time.process_time() - cpu0, 1),
           "wall_s": round(time.perf_counter() - wall0, 1), "connections_opened": pool.opened}  # fmt: skip
    end = time.perf_counter() - soak.t0
    samples.append(await asyncio.to_thread(sample, ws["server_pid"], ws["redis_port"], end))
    return {"records": soak.records, "fault": fault, "samples": samples, "seconds": seconds,
            "client": cpu}  # fmt: skip


# --- the report -----------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float | None:
    import numpy as np

    return round(float(np.percentile(values, q)), 2) if values else None


def lag_stats(records: list[Record]) -> dict[str, Any]:
    """p50 / p99 / max send lag (ms) of the ``/recommend`` calls among ``records`` that were
    sent."""
    lags = [r.lag_ms for r in records if r.kind == "recommend" and r.lag_ms is not None]
    return {"sent": len(lags), "p50_ms": pct(lags, 50), "p99_ms": pct(lags, 99),
            "max_ms": pct(lags, 100)}  # fmt: skip


def summarize(records: list[Record], outage: bool = False) -> dict[str, Any]:
    """Counts, errors by outcome, degraded share and latency percentiles of ``records``; the
    recommend calls' send lag. In the outage window (``outage``) a feedback 404 "unknown
    request_id" or 503 "store does not answer" is counted apart (``unshared_404``: the
    answering worker never saw the request and Redis could not tell it), not as an error;
    outside it is an error."""
    out: dict[str, Any] = {}
    for kind in ("recommend", "feedback", "feedback_repeat"):
        rs = [r for r in records if r.kind == kind]
        ok = [r for r in rs if r.outcome.startswith("2")]
        unshared = [r for r in rs if r.unknown] if outage else []
        errors: dict[str, int] = {}
        details: dict[str, int] = {}
        for r in rs:
            if not r.outcome.startswith("2") and not (outage and r.unknown):
                errors[r.outcome] = errors.get(r.outcome, 0) + 1
                key = f"{r.outcome} {r.detail}".strip()
                details[key] = details.get(key, 0) + 1
        s = {
            "calls": len(rs),
            "ok": len(ok),
            "errors": sum(errors.values()),
            "errors_by_outcome": errors,
            "error_details": sorted(details.items(), key=lambda kv: -kv[1])[:3],
            "p50_ms": pct([r.ms for r in ok], 50),
            "p99_ms": pct([r.ms for r in ok], 99),
            "max_ms": pct([r.ms for r in ok], 100),
        }
        if kind == "recommend":
            s["degraded"] = sum(r.degraded for r in ok)
            s["degraded_share"] = round(s["degraded"] / len(ok), 4) if ok else None
            s["send_lag"] = lag_stats(rs)
        else:
            s["unshared_404"] = len(unshared)
        if kind == "feedback_repeat":
            s["answered_duplicate"] = sum(bool(r.duplicate) for r in ok)
        out[kind] = s
    return out


def windows(raw: dict[str, Any], grace_s: float) -> dict[str, dict]:
    """Records (measured ones) split by due time: before the kill, the outage (kill → features
    restored + ``grace_s``), after; and ``outside`` = before + after. A feedback call *sent*
    in the outage belongs to it too, whenever its request was served (one sent a moment after
    the kill for a request served a moment before it meets a dead Redis). Each window's span
    (s since the measured start) and offered rate (recommend calls due per second)."""
    f: Fault = raw["fault"]
    lo = f.killed or 0.0
    hi = min((f.restored or 0.0) + grace_s, raw["seconds"])
    rec = [r for r in raw["records"] if r.due >= 0]

    def during(r: Record) -> bool:
        return lo <= r.due < hi or (r.sent is not None and lo <= r.sent < hi)

    parts = {
        "before": [r for r in rec if r.due < lo and not during(r)],
        "outage": [r for r in rec if during(r)],
        "after": [r for r in rec if r.due >= hi and not during(r)],
    }
    parts["outside"] = parts["before"] + parts["after"]
    spans = {"before": lo, "outage": hi - lo, "after": raw["seconds"] - hi,
             "outside": raw["seconds"] - (hi - lo)}  # fmt: skip
    out = {name: summarize(rs, outage=name == "outage") for name, rs in parts.items()}
    for name in out:
        out[name]["window_s"] = {
            "before": [0, round(lo, 1)],
            "outage": [round(lo, 1), round(hi, 1)],
            "after": [round(hi, 1), raw["seconds"]],
        }.get(name)
        calls = out[name]["recommend"]["calls"]
        out[name]["offered_rps"] = round(calls / spans[name], 1) if spans[name] > 0 else None
    return out


def timeline(records: list[Record]) -> list[dict[str, Any]]:
    """Per :data:`SAMPLE_S` bucket of due time: recommend calls, errors, degraded, p99 ms and
    p99 send lag ms; feedback calls, non-2xx answers and of those the 404s "unknown
    request_id"."""
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
                "lag_p99_ms": lag_stats(rec)["p99_ms"],
                "feedback": len(fb),
                "feedback_non2xx": sum(not r.outcome.startswith("2") for r in fb),
                "feedback_404_unknown": sum(r.unknown for r in fb),
            }
        )
    return out


def client_check(args: argparse.Namespace, raw: dict[str, Any]) -> dict[str, Any]:
    """Whether the load generator kept its schedule over the measured run: send lag p99 ≤
    ``--max-lag-p99-ms`` and max ≤ ``--max-lag-ms`` (``valid``; ``why`` lists what failed);
    ``scheduled`` and ``sent`` (written on a connection: the others could not connect); its CPU
    seconds."""
    measured = [r for r in raw["records"] if r.due >= 0 and r.kind == "recommend"]
    lag = lag_stats(measured)
    scheduled = int(raw["seconds"] * args.rps)
    why = []
    if (lag["p99_ms"] or 0.0) > args.max_lag_p99_ms:
        why.append(f"send lag p99 {lag['p99_ms']} ms > {args.max_lag_p99_ms} ms")
    if (lag["max_ms"] or 0.0) > args.max_lag_ms:
        why.append(f"send lag max {lag['max_ms']} ms > {args.max_lag_ms} ms")
    return {"valid": not why, "why": why, "scheduled": scheduled, "send_lag": lag,
            "bounds_ms": {"p99": args.max_lag_p99_ms, "max": args.max_lag_ms},
            **raw["client"]}  # fmt: skip


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
    from collections import Counter

    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    masked = Counter(re.sub(r"[0-9a-f]{32}|\d+(\.\d+)?", "#", line)[:160] for line in lines)
    return {
        "path": str(path),
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
    unshared = sum(win["outage"][k]["unshared_404"] for k in ("feedback", "feedback_repeat"))
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
            "client_nice": args.client_nice,
        },
        "client": client_check(args, raw),
        "floors": floors,
        "unshared_404_in_outage": unshared,
        "windows": win,
        "fault": {k: (round(v, 1) if isinstance(v, float) else v) for k, v in vars(f).items()},
        "workers": wk,
        "redis_end": raw["samples"][-1]["redis"],
        "server_log": server_log_counts(ws["log"]),
        "load_1min": [ws["load_before"], round(os.getloadavg()[0], 2)],
        "timeline": timeline(raw["records"]),
        "samples": raw["samples"],
    }


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="measured minutes")
    p.add_argument("--rps", type=float, default=100.0, help="/recommend calls per second")
    p.add_argument("--scale", default="small", choices=("tiny", "small"))
    p.add_argument("--home", type=Path, help="workspace to build or reuse (default: a temp dir)")
    p.add_argument("--warmup-s", type=float, default=60.0, help="seconds of load not counted")
    p.add_argument("--outage-s", type=float, default=30.0, help="seconds Redis stays down")
    p.add_argument("--grace-s", type=float, default=5.0,
                   help="seconds after the features are back still counted in the outage")  # fmt: skip
    p.add_argument("--click-rate", type=float, default=0.3, help="share of answers clicked")
    p.add_argument("--max-lag-p99-ms", type=float, default=MAX_LAG_P99_MS,
                   help="the run is invalid when the client's send lag p99 is above this")  # fmt: skip
    p.add_argument("--max-lag-ms", type=float, default=MAX_LAG_MS,
                   help="the run is invalid when the client's largest send lag is above this")  # fmt: skip
    p.add_argument("--client-nice", type=int, default=0,
                   help="nice increment of the load generator alone (negative needs root): on "
                        "a box shared with other jobs, keeps its schedule")  # fmt: skip
    p.add_argument("--redis-port", type=int, help="the workspace Redis's port (default: free)")
    p.add_argument("--port", type=int, help="the service's port (default: free)")
    p.add_argument("--out", type=Path, help="also write the JSON report here")
    return p.parse_args()


def main() -> int:
    """Exit status: 0 valid run with every floor met, 1 a floor missed, 2 the run is invalid
    (the load generator did not keep its schedule)."""
    args = parse_args()
    from pipelines.core.net import free_port

    home = args.home or Path(tempfile.mkdtemp(prefix="recloop-bench-soak-")) / "home"
    home.mkdir(parents=True, exist_ok=True)
    redis_port, port = args.redis_port or free_port(), args.port or free_port()
    env = {**redis_env(home, redis_port), "RECLOOP_SCALE": args.scale}
    ws: dict[str, Any] = {
        "home": home,
        "redis_port": redis_port,
        "port": port,
        "env": env,
        "url": f"http://127.0.0.1:{port}",
        "nice": os.getpriority(os.PRIO_PROCESS, 0),
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
        if args.client_nice:  # the load generator only: server and Redis keep ws["nice"]
            os.setpriority(os.PRIO_PROCESS, 0, ws["nice"] + args.client_nice)
        raw = asyncio.run(soak_run(args, ws))
        out = report(args, raw, ws)
    finally:
        if server is not None:
            stop_server(server)
        redis_stop(env)
        if args.home is None:
            shutil.rmtree(home.parent, ignore_errors=True)
    if args.out:
        args.out.write_text(json.dumps(out, indent=1))
    keys = ("client", "floors", "unshared_404_in_outage", "fault", "workers", "redis_end",
            "server_log", "load_1min", "windows")  # fmt: skip
    print(json.dumps({k: out[k] for k in keys}, indent=1))
    if not out["client"]["valid"]:
        print(f"INVALID RUN: the load generator fell behind: {out['client']['why']}", flush=True)
        return 2
    missed = [name for name, (_, ok) in out["floors"].items() if not ok]
    print(f"valid run; floors missed: {missed or 'none'}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
