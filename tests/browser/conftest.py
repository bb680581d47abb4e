"""Fixtures of the browser tier: one chromium per session (Debian's, driven by Playwright) and a
page per test that screenshots each step into a folder the test names.

Screenshots go to ``$RECLOOP_BROWSER_SHOTS/<test name>/`` when that variable is set, else to the
test's ``tmp_path/shots/``; the folder is printed at setup, so pytest shows it with a failure.
``infra/setup-browser.sh`` installs chromium and Playwright.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"


class Shots:
    """Numbered full-page screenshots of one test: ``take(page, "login")`` -> ``01-login.png``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.count = 0

    def take(self, page, step: str) -> Path:
        """Screenshot ``page`` as the next step; the PNG's path."""
        self.count += 1
        path = self.folder / f"{self.count:02d}-{re.sub(r'[^A-Za-z0-9_-]+', '-', step)}.png"
        page.screenshot(path=path, full_page=True)
        return path


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    """A headless chromium (``/usr/bin/chromium``, ``--no-sandbox``) per test module.

    Module scope, not session: Playwright's sync API keeps an asyncio event loop running while it
    is started, and the tests that run after the browser tier (serving, loop) call
    ``asyncio.run``, which refuses to start inside a running loop."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture()
def shots(request: pytest.FixtureRequest, tmp_path: Path) -> Shots:
    """Where this test's screenshots go (printed: pytest shows it when the test fails)."""
    root = os.environ.get("RECLOOP_BROWSER_SHOTS")
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)
    folder = Path(root) / name if root else tmp_path / "shots"
    folder.mkdir(parents=True, exist_ok=True)
    print(f"screenshots: {folder}")
    return Shots(folder)


@pytest.fixture()
def page(chromium) -> Iterator[object]:
    """A fresh page (own context, 1400x900) whose console errors and uncaught page errors are
    collected in ``page.errors`` (a list of strings)."""
    context = chromium.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(30_000)
    pg = context.new_page()
    pg.errors = []
    pg.on("console", lambda m: m.type == "error" and pg.errors.append(f"console: {m.text}"))
    pg.on("pageerror", lambda e: pg.errors.append(f"pageerror: {e}"))
    yield pg
    context.close()
