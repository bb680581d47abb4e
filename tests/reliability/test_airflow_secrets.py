"""Issue 17, cases 4 and 10 (Airflow side): ``recloop airflow`` listens on loopback only, and its
metadata database is private.

``airflow standalone`` starts the worker log server (``[logging] worker_log_server_port``, 8793)
with the scheduler and the trigger log server (8794) with the triggerer, bound to every interface
(Airflow 3.3 has no host setting for them). recloop runs everything on one machine, where the API
server reads task logs from the local log folder, so it starts both without their log servers
(``--skip-serve-logs``): every port of the process tree is then on loopback. ``airflow.db``
(connections, variables, the run history) is mode 600, also in a workspace made before.
"""

from __future__ import annotations

import ipaddress
import stat
import sys
import time

import httpx
import psutil
import pytest

from pipelines.core import layout
from pipelines.core.net import free_port
from pipelines.core.settings import Settings
from pipelines.core.wait import wait_until


def test_airflow_db_is_private(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.orchestration import airflow_runner

    db = layout.airflow_db_path(settings)
    monkeypatch.setattr(sys, "executable", "/bin/true")  # "airflow db migrate" that does nothing
    airflow_runner.ensure_db(settings)  # a fresh workspace: created private before the migration
    assert db.exists() and stat.S_IMODE(db.stat().st_mode) == 0o600
    db.chmod(0o644)  # a workspace from before: migrated, world-readable
    layout.airflow_migrated_path(settings).touch()
    airflow_runner.ensure_db(settings)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600


def listening(root: psutil.Process) -> list[tuple[str, int, str]]:
    """``(address, port, process name)`` of every listening TCP socket of ``root``'s tree."""
    out = []
    for p in [root, *root.children(recursive=True)]:
        try:
            conns = p.net_connections(kind="tcp")
            name = " ".join(p.cmdline()[:4])
        except psutil.Error:
            continue
        out += [(c.laddr.ip, c.laddr.port, name) for c in conns if c.status == psutil.CONN_LISTEN]
    return out


@pytest.mark.integration  # starts airflow standalone
def test_airflow_standalone_listens_on_loopback_only(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.orchestration import airflow_runner

    log_ports = free_port(), free_port()
    monkeypatch.setenv("AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT", str(log_ports[0]))
    monkeypatch.setenv("AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT", str(log_ports[1]))
    port = free_port()
    proc = airflow_runner.start_standalone(settings, port=port)
    try:
        airflow_runner.wait_ready(port, timeout=300)

        def components_up() -> bool:
            assert proc.poll() is None, "airflow standalone exited"
            r = httpx.get(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=5).json()
            return all(r.get(c, {}).get("status") == "healthy" for c in ("scheduler", "triggerer"))

        wait_until(components_up, 240, "scheduler and triggerer healthy", interval_s=2.0)
        time.sleep(5)  # a log server starts beside its component: give it time to bind
        found = listening(psutil.Process(proc.pid))
        assert any(p == port for _, p, _ in found), found  # the API server (loopback)
        off_box = [f for f in found if not ipaddress.ip_address(f[0]).is_loopback]
        assert off_box == [], f"listening beyond loopback: {off_box}"
        assert not [f for f in found if f[1] in log_ports], found
    finally:
        airflow_runner.stop_standalone(proc)
    assert stat.S_IMODE(layout.airflow_db_path(settings).stat().st_mode) == 0o600
