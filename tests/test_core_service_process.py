"""pipelines.core.service_process: a child HTTP server started, waited for, killed when not ready
(small ``python`` children, no recloop service)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest

from pipelines.core.service_process import start_service
from tests.helpers import free_port, stop_service

SLEEPER = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); {body}"


def test_start_service_returns_once_the_url_answers_200(tmp_path: Path):
    port = free_port()
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "ready").write_text("ok")
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
           "--directory", str(tmp_path / "www")]  # fmt: skip
    url = f"http://127.0.0.1:{port}/ready"
    proc = start_service(
        cmd, os.environ, url, 30, tmp_path / "logs" / "server.log", interval_s=0.05
    )
    try:
        assert proc.poll() is None
        assert httpx.get(url, timeout=5).text == "ok"
    finally:
        stop_service(proc, 10)
    assert "GET /ready" in (tmp_path / "logs" / "server.log").read_text()


def test_an_exit_before_ready_raises_with_the_log_tail(tmp_path: Path):
    cmd = [sys.executable, "-c", "print('bad config: no champion'); raise SystemExit(3)"]
    url = f"http://127.0.0.1:{free_port()}/health/ready"
    with pytest.raises(RuntimeError) as err:
        start_service(cmd, os.environ, url, 30, tmp_path / "serve.log", name="recloop serve")
    assert "recloop serve exited with 3" in str(err.value)
    assert "bad config: no champion" in str(err.value)


def test_the_deadline_kills_the_process_and_quotes_its_log(tmp_path: Path):
    pid_file = tmp_path / "pid"
    body = "print('still loading the index', flush=True); time.sleep(120)"
    cmd = [sys.executable, "-c", SLEEPER.format(body=body), str(pid_file)]
    url = f"http://127.0.0.1:{free_port()}/health/ready"  # nothing listens there
    with pytest.raises(TimeoutError) as err:
        start_service(cmd, os.environ, url, 3, tmp_path / "serve.log", interval_s=0.1)
    assert "timed out after 3s" in str(err.value)
    assert "still loading the index" in str(err.value)
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(int(pid_file.read_text()), 0)
