"""Serving replicas behind HAProxy: N ``recloop serve`` processes, one load balancer in front.

Each replica is a ``recloop serve`` on its own loopback port with ``RECLOOP_SERVE_ID`` set to one
id for all of them: they are one service whose request records (for ``/feedback`` on any
replica) and ``/admin`` state live in Redis (:mod:`serving.shared`), exactly as the worker
processes of one ``recloop serve --workers N`` do. A/B assignment hashes the user with the
experiment's salt (:mod:`serving.routing`), so it is the same whichever replica answers.

HAProxy (Debian's ``haproxy``) balances round-robin over the replicas whose ``GET
/health/ready`` answers 200 (checked every :data:`CHECK_INTERVAL_MS`), retries a request whose
connection failed or whose response came back empty on another replica (``retry-on
conn-failure empty-response``, ``option redispatch``), and has an admin socket (the runtime API).

:func:`rolling_restart` restarts the replicas one at a time without dropping a request: the
replica is set to ``drain`` through the runtime API (no new requests), its open sessions are
waited for, it is stopped (SIGTERM: uvicorn finishes what it has), started again, and set
``ready`` once its readiness URL answers; HAProxy's own check then brings it back.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipelines.cluster import pidfiles
from pipelines.core.service_process import wait_ready

BACKEND = "serving"
"""HAProxy's backend name; replicas are servers ``r0``, ``r1``, ..."""
CHECK_INTERVAL_MS = 500
"""Milliseconds between HAProxy's readiness checks of each replica."""
READY_TIMEOUT_S = 180.0
"""How long a replica may take to answer ``/health/ready`` (it loads the champion bundle)."""


@dataclass(frozen=True)
class Layout:
    """Where the replicas and the balancer listen and keep files: ``front_port`` (HAProxy),
    ``ports`` (one per replica), ``folder`` (config, admin socket, pid files, logs)."""

    front_port: int
    ports: tuple[int, ...]
    folder: Path

    @property
    def config_path(self) -> Path:
        return self.folder / "haproxy.cfg"

    @property
    def socket_path(self) -> Path:
        return self.folder / "haproxy.sock"

    @property
    def haproxy_pid(self) -> Path:
        return self.folder / "haproxy.pid"

    @property
    def token_path(self) -> Path:
        """The replicas' admin token (``RECLOOP_ADMIN_TOKEN``), mode 600."""
        return self.folder / "admin-token"

    def replica_pid(self, i: int) -> Path:
        return self.folder / f"replica-{i}.pid"

    def replica_log(self, i: int) -> Path:
        return self.folder / f"replica-{i}.log"


def haproxy_config(layout: Layout) -> str:
    """The ``haproxy.cfg`` text: one HTTP frontend on 127.0.0.1:``front_port``, one backend of
    the replicas with readiness checks, retries and redispatch, an admin socket."""
    servers = "\n".join(
        f"    server r{i} 127.0.0.1:{port} check" for i, port in enumerate(layout.ports)
    )
    return f"""# written by pipelines/cluster/serving_replicas.py
global
    stats socket {layout.socket_path} mode 600 level admin
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    option redispatch
    retries 3
    retry-on conn-failure empty-response
    option httpchk GET /health/ready
    http-check expect status 200
    default-server inter {CHECK_INTERVAL_MS}ms fall 2 rise 2

frontend recloop
    bind 127.0.0.1:{layout.front_port}
    default_backend {BACKEND}

backend {BACKEND}
    balance roundrobin
{servers}
"""


def admin_token(layout: Layout) -> str:
    """The replicas' admin token: read from :attr:`Layout.token_path`, created (mode 600) on
    first use."""
    import secrets

    if not layout.token_path.exists():
        layout.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(layout.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(24) + "\n")
    return layout.token_path.read_text().strip()


def replica_env(env: Mapping[str, str], service_id: str) -> dict[str, str]:
    """The replicas' environment: ``env`` plus the one shared ``RECLOOP_SERVE_ID`` and, unless
    ``env`` sets it, ``RECLOOP_SERVE_THREADS=0``: each replica is one process meant to have a
    core, and running a request on its event loop's thread (no hand-off, no GIL contention
    between requests) served 300 req/s at 1M items with p99 15 ms through two replicas where
    four threads a replica fell behind at ~280 (benchmarks/README.md, seventeenth session)."""
    return {"RECLOOP_SERVE_THREADS": "0", **env, "RECLOOP_SERVE_ID": service_id}


