"""Issue 17, case 4: ``recloop serve`` binds beyond loopback only on purpose.

A non-loopback ``--host`` (``0.0.0.0``, ``::``, a LAN address) is refused (exit 2, nothing bound)
unless ``--allow-remote`` is given *and* ``RECLOOP_ADMIN_TOKEN`` is set. Loopback binds need
neither. uvicorn itself is replaced by a recorder in the in-process cases; one case runs the real
CLI in a subprocess to show nothing listens after a refusal.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from pipelines import cli
from pipelines.core.net import free_port
from tests.helpers import REPO

TOKEN = "test-admin-token-0123456789"


@pytest.fixture()
def bound(monkeypatch: pytest.MonkeyPatch, settings) -> Iterator[list[dict]]:
    """What ``uvicorn.run`` was called with (it binds nothing here); the environment that
    ``recloop serve`` exports for its workers is restored after."""
    import uvicorn

    calls: list[dict] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: calls.append(k))
    monkeypatch.delenv("RECLOOP_ADMIN_TOKEN", raising=False)
    saved = dict(os.environ)
    yield calls
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.7", "example.com"])
@pytest.mark.parametrize("flag, token", [(False, False), (True, False), (False, True)])
def test_remote_bind_refused_without_flag_and_token(
    bound: list[dict], monkeypatch: pytest.MonkeyPatch, capsys, host, flag, token
):
    if token:
        monkeypatch.setenv("RECLOOP_ADMIN_TOKEN", TOKEN)
    argv = ["serve", "--host", host, "--port", "8123", *(["--allow-remote"] if flag else [])]
    assert cli.main(argv) == 2
    assert bound == []  # nothing was bound
    err = capsys.readouterr().err
    assert "--allow-remote" in err and "RECLOOP_ADMIN_TOKEN" in err


def test_remote_bind_with_flag_and_token(bound: list[dict], monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RECLOOP_ADMIN_TOKEN", TOKEN)
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "8123", "--allow-remote"]) == 0
    assert [c["host"] for c in bound] == ["0.0.0.0"]


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_loopback_bind_needs_nothing(bound: list[dict], host: str):
    assert cli.main(["serve", "--host", host, "--port", "8123"]) == 0
    assert [c["host"] for c in bound] == [host]


@pytest.mark.integration  # runs the real CLI in a subprocess
def test_refused_serve_exits_and_listens_nowhere(tmp_path):
    port = free_port()
    env = {**os.environ, "RECLOOP_HOME": str(tmp_path / "home")}
    env.pop("RECLOOP_ADMIN_TOKEN", None)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "serve", "--host", "0.0.0.0",
             "--port", str(port)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("recloop serve --host 0.0.0.0 kept running: it bound every interface")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "--allow-remote" in done.stderr
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0  # nothing listens
