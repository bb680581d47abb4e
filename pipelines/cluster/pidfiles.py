"""Pid files of the cluster's detached processes, and stopping them from any later process.

Every process the cluster starts (the Airflow components, ``mlflow server``, the serving
replicas) runs in a session of its own (``start_new_session=True``), so its pid is also its
session id: :func:`running_pid` believes a pid file only while that session has a live process
led by it (a recycled pid belongs to some other session), and :func:`stop` signals every process
of the session (gunicorn/uvicorn workers, Celery's task processes), not the leader alone. Linux
only (``/proc``, through :func:`pipelines.orchestration.process_session.session_pids`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def read_pid(pid_file: Path) -> int | None:
    """The pid written in ``pid_file`` (first token); None when missing or unreadable."""
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def reap(pid: int) -> None:
    """Collect ``pid``'s exit status when it is this process's child (a zombie looks alive)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def running_pid(pid_file: Path) -> int | None:
    """The pid in ``pid_file`` when it leads a session with a live process in it, else None."""
    from pipelines.orchestration.process_session import session_pids

    pid = read_pid(pid_file)
    if pid is None:
        return None
    reap(pid)
    return pid if pid in session_pids(pid) else None


def _signal_sessions(leaders: list[int], sig: signal.Signals) -> None:
    from pipelines.orchestration.process_session import session_pids

    for leader in leaders:
        for pid in session_pids(leader):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def _wait_gone(leaders: list[int], timeout_s: float, interval_s: float) -> bool:
    """Reap the leaders until none of their sessions has a live process; True when emptied."""
    from pipelines.orchestration.process_session import session_pids

    deadline = time.monotonic() + timeout_s
    while True:
        for pid in leaders:
            reap(pid)
        if not any(session_pids(pid) for pid in leaders):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def stop(pid_files: list[Path], grace_s: float = 30.0) -> list[Path]:
    """Stop the sessions named by ``pid_files``: SIGTERM to every process of each session,
    SIGKILL to what is left after ``grace_s`` seconds (then up to 5 s for it to die). Every
    file is removed. Returns the files whose process was running."""
    running = {path: pid for path in pid_files if (pid := running_pid(path)) is not None}
    leaders = list(running.values())
    if leaders:
        _signal_sessions(leaders, signal.SIGTERM)
        if not _wait_gone(leaders, grace_s, 0.1):
            _signal_sessions(leaders, signal.SIGKILL)
            _wait_gone(leaders, 5.0, 0.1)
    for path in pid_files:
        path.unlink(missing_ok=True)
    return list(running)


def kill_unready(proc: subprocess.Popen) -> None:
    """SIGKILL the session of ``proc`` (a server that never became ready) and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
