"""Issue 17, case 10: secrets stay out of logs, and files holding secrets are private.

``RECLOOP_REDIS_URL`` may carry a password: no error message, log line or console line of
recloop shows it (the host and port still do, for the operator). Airflow's generated admin
password (``airflow/passwords.json``) and the output of ``airflow standalone`` that prints it
(``airflow/standalone.log``) are readable by their owner only (mode 600), also in a workspace
made before this rule.
"""

from __future__ import annotations

import ast
import socket
import stat
import sys
from pathlib import Path

import pytest

from pipelines.core import layout
from pipelines.core.redact import redact_text, redact_url
from pipelines.core.settings import Settings

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "hunter2-Zq9"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # free again once closed: nothing listens there


def test_redis_errors_name_the_host_not_the_password(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    from pipelines.features import online

    port = closed_port()
    s = Settings(home=settings.home, redis_url=f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
    with pytest.raises(ConnectionError) as err:
        online.check_redis(s)
    assert f"127.0.0.1:{port}" in str(err.value)
    assert PASSWORD not in str(err.value) and PASSWORD not in caplog.text


def test_bad_redis_url_error_hides_the_password() -> None:
    from pipelines.features.store import redis_connection_string

    with pytest.raises(ValueError) as err:
        redis_connection_string(f"http://admin:{PASSWORD}@cache.internal:6379/0")
    assert PASSWORD not in str(err.value) and "cache.internal" in str(err.value)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{PASSWORD}@h:6379/0",
        f"redis://default:{PASSWORD}@h:6379/0",
        f"rediss://h:6380/1?password={PASSWORD}&ssl_cert_reqs=none",
    ],
)
def test_redact_url_masks_every_form(url: str) -> None:
    shown = redact_url(url)
    assert PASSWORD not in shown and "h:63" in shown and "***" in shown
    assert PASSWORD not in redact_text(f"failed to reach {url}: refused")


def _shown_calls(tree: ast.AST):
    """Calls whose arguments reach a log, the console or an exception's message."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            yield node.exc
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in {"debug", "info", "warning", "error", "exception", "critical", "print"}:
                yield node


def _bare_redis_url(node: ast.AST) -> bool:
    """``node`` uses ``<x>.redis_url`` outside a ``redact_url(...)`` call."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") in {"redact_url", "redact_text"}:
        return False
    if isinstance(node, ast.Attribute) and node.attr == "redis_url":
        return True
    return any(_bare_redis_url(child) for child in ast.iter_child_nodes(node))


def test_no_log_or_message_shows_the_redis_url_unredacted() -> None:
    offenders = []
    for folder in ("pipelines", "serving", "dags", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for call in _shown_calls(tree):
                args = [*call.args, *(k.value for k in call.keywords)]
                if any(_bare_redis_url(a) for a in args):
                    offenders.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert offenders == []


def test_airflow_secret_files_are_private(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.orchestration import airflow_runner

    home = settings.airflow_home
    home.mkdir(parents=True, exist_ok=True)
    passwords = layout.airflow_passwords_path(settings)
    log_file = layout.airflow_standalone_log_path(settings)
    passwords.write_text('{"admin": "old"}\n')  # a workspace from before: world-readable
    log_file.write_text("Password for user 'admin': old\n")
    for f in (passwords, log_file):
        f.chmod(0o644)
    layout.airflow_db_path(settings).touch()  # the database is migrated already
    layout.airflow_migrated_path(settings).touch()
    monkeypatch.setattr(sys, "executable", "/bin/true")  # a real child that exits at once
    proc = airflow_runner.start_standalone(settings)
    proc.wait(timeout=30)
    for f in (passwords, log_file):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert passwords.read_text() == '{"admin": "old"}\n'  # kept: Airflow reads it back

    passwords.unlink()  # a fresh workspace: the files are created private
    log_file.unlink()
    proc = airflow_runner.start_standalone(settings)
    proc.wait(timeout=30)
    for f in (passwords, log_file):
        assert f.exists() and stat.S_IMODE(f.stat().st_mode) == 0o600, f
