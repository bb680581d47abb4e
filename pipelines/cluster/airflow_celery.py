"""Airflow's production topology on one machine: the CeleryExecutor with a Redis broker of its
own, the metadata database on the cluster's PostgreSQL, and each component a separate process.

Processes (``<name>`` of the pid file and the log under ``<home>/cluster/airflow/``):

| name              | command                                   | listens on (127.0.0.1) |
|-------------------|-------------------------------------------|------------------------|
| ``broker``        | ``redis-server`` (Celery's queue only)    | ``broker_port``        |
| ``api-server``    | ``airflow api-server`` (UI, REST API, and | ``api_port``           |
|                   | the execution API the workers call)       |                        |
| ``scheduler``     | ``airflow scheduler --skip-serve-logs``   | —                      |
| ``dag-processor`` | ``airflow dag-processor``                 | —                      |
| ``triggerer``     | ``airflow triggerer --skip-serve-logs``   | —                      |
| ``worker<i>``     | ``airflow celery worker -H worker<i>@%h`` | —                      |

The broker is never the online store's Redis (``RECLOOP_REDIS_URL``): a queue flushed or
evicted with the feature store would lose task messages. Celery's results go to the ``airflow``
database (``db+postgresql``). Every process gets :func:`airflow_runner.airflow_env` (the same
DAG folder, ``AIRFLOW_HOME`` and ``RECLOOP_*`` settings as ``airflow standalone``) with the
overrides of :func:`environment`. Tasks share nothing with their upstream but ``RECLOOP_HOME``
(files), the metadata database (XComs) and the services: on Kubernetes ``RECLOOP_HOME`` is the
shared volume. Each worker runs ``concurrency`` tasks at a time (default 1: two workers fill the
two cores of the development box) and prefetches none beyond them, so a busy worker leaves the
next task to an idle one.

A task instance's ``hostname`` names the worker that ran it (``worker<i>@<host>``, through
``[core] hostname_callable`` = :func:`worker_hostname`): several workers on one machine stay
apart in the UI and the metadata database.

Each process runs detached in its own session (started by ``recloop airflow --executor celery``
or ``python -m pipelines.cluster up``) with a pid file; :func:`stop` ends the whole session of
each (task processes included), so it works from any later process.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.cluster import pidfiles
from pipelines.core.settings import Settings

WORKER_ENV = "RECLOOP_AIRFLOW_WORKER"
"""Environment variable naming a worker process (``worker<i>``), read by :func:`worker_hostname`."""

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
"""Airflow's components besides the workers, in start order (the API server first: the
scheduler hands its URL to the tasks, the workers call it)."""

START_TIMEOUT_S = 180.0
"""How long :func:`start` waits for the broker, the API server and each worker."""


@dataclass(frozen=True)
class CeleryTopology:
    """One local Celery topology: the workspace's ``settings``, the SQLAlchemy URL of Airflow's
    PostgreSQL database (``pg_url``), the ports of the broker and the API server, the number of
    workers and the tasks each runs at once."""

    settings: Settings
    pg_url: str
    broker_port: int
    api_port: int
    workers: int = 2
    concurrency: int = 1

    @property
    def run_dir(self) -> Path:
        """:func:`run_dir` of the workspace."""
        return run_dir(self.settings.home)

    @property
    def broker_url(self) -> str:
        """Celery's broker: database 0 of the topology's own ``redis-server``."""
        return f"redis://127.0.0.1:{self.broker_port}/0"

    @property
    def api_url(self) -> str:
        """The API server (UI, REST API ``/api/v2``, execution API ``/execution/``)."""
        return f"http://127.0.0.1:{self.api_port}"

    def names(self) -> list[str]:
        """Every process's name, in start order: broker, components, ``worker1..N``."""
        return ["broker", *COMPONENTS, *worker_names(self.workers)]


def run_dir(home: Path) -> Path:
    """``<home>/cluster/airflow``: pid files, process logs, the broker's working folder."""
    return home / "cluster" / "airflow"


def worker_names(workers: int) -> list[str]:
    """``["worker1", ..., "worker<workers>"]``."""
    return [f"worker{i}" for i in range(1, workers + 1)]


