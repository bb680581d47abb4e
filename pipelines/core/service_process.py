"""An HTTP service as a child process (``recloop serve`` under uvicorn), started from Python
(tests, benchmarks) and waited for until its readiness URL answers 200.

:func:`start_service` starts the command with its output in a log file (or inherited) and returns
once :func:`wait_ready` saw ``200`` from the readiness URL; when the process exits first or the
deadline passes, the process is killed and the error carries the tail of its log.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipelines.core.wait import wait_until

LOG_TAIL_LINES = 40
"""Lines of the server's log quoted in a start failure."""


def log_tail(log_path: Path | None, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of ``log_path`` (undecodable bytes replaced), or a note saying
    where the output went when there is no log file."""
    if log_path is None:
        return "(no log file: the server's output went to this process's stdout/stderr)"
    try:
        text = Path(log_path).read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"(no log at {log_path}: {exc})"
    tail = "\n".join(text.splitlines()[-lines:])
    return f"last {lines} lines of {log_path}:\n{tail}"


def wait_ready(
    url: str,
    proc: subprocess.Popen,
    timeout_s: float,
    log_path: Path | None = None,
    *,
    interval_s: float = 0.5,
    name: str = "the server",
) -> None:
    """Poll ``GET url`` (2 s per request, every ``interval_s`` s) until it answers 200.

    Raises ``RuntimeError`` as soon as ``proc`` exits, ``TimeoutError`` when ``timeout_s``
    seconds pass without a 200; both messages name ``name`` and ``url`` and end with the tail
    of ``log_path`` (:func:`log_tail`). The process is left as it is (see :func:`start_service`).
    """
    import httpx

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(
                f"{name} exited with {proc.returncode} before {url} answered 200; "
                f"{log_tail(log_path)}"
            )
        try:
            return httpx.get(url, timeout=2.0, trust_env=False).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, timeout_s, f"{name} at {url}", interval_s=interval_s)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}; {log_tail(log_path)}") from None


def start_service(
    cmd: Sequence[str],
    env: Mapping[str, str],
    url: str,
    timeout_s: float,
    log_path: Path | None = None,
    *,
    cwd: Path | None = None,
    interval_s: float = 0.5,
    name: str = "the server",
) -> subprocess.Popen:
    """Start ``cmd`` (in ``cwd``, with exactly ``env``) and return it once ``url`` answers 200.

    Its stdout and stderr go to ``log_path`` (truncated first) or, when ``None``, to this
    process's. When it is not ready (:func:`wait_ready` raises: it exited, or ``timeout_s``
    seconds passed), it is killed and the error propagates. Stopping it is the caller's job.
    """
    if log_path is None:
        proc = subprocess.Popen(list(cmd), cwd=cwd, env=dict(env))
    else:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "wb") as log:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                list(cmd), cwd=cwd, env=dict(env), stdout=log, stderr=subprocess.STDOUT
            )
    try:
        wait_ready(url, proc, timeout_s, log_path, interval_s=interval_s, name=name)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc
