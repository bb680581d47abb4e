"""The Airflow UI in a real browser: log in with the printed credentials, see the project's DAGs
and their docs, trigger ``recloop_daily`` for a date with logs from the trigger form, watch every
task reach success on the run's page (grid + task instances), open a task's log; the HTML report
of the workspace; roll the champion back and have a promote refused from ``recloop_release``'s
trigger form.

One ``airflow standalone`` (scheduler, DAG processor, triggerer, API server + React UI) on a tiny
two-day workspace, trained in-process before it starts (two bundles, each champion in turn), is
shared by the module; each test needs only that fixture, not an earlier test. Selectors are the UI's roles, labels, placeholders and
``data-testid`` attributes (Airflow 3.3).
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from pipelines.core.settings import Settings
from pipelines.orchestration import airflow_runner
from tests.helpers import DAGS, RedisServer, free_port, tiny_trained_workspace

# integration: starts airflow standalone and chromium
pytestmark = [pytest.mark.integration, pytest.mark.browser]
DAY = "2026-01-01"
RELEASE_DAYS = ("2026-01-01", "2026-01-02")  # trained in-process by the module fixture
DAILY_TASKS = 16  # validate, fit_linucb, stats, features, 5 x train_*, build_index, ...


@dataclass
class Airflow:
    """A running ``airflow standalone``: its UI's base URL and the ``admin`` password."""

    url: str
    password: str
    settings: Settings


@pytest.fixture(scope="module")
def airflow(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[Airflow]:
    """``airflow standalone`` on a tiny workspace whose two simulated days were run through the
    daily DAG's task bodies in-process first (:func:`tests.helpers.tiny_trained_workspace`), and
    whose registry then holds two champions in turn: bundle ``RELEASE_DAYS[0]``'s, then
    ``RELEASE_DAYS[1]``'s (so the report and the release tests need no earlier test). Stopped
    with SIGINT, which stops its children too."""
    from pipelines.release import registry

    home = tmp_path_factory.mktemp("airflow-ui") / "home"
    trained, env = tiny_trained_workspace(home, redis_server.url, RELEASE_DAYS)
    try:
        versions = sorted(
            registry.find_versions(trained, registry.BUNDLE), key=lambda v: int(v.version)
        )
        assert len(versions) >= 2, [mv.version for mv in versions]
        for mv in versions:  # each bundle champion once, in order: the newest is the champion
            if not mv.tags.get("promoted_champion_at"):
                registry.promote(trained, mv.version, "champion")
        registry.promote(trained, versions[-1].version, "champion")
        settings = dataclasses.replace(trained, retry_delay_s=1.0, task_retries=1)
        port = free_port()
        proc = airflow_runner.start_standalone(settings, port=port)
        try:
            airflow_runner.wait_ready(port, timeout=180)
            yield Airflow(
                f"http://127.0.0.1:{port}", airflow_runner.admin_password(settings), settings
            )
        finally:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=20)  # SIGINT: standalone took >60 s to stop here
            except Exception:  # noqa: BLE001
                os.killpg(proc.pid, signal.SIGKILL)
    finally:
        env.undo()


def log_in(page, af: Airflow, shots) -> None:
    """Sign in on the UI's login form as ``admin``."""
    page.goto(af.url + "/")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(af.password)
    shots.take(page, "login")
    page.get_by_role("button", name="Sign in").click()
    page.get_by_test_id("nav-dags-link").wait_for()
    page.errors.clear()  # the app's first requests, before the login, are answered 401


def test_dags_listed_with_their_docs(page, airflow, shots):
    log_in(page, airflow, shots)
    # each DAG's doc_md (its module docstring) starts with this heading
    headings = {"recloop_ab": "recloop A/B analysis", "recloop_daily": "recloop daily"}
    if (DAGS / "recloop_release.py").exists():
        headings["recloop_release"] = "recloop release"
    expected = sorted(headings)
    page.goto(airflow.url + "/dags")
    for dag_id in expected:  # the DAG processor may still be parsing: links appear as it does
        page.get_by_role("link", name=dag_id, exact=True).wait_for(timeout=120_000)
    shots.take(page, "dag-list")
    for dag_id in expected:
        page.get_by_role("link", name=dag_id, exact=True).click()
        page.get_by_role("button", name="Dag Docs").click()
        docs = page.get_by_role("dialog").filter(has_text="Dag Documentation")
        docs.get_by_role("heading", name=headings[dag_id]).wait_for()
        shots.take(page, f"{dag_id}-docs")
        page.keyboard.press("Escape")
        docs.wait_for(state="hidden")
        page.goto(airflow.url + "/dags")
    assert page.errors == [], page.errors


def set_logical_date(page, day: str) -> None:
    """Fill the trigger form's logical date picker with ``day`` at 00:00 UTC."""
    page.get_by_test_id("datetime-input").click()
    page.get_by_placeholder("YYYY/MM/DD").fill(day.replace("-", "/"))
    page.get_by_placeholder("HH:mm").fill("00:00")
    page.get_by_text("Logical Date", exact=True).click()  # closes the picker
    shown = page.get_by_test_id("datetime-input")
    assert "2026" in shown.inner_text() and "00:00" in shown.inner_text(), shown.inner_text()


def test_trigger_daily_from_the_form_and_watch_it_succeed(page, airflow, shots):
    log_in(page, airflow, shots)
    page.goto(airflow.url + "/dags/recloop_daily")
    page.get_by_test_id("trigger-dag-button").click()
    form = page.get_by_role("dialog").filter(has_text="Trigger Dag - recloop_daily")
    form.wait_for()
    set_logical_date(page, DAY)
    assert page.locator("#element_train_from_date").input_value() == ""  # the default: trains
    shots.take(page, "trigger-form")
    form.get_by_role("button", name="Trigger", exact=True).click()
    page.wait_for_url("**/dags/recloop_daily/runs/manual__*")
    run_id = page.url.rsplit("/runs/", 1)[1].split("/")[0]
    page.get_by_text(f"{DAY} 00:00:00").first.wait_for()  # the run's logical date
    shots.take(page, "run-queued")

    states = page.get_by_test_id("table-cell-state")
    # the run page refreshes itself while the run is active: wait until every row says Success
    page.wait_for_function(
        """([n]) => {
            const s = [...document.querySelectorAll('[data-testid=table-cell-state]')]
                .map(e => e.innerText.trim());
            return s.length === n && s.every(x => x === 'Success') || s.includes('Failed');
        }""",
        arg=[DAILY_TASKS],
        timeout=300_000,
        polling=2000,
    )
    shots.take(page, "run-success")
    assert states.all_inner_texts() == ["Success"] * DAILY_TASKS, states.all_inner_texts()
    names = page.get_by_test_id("table-cell-task_display_name").all_inner_texts()
    assert {"validate", "features", "train_two_tower", "register", "gate"} <= set(names), names
    for task in ("validate", "gate"):  # the grid's cell of each task in this run
        assert page.get_by_test_id(f"grid-{run_id}-{task}").count() == 1

    page.get_by_test_id("table-cell-task_display_name").get_by_role(
        "link", name="validate", exact=True
    ).click()
    page.get_by_role("link", name="Logs").first.wait_for()
    page.get_by_text(f"validated date={DAY}").first.wait_for(timeout=60_000)
    shots.take(page, "validate-log")


def test_html_report_of_the_workspace(page, airflow, shots):
    """``recloop report`` over the module's two trained days (needs no other test): no console
    errors, every plot decoded, every navigation link lands on its section."""
    import subprocess
    import sys

    env = {**os.environ, **airflow.settings.as_env()}
    cmd = [sys.executable, "-m", "pipelines.cli", "report"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    path = airflow.settings.reports_dir / "index.html"
    page.goto(path.as_uri())
    shots.take(page, "report")
    assert page.errors == [], page.errors
    sizes = page.eval_on_selector_all(
        "img", "imgs => imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight])"
    )
    assert sizes and all(ok and w > 0 and h > 0 for ok, w, h in sizes), sizes
    assert len(sizes) == path.read_text().count("<img ")
    links = page.locator("nav a")
    assert links.count() >= 5
    for i in range(links.count()):
        link = links.nth(i)
        target = link.get_attribute("href")
        link.click()
        assert page.url.endswith(target), (page.url, target)
        heading = page.locator(target)
        assert heading.evaluate("e => e.tagName") == "H2"
        assert heading.inner_text() == link.inner_text()
        box = heading.bounding_box()  # scrolled into view: the section's heading is on screen
        assert box is not None and 0 <= box["y"] < 900, (target, box)
        shots.take(page, f"report-{target.lstrip('#')}")


def trigger_release(page, af: Airflow, shots, action: str, version: str, reason: str) -> str:
    """Trigger ``recloop_release`` from the UI's form with these params and wait for its one
    task to end; its state as shown (``Success`` or ``Failed``)."""
    page.goto(af.url + "/dags/recloop_release")
    page.get_by_test_id("trigger-dag-button").click()
    form = page.get_by_role("dialog").filter(has_text="Trigger Dag - recloop_release")
    form.wait_for()
    if action != "promote":  # the default; the field is a searchable select
        page.locator("#element_action").click()
        page.keyboard.type(action)
        page.keyboard.press("Enter")
    page.locator("#element_action").get_by_text(action, exact=True).wait_for()  # selected
    if version:
        page.locator("#element_version").fill(version)
    page.locator("#element_reason").fill(reason)
    shots.take(page, f"{action}-form")
    form.get_by_role("button", name="Trigger", exact=True).click()
    page.wait_for_url("**/dags/recloop_release/runs/manual__*")
    page.wait_for_function(
        """() => {
            const s = [...document.querySelectorAll('[data-testid=table-cell-state]')]
                .map(e => e.innerText.trim());
            return s.length === 1 && ['Success', 'Failed'].includes(s[0]);
        }""",
        timeout=180_000,
        polling=2000,
    )
    shots.take(page, f"{action}-run")
    return page.get_by_test_id("table-cell-state").inner_text().strip()


def test_rollback_and_refused_promote_from_the_form(page, airflow, shots):
    """Rollback from the form moves ``champion`` back to the previous champion; a promote of
    an unregistered version fails the run with the refusal in the task log."""
    from pipelines.release import operations, registry

    s = airflow.settings
    log_in(page, airflow, shots)
    current = registry.get_alias(s, "champion")
    previous = operations.previous_champion(s, current)
    assert current is not None and previous is not None and previous != current

    state = trigger_release(page, airflow, shots, "rollback", "", "browser test: roll back")
    assert state == "Success"
    assert registry.get_alias(s, "champion") == previous

    state = trigger_release(page, airflow, shots, "promote", "999", "browser test: refused")
    assert state == "Failed"
    assert registry.get_alias(s, "champion") == previous  # nothing moved
    page.get_by_test_id("table-cell-task_display_name").get_by_role(
        "link", name="release", exact=True
    ).click()
    page.get_by_text("release refused").first.wait_for(timeout=60_000)
    page.get_by_text("serving_bundle version 999 is not registered").first.wait_for()
    shots.take(page, "refused-log")