def worker_hostname() -> str:
    """``[core] hostname_callable`` of the workers: ``worker<i>@<host>`` (Celery's node name),
    so task instances tell apart workers that share a machine; the plain host elsewhere."""
    name = os.environ.get(WORKER_ENV)
    return f"{name}@{socket.gethostname()}" if name else socket.gethostname()


def _secrets(run_dir: Path) -> dict[str, str]:
    """The secrets every component must share (JWT signing of the execution and public APIs,
    the API server's session key), generated once into ``secrets.json`` (mode 600)."""
    from pipelines.orchestration.airflow_runner import private_file

    path = run_dir / "secrets.json"
    if path.exists() and path.stat().st_size:
        return json.loads(path.read_text())
    values = {key: base64.b64encode(os.urandom(32)).decode() for key in ("jwt", "api")}
    private_file(path)
    path.write_text(json.dumps(values))
    return values


def environment(topo: CeleryTopology) -> dict[str, str]:
    """The environment of every Airflow process of the topology: the standalone's
    (:func:`airflow_runner.airflow_env`) with the executor, the metadata database, the broker,
    the result backend, the execution API URL, the shared secrets and the worker settings."""
    from pipelines.orchestration.airflow_runner import airflow_env

    secrets = _secrets(topo.run_dir)
    env = airflow_env(topo.settings, api_port=topo.api_port)
    env.update(
        {
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": topo.pg_url,
            "AIRFLOW__CELERY__BROKER_URL": topo.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{topo.pg_url}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(topo.concurrency),
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            # a message unacknowledged this long is redelivered: longer than any task here
            "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT": "21600",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{topo.api_url}/execution/",
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets["jwt"],
            "AIRFLOW__API__SECRET_KEY": secrets["api"],
        }
    )
    return env


def commands(topo: CeleryTopology) -> dict[str, list[str]]:
    """Each process's command line, by name (:meth:`CeleryTopology.names`)."""
    from pipelines.core.redis_server import RedisServer

    airflow = [sys.executable, "-m", "airflow"]
    cmds = {
        "broker": RedisServer(topo.run_dir, topo.broker_port).command(),
        "api-server": [*airflow, "api-server"],
        "scheduler": [*airflow, "scheduler", "--skip-serve-logs"],
        "dag-processor": [*airflow, "dag-processor"],
        "triggerer": [*airflow, "triggerer", "--skip-serve-logs"],
    }
    for name in worker_names(topo.workers):
        cmds[name] = [*airflow, "celery", "worker", "--celery-hostname", f"{name}@%h",
                      "--concurrency", str(topo.concurrency), "--skip-serve-logs"]  # fmt: skip
    return cmds


def migrate(topo: CeleryTopology) -> float:
    """``airflow db migrate`` on the PostgreSQL database (idempotent); returns its seconds.
    ``RuntimeError`` with the tail of its output when it fails."""
    begin = time.perf_counter()
    topo.run_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"],
                          env=environment(topo), capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"airflow db migrate on {topo.pg_url} failed:\n"
                           f"{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")  # fmt: skip
    return time.perf_counter() - begin