def start_replica(
    layout: Layout, i: int, env: Mapping[str, str], ready_path: str = "/health/ready"
) -> int:
    """Start replica ``i`` (``recloop serve --port ports[i]``, its own session) and return its
    pid once ``ready_path`` answers 200 (``/health/live`` when no champion may exist yet: HAProxy
    keeps the replica out until ``/health/ready`` answers)."""
    recloop = Path(sys.executable).parent / "recloop"
    port = layout.ports[i]
    layout.folder.mkdir(parents=True, exist_ok=True)
    with open(layout.replica_log(i), "ab") as log:
        proc = subprocess.Popen([str(recloop), "serve", "--port", str(port)], env=dict(env),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}{ready_path}", proc, READY_TIMEOUT_S,
                   layout.replica_log(i), name=f"replica {i}")  # fmt: skip
    except BaseException:
        pidfiles.kill_unready(proc)
        raise
    layout.replica_pid(i).write_text(f"{proc.pid}\n")
    return proc.pid


def stop_pid_file(pid_file: Path, timeout_s: float = 30.0) -> bool:
    """SIGTERM to the session of the pid in ``pid_file`` (SIGKILL after ``timeout_s``);
    whether one was running. The file is removed."""
    return bool(pidfiles.stop([pid_file], grace_s=timeout_s))


def start_haproxy(layout: Layout) -> None:
    """Write the config, check it (``haproxy -c``) and start HAProxy as a daemon."""
    layout.folder.mkdir(parents=True, exist_ok=True)
    layout.config_path.write_text(haproxy_config(layout))
    check = subprocess.run(["haproxy", "-c", "-q", "-f", str(layout.config_path)],
                           capture_output=True, text=True, check=False)  # fmt: skip
    if check.returncode != 0:
        raise RuntimeError(f"{layout.config_path}: haproxy -c failed: {check.stderr.strip()}")
    subprocess.run(["haproxy", "-D", "-f", str(layout.config_path), "-p", str(layout.haproxy_pid)],
                   check=True, capture_output=True)  # fmt: skip


def stop_haproxy(layout: Layout) -> bool:
    """Stop the daemon (its pid file); whether it ran."""
    pid = pidfiles.read_pid(layout.haproxy_pid)
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    finally:
        layout.haproxy_pid.unlink(missing_ok=True)
    return True


def runtime(layout: Layout, command: str) -> str:
    """One command on HAProxy's runtime API (the admin socket); its answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5.0)
        s.connect(str(layout.socket_path))
        s.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def server_stats(layout: Layout) -> dict[str, dict[str, str]]:
    """``{server name: {field: value}}`` of the backend's servers (``show stat``: ``status``
    UP/DOWN/DRAIN/MAINT, ``scur`` current sessions, ``stot`` sessions so far, ...)."""
    lines = runtime(layout, "show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    out = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == BACKEND and row.get("svname") not in ("BACKEND", "FRONTEND"):
            out[row["svname"]] = row
    return out


def wait_status(layout: Layout, server: str, want: str, timeout_s: float = 60.0) -> None:
    """Until HAProxy reports ``server``'s status starting with ``want`` (``UP``, ``DOWN``...)."""
    deadline = time.monotonic() + timeout_s
    while not server_stats(layout)[server]["status"].startswith(want):
        if time.monotonic() > deadline:
            raise TimeoutError(f"haproxy: {server} not {want} after {timeout_s} s")
        time.sleep(0.1)


def rolling_restart(layout: Layout, env: Mapping[str, str], drain_timeout_s: float = 30.0) -> None:
    """Restart every replica in turn, dropping no request (module docstring)."""
    for i in range(len(layout.ports)):
        name = f"r{i}"
        was_up = server_stats(layout)[name]["status"].startswith("UP")
        runtime(layout, f"set server {BACKEND}/{name} state drain")
        deadline = time.monotonic() + drain_timeout_s
        while int(server_stats(layout)[name]["scur"] or 0) > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop_pid_file(layout.replica_pid(i))
        # a replica that served comes back only once it serves again; one that was not ready
        # (no champion yet) only has to be alive
        start_replica(layout, i, env, "/health/ready" if was_up else "/health/live")
        runtime(layout, f"set server {BACKEND}/{name} state ready")
        if was_up:
            wait_status(layout, name, "UP")
