"""Run the project's DAGs through Airflow itself, with ``AIRFLOW_HOME`` inside the workspace.

``recloop run`` uses ``airflow dags test DAG DATE`` (one in-process DAG run per logical date, the
same task code the scheduler runs; through :mod:`pipelines.orchestration.dag_test`, which gives
the run its real start time) and then reads each task instance's state from Airflow's metadata
database. ``recloop airflow`` starts ``airflow standalone`` (scheduler, DAG processor,
triggerer, API server + UI) on loopback with the same environment.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pipelines.core import layout, schema
from pipelines.core.settings import Settings
from pipelines.core.wait import wait_until

REPO = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO / "dags"
DAILY_DAG = "recloop_daily"


def airflow_env(settings: Settings, api_port: int = 8080) -> dict[str, str]:
    """The environment of every Airflow process recloop starts (metadata DB: SQLite in the workspace)."""
    home = settings.airflow_home
    bin_dir = str(Path(sys.executable).parent)
    env = dict(os.environ)
    env.update(settings.as_env())
    env.update(
        {
            "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{layout.airflow_db_path(settings)}",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(layout.airflow_logs_dir(settings)),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(
                layout.airflow_passwords_path(settings)
            ),
            # torch's OpenMP spin-waits stall on a shared 2-core box (benchmarks/README.md)
            "OMP_WAIT_POLICY": env.get("OMP_WAIT_POLICY", "PASSIVE"),
            "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        }
    )
    return env


def ensure_db(settings: Settings) -> None:
    """``airflow db migrate`` once per workspace (a stamp file records it). The database
    (connections, variables, run history) is created mode 600 before the migration and set to
    600 when it exists (SQLite gives its journals the database's mode)."""
    settings.ensure_dirs()
    stamp = layout.airflow_migrated_path(settings)
    db = layout.airflow_db_path(settings)
    if stamp.exists() and db.exists():
        db.chmod(0o600)  # a workspace made before this rule
        return
    private_file(db)  # SQLite takes an empty file as a new database
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=airflow_env(settings),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"airflow db migrate failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        )
    stamp.write_text(dt.datetime.now(dt.UTC).isoformat())


@dataclass
class DagRunResult:
    """Outcome of one DAG run: its state and each task's state and try number."""

    dag_id: str
    date: dt.date
    state: str
    tasks: list[tuple[str, str, int]] = field(default_factory=list)
    seconds: float = 0.0
    log_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.state == "success"

    def __str__(self) -> str:
        lines = [f"{self.dag_id} {self.date}: {self.state} in {self.seconds:.1f}s"]
        lines += [
            f"  {task:<24} {state or 'none':<10} try {tries}" for task, state, tries in self.tasks
        ]
        return "\n".join(lines)


def _read_states(
    settings: Settings, dag_id: str, date: dt.date
) -> tuple[str, list[tuple[str, str, int]]]:
    """The newest run of ``dag_id`` for logical date ``date``: (run state, [(task, state, try)])."""
    con = sqlite3.connect(layout.airflow_db_path(settings))
    try:
        row = con.execute(
            "SELECT run_id, state FROM dag_run WHERE dag_id = ? AND date(logical_date) = ? "
            "ORDER BY id DESC LIMIT 1",
            (dag_id, date.isoformat()),
        ).fetchone()
        if row is None:
            return "missing", []
        run_id, state = row
        tasks = con.execute(
            "SELECT task_id, state, try_number FROM task_instance WHERE dag_id = ? AND run_id = ? "
            "ORDER BY start_date IS NULL, start_date, task_id",
            (dag_id, run_id),
        ).fetchall()
        return state, [(t, s, int(n or 0)) for t, s, n in tasks]
    finally:
        con.close()


def run_dag(
    settings: Settings,
    date: str | dt.date,
    dag_id: str = DAILY_DAG,
    echo: bool = False,
    conf: dict | None = None,
) -> DagRunResult:
    """Run ``dag_id`` for one logical date with ``airflow dags test`` and return each task's outcome.

    The run starts and ends at wall-clock times (:mod:`pipelines.orchestration.dag_test`). A
    previous run of the same date is replaced (Airflow's ``dags test`` clears it), so a rerun
    recomputes the day's outputs. ``conf``: the run's params (``--conf`` JSON), e.g.
    ``{"action": "pin", "reason": "..."}`` for ``recloop_release``.
    """
    import json

    day = schema.parse_date(date)
    ensure_db(settings)
    start = time.perf_counter()
    extra = ["--conf", json.dumps(conf)] if conf else []
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.orchestration.dag_test", dag_id, day.isoformat(), *extra],
        env=airflow_env(settings),
        stdout=None if echo else subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seconds = time.perf_counter() - start
    state, tasks = _read_states(settings, dag_id, day)
    if proc.returncode != 0 and state == "success":
        state = "failed"
    return DagRunResult(dag_id, day, state, tasks, seconds, (proc.stdout or "")[-4000:])


def start_standalone(
    settings: Settings, port: int = 8080, log_file: Path | None = None
) -> subprocess.Popen:
    """Start ``airflow standalone`` (scheduler, DAG processor, triggerer, API server/UI) on loopback.

    Its output goes to ``log_file`` (default ``RECLOOP_HOME/airflow/standalone.log``). It runs
    in a session of its own: stop it (and every component) with :func:`stop_standalone`.
    Run through :func:`standalone_main`: the scheduler and the triggerer without their log
    servers, which Airflow binds to every interface (nothing of it listens beyond loopback).
    The log (it prints the generated admin password) and ``passwords.json`` (SimpleAuthManager
    appends to the file it finds) are created, or set, to mode 600 first (:func:`private_file`).
    """
    ensure_db(settings)
    log_file = log_file or layout.airflow_standalone_log_path(settings)
    private_file(layout.airflow_passwords_path(settings))  # Airflow appends to it: mode kept
    out = private_file(log_file, "ab")  # it prints the admin password
    return subprocess.Popen(
        [sys.executable, "-c", f"from {__name__} import standalone_main; standalone_main()"],
        env=airflow_env(settings, api_port=port),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


SKIP_SERVE_LOGS = ("scheduler", "triggerer")
"""Components ``airflow standalone`` starts with a log server (worker logs on
``[logging] worker_log_server_port`` 8793, trigger logs on 8794) bound to every interface:
Airflow 3.3 has no host setting for it. recloop runs them with ``--skip-serve-logs``: on one
machine the API server reads task logs from the local log folder."""


def standalone_main() -> None:
    """``airflow standalone`` (as ``python -m airflow standalone``) whose scheduler and
    triggerer are started with ``--skip-serve-logs`` (:data:`SKIP_SERVE_LOGS`)."""
    from airflow.__main__ import main
    from airflow.cli.commands import standalone_command

    base = standalone_command.SubCommand.__init__

    def init(self: Any, parent: Any, name: str, command: list[str], env: dict[str, str]) -> None:
        if command[:1] and command[0] in SKIP_SERVE_LOGS and "--skip-serve-logs" not in command:
            command = [*command, "--skip-serve-logs"]
        base(self, parent, name, command, env)

    standalone_command.SubCommand.__init__ = init  # type: ignore[method-assign]
    sys.argv = ["airflow", "standalone"]
    main()


def private_file(path: Path, mode: str | None = None) -> BinaryIO | None:
    """Create ``path`` if missing and make it readable and writable by its owner only (mode
    600, also when it existed with a wider mode). With ``mode`` (``"ab"``, ...) the file opened
    in that mode is returned (created 600 from the start: no window where it is readable);
    otherwise None."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)
    if mode is None:
        os.close(fd)
        return None
    return os.fdopen(fd, mode)


def stop_standalone(proc: subprocess.Popen, grace_s: float = 30.0) -> list[signal.Signals]:
    """Stop what :func:`start_standalone` started: SIGINT (its clean shutdown), then SIGTERM, then
    SIGKILL to every process of its session still alive after ``grace_s`` seconds; returns the
    signals sent (:func:`pipelines.orchestration.process_session.stop_session`)."""
    from pipelines.orchestration.process_session import stop_session

    return stop_session(proc, grace_s)


def admin_password(settings: Settings, timeout: float = 60.0) -> str:
    """The ``admin`` password SimpleAuthManager generated (waits for the file to appear)."""
    import json

    path = layout.airflow_passwords_path(settings)

    def password() -> str | None:
        if path.exists() and path.stat().st_size > 0:
            try:
                return json.loads(path.read_text())["admin"]
            except (json.JSONDecodeError, KeyError):
                pass
        return None

    try:
        return wait_until(password, timeout, f"the admin password in {path}")
    except TimeoutError:
        raise RuntimeError(
            f"Airflow wrote no admin password to {path} within {timeout:.0f}s"
        ) from None


def wait_ready(port: int, timeout: float = 120.0) -> None:
    """Wait until the API server answers ``/api/v2/monitor/health``."""
    import httpx

    url = f"http://127.0.0.1:{port}/api/v2/monitor/health"

    def healthy() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, timeout, url, interval_s=1.0)
    except TimeoutError:
        raise RuntimeError(f"Airflow API server not ready at {url} after {timeout:.0f}s") from None


def api_client(port: int, password: str, timeout: float = 60.0) -> Any:
    """An ``httpx.Client`` on the API server's REST API (``/api/v2``) on 127.0.0.1:``port``,
    authenticated as ``admin`` with ``password`` (a bearer token from ``/auth/token``)."""
    import httpx

    base = f"http://127.0.0.1:{port}"
    token = httpx.post(f"{base}/auth/token", json={"username": "admin", "password": password},
                       timeout=timeout).json()["access_token"]  # fmt: skip
    return httpx.Client(base_url=f"{base}/api/v2", timeout=timeout,
                        headers={"Authorization": f"Bearer {token}"})  # fmt: skip


def trigger_run(client: Any, dag_id: str, date: str | dt.date, parse_timeout: float = 120.0) -> str:
    """Wait until the DAG processor has parsed ``dag_id``, unpause it and create a run for
    logical date ``date`` through the REST API; returns the run id. ``RuntimeError`` with the
    answer when the API refuses the run."""
    day = schema.parse_date(date)
    wait_until(lambda: client.get(f"/dags/{dag_id}").status_code != 404, parse_timeout,
               f"the DAG processor to parse {dag_id}", interval_s=2.0)  # fmt: skip
    client.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
    r = client.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": f"{day}T00:00:00Z"})
    if r.status_code != 200:
        raise RuntimeError(f"creating a run of {dag_id} for {day} failed: {r.status_code} {r.text}")
    return r.json()["dag_run_id"]


def wait_run(
    client: Any, dag_id: str, run_id: str, timeout: float = 600.0
) -> tuple[str, list[dict]]:
    """Wait until run ``run_id`` of ``dag_id`` ends; returns its state (``success`` or
    ``failed``) and its task instances as the REST API gives them (``task_id``, ``state``,
    ``try_number``, ``hostname``, ...)."""

    def finished() -> str | None:
        state = client.get(f"/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
        return state if state in ("success", "failed") else None

    state = wait_until(finished, timeout, f"DAG run {run_id} to finish", interval_s=2.0)
    r = client.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
    r.raise_for_status()
    return state, r.json()["task_instances"]