def pid_path(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.pid"


def log_path(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.log"


def running_pid(run_dir: Path, name: str) -> int | None:
    """The pid of process ``name`` when its pid file names a live session leader, else None."""
    return pidfiles.running_pid(pid_path(run_dir, name))


def spawn(run_dir: Path, name: str, cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start ``cmd`` detached (a session of its own) with its output in ``<name>.log`` (emptied
    first: a worker's readiness is read from it) and its pid in ``<name>.pid``."""
    from pipelines.orchestration.airflow_runner import private_file

    out = private_file(log_path(run_dir, name), "ab")  # the API server logs the admin password
    with out:
        out.truncate(0)
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    pid_path(run_dir, name).write_text(f"{proc.pid}\n")
    return proc


def _alive(proc: subprocess.Popen, name: str, run_dir: Path) -> None:
    """``RuntimeError`` with the tail of its log when ``proc`` has exited."""
    from pipelines.core.service_process import log_tail

    if proc.poll() is not None:
        raise RuntimeError(f"airflow {name} exited with {proc.returncode}; "
                           f"{log_tail(log_path(run_dir, name))}")  # fmt: skip


def _wait_worker(proc: subprocess.Popen, name: str, run_dir: Path, timeout_s: float) -> None:
    """Wait until worker ``name`` logs Celery's ``<name>@<host> ready.`` line."""
    from pipelines.core.wait import wait_until

    log = log_path(run_dir, name)

    def ready() -> bool:
        _alive(proc, name, run_dir)
        return f"{name}@".encode() in log.read_bytes() and b" ready." in log.read_bytes()

    wait_until(ready, timeout_s, f"celery {name} to be ready ({log})", interval_s=0.5)


def _own_env(name: str) -> dict[str, str]:
    """What a worker adds to :func:`environment`: its name and :func:`worker_hostname`."""
    if not name.startswith("worker"):
        return {}
    return {WORKER_ENV: name, "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname"}


def _wait_started(
    topo: CeleryTopology, name: str, proc: subprocess.Popen, timeout_s: float
) -> None:
    """Wait until ``name`` serves: the broker's port, the API server's health, a worker's ready
    line; the other components only have to stay alive."""
    from pipelines.core.net import port_open
    from pipelines.core.service_process import wait_ready
    from pipelines.core.wait import wait_until

    if name == "broker":
        port = topo.broker_port
        wait_until(lambda: port_open(port), timeout_s, f"the broker on {port}", interval_s=0.05)
    elif name == "api-server":
        url = f"{topo.api_url}/api/v2/monitor/health"
        wait_ready(url, proc, timeout_s, log_path(topo.run_dir, name), name="airflow api-server")
    elif name.startswith("worker"):
        _wait_worker(proc, name, topo.run_dir, timeout_s)
    else:
        _alive(proc, name, topo.run_dir)


def start(topo: CeleryTopology, timeout_s: float = START_TIMEOUT_S) -> dict[str, float]:
    """Start the broker, migrate the database, then start each process not running yet and wait
    for it (:func:`_wait_started`). Returns the seconds from the start to each one serving
    (``migrate``: the migration's own seconds); a process already running counts 0.

    On a failure the processes this call started are stopped and the error propagates."""
    from pipelines.core.net import port_open

    for name, port in (("broker", topo.broker_port), ("api-server", topo.api_port)):
        if running_pid(topo.run_dir, name) is None and port_open(port):
            raise RuntimeError(f"127.0.0.1:{port} (the {name}'s port) is taken by another process")
    topo.run_dir.mkdir(parents=True, exist_ok=True)
    env = environment(topo)
    cmds = commands(topo)
    started: dict[str, subprocess.Popen] = {}
    seconds: dict[str, float] = {}
    begin = time.perf_counter()
    try:
        for name in topo.names():
            if name == COMPONENTS[0]:  # the broker serves: migrate before any Airflow process
                seconds["migrate"] = migrate(topo)
            if running_pid(topo.run_dir, name) is not None:
                seconds[name] = 0.0
                continue
            started[name] = spawn(topo.run_dir, name, cmds[name], {**env, **_own_env(name)})
            if name == "broker":
                _wait_started(topo, name, started[name], timeout_s)
                seconds[name] = time.perf_counter() - begin
        for name, proc in started.items():
            if name not in seconds:
                _wait_started(topo, name, proc, timeout_s)
                seconds[name] = time.perf_counter() - begin
    except BaseException:
        stop(topo.run_dir, list(started), grace_s=5.0)
        raise
    return seconds


def status(run_dir: Path) -> dict[str, int | None]:
    """``{name: pid or None}`` of every process that has a pid file in ``run_dir``."""
    names = sorted(p.stem for p in run_dir.glob("*.pid"))
    return {name: running_pid(run_dir, name) for name in names}


def stop(run_dir: Path, names: list[str] | None = None, grace_s: float = 30.0) -> list[str]:
    """Stop the processes ``names`` (default: every one with a pid file): SIGTERM to every
    process of their sessions (Celery's warm shutdown: a running task may finish), SIGKILL to
    what is left after ``grace_s`` seconds (:func:`pidfiles.stop`). Returns the names that
    were running."""
    names = list(status(run_dir)) if names is None else names
    stopped = pidfiles.stop([pid_path(run_dir, name) for name in names], grace_s=grace_s)
    return [path.stem for path in stopped]
