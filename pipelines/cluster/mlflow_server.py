"""The MLflow tracking server of the local cluster: ``mlflow server`` with the PostgreSQL backend
store and a proxied artifact root (``--artifacts-destination``; clients upload and download
artifacts through the server, so workers share no folder with it).

recloop uses it when ``RECLOOP_MLFLOW_URI`` is its ``http://`` URL: the DAGs, the gates, the A/B
DAG and serving call the same :mod:`pipelines.release.registry` functions as with the SQLite file.
The server runs detached (its own session) with a pid file and a log under
``<workspace>/cluster/``; :func:`start` waits until ``GET /health`` answers 200.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipelines.cluster import pidfiles
from pipelines.core.service_process import wait_ready

START_TIMEOUT_S = 120.0
"""How long :func:`start` waits for ``/health`` (the first start migrates the database schema)."""


def paths(cluster_dir: Path, port: int) -> dict[str, Path]:
    """``pid``, ``log`` and ``artifacts`` (the artifact root) of the server on ``port``."""
    return {
        "pid": cluster_dir / f"mlflow-{port}.pid",
        "log": cluster_dir / f"mlflow-{port}.log",
        "artifacts": cluster_dir / "mlflow-artifacts",
    }


def url(port: int) -> str:
    """The tracking URI clients set as ``RECLOOP_MLFLOW_URI``."""
    return f"http://127.0.0.1:{port}"


def command(backend_uri: str, artifacts: Path, port: int, workers: int = 2) -> list[str]:
    """The ``mlflow server`` command line (loopback only)."""
    mlflow = Path(sys.executable).parent / "mlflow"
    return [
        str(mlflow), "server", "--backend-store-uri", backend_uri,
        "--artifacts-destination", artifacts.as_uri(), "--serve-artifacts",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
    ]  # fmt: skip


def running_pid(cluster_dir: Path, port: int) -> int | None:
    """The pid of this workspace's server on ``port`` when it is alive, else None."""
    return pidfiles.running_pid(paths(cluster_dir, port)["pid"])


def start(cluster_dir: Path, backend_uri: str, port: int, workers: int = 2) -> int:
    """Start the server unless it runs; returns its pid once ``/health`` answers 200.

    Raises ``RuntimeError``/``TimeoutError`` with the tail of its log when it does not come up."""
    found = running_pid(cluster_dir, port)
    if found is not None:
        return found
    p = paths(cluster_dir, port)
    p["artifacts"].mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_LOGGING_LEVEL": os.environ.get("MLFLOW_LOGGING_LEVEL", "WARNING")}
    with open(p["log"], "wb") as log:
        proc = subprocess.Popen(
            command(backend_uri, p["artifacts"], port, workers), env=env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_ready(f"{url(port)}/health", proc, START_TIMEOUT_S, p["log"], name="mlflow server")
    except BaseException:
        pidfiles.kill_unready(proc)
        raise
    p["pid"].write_text(f"{proc.pid}\n")
    return proc.pid


def stop(cluster_dir: Path, port: int, timeout_s: float = 20.0) -> bool:
    """SIGTERM to the server's session, SIGKILL after ``timeout_s``; whether one ran."""
    return bool(pidfiles.stop([paths(cluster_dir, port)["pid"]], grace_s=timeout_s))
