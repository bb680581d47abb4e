"""The MLflow UI in a real browser: the registered models list, ``serving_bundle``'s versions with
their ``champion`` / ``challenger`` alias badges, and the alias editor of version 2 moving
``champion`` onto it, which a running ``recloop serve`` (reloading every 0.5 s) then serves.

One ``mlflow ui`` over a tiny workspace trained for three days (champion = bundle 1, challenger =
bundle 2) and one ``recloop serve`` on it are shared by the module; both start together (the UI
took ~35 s to accept connections here). Selectors are the UI's roles, texts and
``data-component-id`` attributes (MLflow 3.17).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pipelines.core.settings import Settings
from pipelines.core.wait import wait_until
from pipelines.release import registry
from tests.helpers import REPO, RedisServer, free_port, known_user, tiny_trained_workspace

# integration: trains a workspace, starts mlflow ui, recloop serve and chromium
pytestmark = [pytest.mark.integration, pytest.mark.browser]
DAYS = ("2026-01-01", "2026-01-02", "2026-01-03")  # three bundles; aliases set by the test
ALIAS_EDITOR = '[data-component-id*="modelversionviewaliaseditor"]'  # "Add" or a pencil
ALIAS_BADGE = '[role="status"][data-component-id*="modelversionaliastag"]'  # "@ champion"


@dataclass
class Stack:
    """The MLflow UI's base URL, the running service (process, base URL), a user it knows, the
    workspace."""

    ui: str
    serve: subprocess.Popen
    service: str
    user: str
    settings: Settings

    def served(self) -> str | None:
        """The bundle version ``/recommend`` answers with now; None while not answering."""
        return served(self.serve, self.service, self.user)


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start ``cmd`` from the repository root in a process group of its own (``mlflow ui``
    runs a uvicorn server and a job consumer as children), its output in ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM ``proc``'s process group; SIGKILL it if ``proc`` has not exited after 20 s."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def served(proc: subprocess.Popen, url: str, user: str) -> str | None:
    """The bundle version ``/recommend`` answers ``user`` with; None while not answering."""
    assert proc.poll() is None, "recloop serve exited"
    try:
        r = httpx.post(f"{url}/recommend", json={"user_id": user, "k": 4}, timeout=10)
    except httpx.TransportError:
        return None
    return r.json()["bundle"]["bundle"] if r.status_code == 200 else None


def answers(proc: subprocess.Popen, url: str) -> bool:
    """Whether ``url`` answers HTTP (``proc``, its server, must still run)."""
    assert proc.poll() is None, f"{proc.args[0]} exited"
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Iterator[Stack]:
    """``mlflow ui`` and ``recloop serve`` (``RECLOOP_SERVE_RELOAD_S=0.5``) on a three-day tiny
    workspace; both stopped at teardown (terminate, then kill)."""
    tmp = tmp_path_factory.mktemp("mlflow-ui")
    settings, mp = tiny_trained_workspace(tmp / "home", redis_server.url, DAYS)
    procs: list[subprocess.Popen] = []
    try:
        # the gates may already have refreshed the champion to bundle 2 (same configuration);
        # the scene this test drives: champion 1, challenger 2
        registry.promote(settings, "1", "champion")
        registry.promote(settings, "2", "challenger")
        assert {a: registry.get_alias(settings, a) for a in registry.ALIASES} == {
            "challenger": "2",
            "champion": "1",
        }
        env = {**os.environ, **settings.as_env(), "RECLOOP_SERVE_RELOAD_S": "0.5"}
        env.pop("RECLOOP_ADMIN_TOKEN", None)
        ui_port, serve_port = free_port(), free_port()
        mlflow = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", settings.mlflow_uri]
        mlflow += ["--host", "127.0.0.1", "--port", str(ui_port)]
        procs.append(start(mlflow, env, tmp / "ui.log"))
        serve = [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(serve_port)]
        procs.append(start(serve, env, tmp / "serve.log"))
        ui, service = f"http://127.0.0.1:{ui_port}", f"http://127.0.0.1:{serve_port}"
        user, _ = known_user(settings)
        wait_until(lambda: served(procs[1], service, user), 120, "recloop serve answering")
        wait_until(lambda: answers(procs[0], ui + "/"), 180, "mlflow ui answering")
        yield Stack(ui, procs[1], service, user, settings)
    finally:
        for proc in procs:
            stop(proc)
        mp.undo()


def badges(scope) -> list[str]:
    """The alias badges' texts under ``scope`` (``"@ champion"``, non-breaking space made plain)."""
    return [t.replace("\xa0", " ") for t in scope.locator(ALIAS_BADGE).all_inner_texts()]


def open_models(page, stack: Stack, shots) -> None:
    """The registered models list, past the new-registry-UI announcement when it shows."""
    page.goto(stack.ui + "/#/models")
    page.get_by_role("link", name="serving_bundle", exact=True).wait_for()
    promo = page.get_by_role("button", name="Try it now")
    if promo.count():
        shots.take(page, "new-registry-ui-announcement")
        promo.click()
    for name in ("index", "mf", "ranker", "serving_bundle", "two_tower"):
        page.get_by_role("link", name=name, exact=True).wait_for()
    shots.take(page, "registered-models")


def test_champion_moved_in_the_alias_editor_reaches_the_service(page, stack, shots):
    assert stack.served() == "1"
    open_models(page, stack, shots)
    page.get_by_role("link", name="serving_bundle", exact=True).click()
    for version, alias in (("1", "champion"), ("2", "challenger")):
        row = page.get_by_role("row").filter(
            has=page.get_by_role("link", name=f"Version {version}", exact=True)
        )
        row.locator(ALIAS_BADGE).first.wait_for()
        assert badges(row) == [f"@ {alias}"], (version, badges(row))
    assert badges(page.get_by_role("row").filter(has_text="Version 3")) == []
    shots.take(page, "serving_bundle-versions")

    page.get_by_role("link", name="Version 2", exact=True).click()
    page.get_by_role("heading", name="Version 2").wait_for()
    assert "@ challenger" in badges(page)
    shots.take(page, "version-2")
    page.locator(ALIAS_EDITOR).click()
    dialog = page.get_by_role("dialog").filter(has_text="Add/Edit alias for model version 2")
    select = dialog.get_by_role("combobox")
    select.click()
    select.press_sequentially("champion")
    page.get_by_role("option", name="champion").first.wait_for(state="attached")
    shots.take(page, "alias-editor-options")
    select.press("Enter")  # picks the highlighted first option: the typed alias
    dialog.get_by_text('The "champion" alias is also being used on version 1').wait_for()
    shots.take(page, "alias-editor-champion-added")
    dialog.get_by_role("button", name="Save aliases").click()
    dialog.wait_for(state="hidden")
    saved = time.monotonic()
    page.locator(ALIAS_BADGE).filter(has_text="champion").wait_for()
    assert sorted(badges(page)) == ["@ challenger", "@ champion"], badges(page)
    shots.take(page, "version-2-champion")

    assert registry.get_alias(stack.settings, "champion") == "2"
    assert registry.get_alias(stack.settings, "challenger") == "2"  # the editor kept it
    wait_until(lambda: stack.served() == "2", 30, "the service on bundle 2", interval_s=0.2)
    print(f"service on bundle 2 {time.monotonic() - saved:.1f} s after the save")
