"""The daily DAG run through Airflow itself: `airflow dags test` and `airflow standalone` + REST API."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import signal
import sqlite3
import subprocess
import sys

import httpx
import psutil
import pyarrow.parquet as pq
import pytest

from pipelines.core import layout, schema
from pipelines.core.wait import wait_until
from pipelines.data import simulate
from pipelines.orchestration import airflow_runner, process_session
from tests.helpers import free_port

pytestmark = pytest.mark.integration
DAY0, DAY1 = "2026-01-01", "2026-01-02"
EXPECTED_TASKS = {
    "validate", "stats", "features", "train_mf", "train_two_tower", "train_popular",
    "train_itemknn", "build_index", "evaluate", "train_ranker", "evaluate_ranker", "register",
    "gate", "materialize", "fit_linucb", "train_extra",
}  # fmt: skip


@pytest.fixture()
def tiny(redis_settings):
    """A workspace with two simulated tiny days, a real Redis; retries fast."""
    simulate.simulate(redis_settings, 2, "tiny", 7)
    return dataclasses.replace(redis_settings, retry_delay_s=1.0, task_retries=1)


def _digest(folder) -> str:
    return hashlib.sha256(
        b"".join(f.read_bytes() for f in sorted(folder.rglob("*.parquet")))
    ).hexdigest()


def _run_times(settings, day: str) -> tuple[dt.datetime, dt.datetime]:
    """(start_date, end_date) in UTC of the newest recloop_daily run of ``day``, as stored."""
    con = sqlite3.connect(layout.airflow_db_path(settings))
    try:
        row = con.execute(
            "SELECT start_date, end_date FROM dag_run WHERE dag_id = 'recloop_daily' "
            "AND date(logical_date) = ? ORDER BY id DESC LIMIT 1",
            (day,),
        ).fetchone()
    finally:
        con.close()
    return tuple(dt.datetime.fromisoformat(v).replace(tzinfo=dt.UTC) for v in row)


def test_run_one_date_then_rerun_is_identical(tiny):
    before_run = dt.datetime.now(dt.UTC)
    first = airflow_runner.run_dag(tiny, DAY1)
    after_run = dt.datetime.now(dt.UTC)
    assert first.ok, first.log_tail
    start, end = _run_times(tiny, DAY1)  # real times, not the logical date (the UI's duration)
    assert before_run <= start <= end <= after_run, (before_run, start, end, after_run)
    states = {t: s for t, s, _ in first.tasks}
    assert set(states) == EXPECTED_TASKS and set(states.values()) == {"success"}, states
    validated = schema.partition_dir(tiny.validated_dir, DAY1)
    assert pq.read_table(validated).num_rows > 0
    stats_file = tiny.reports_dir / "stats" / f"date={DAY1}.json"
    before = (_digest(validated), stats_file.read_text())
    before_rerun = dt.datetime.now(dt.UTC)
    again = airflow_runner.run_dag(tiny, DAY1)
    assert again.ok
    start, end = _run_times(tiny, DAY1)
    assert before_rerun <= start <= end <= dt.datetime.now(dt.UTC), (before_rerun, start, end)
    assert (_digest(validated), stats_file.read_text()) == before


def test_bad_partition_fails_validation_without_retry(tiny):
    part = next(schema.partition_dir(tiny.interactions_dir, DAY0).glob("*.parquet"))
    part.write_bytes(b"this is not parquet")
    result = airflow_runner.run_dag(tiny, DAY0)
    assert result.state == "failed"
    states = {t: (s, n) for t, s, n in result.tasks}
    assert states["validate"] == ("failed", 1)  # AirflowFailException: no retry
    assert all(states[t][0] == "upstream_failed" for t in EXPECTED_TASKS - {"validate"}), states
    assert "not parquet" in result.log_tail or part.name in result.log_tail


def test_standalone_serves_the_dag_and_runs_it_from_the_rest_api(tiny):
    port = free_port()
    proc = airflow_runner.start_standalone(tiny, port=port)
    try:
        airflow_runner.wait_ready(port, timeout=180)
        password = airflow_runner.admin_password(tiny)
        base = f"http://127.0.0.1:{port}"
        token = httpx.post(
            f"{base}/auth/token", json={"username": "admin", "password": password}, timeout=60
        ).json()
        client = httpx.Client(
            base_url=f"{base}/api/v2",
            headers={"Authorization": f"Bearer {token['access_token']}"},
            timeout=60,
        )

        def dag_parsed() -> httpx.Response | None:  # 404: the DAG processor has not parsed it yet
            r = client.get("/dags/recloop_daily")
            return None if r.status_code == 404 else r

        r = wait_until(dag_parsed, 120, "the DAG processor to parse recloop_daily", interval_s=2)
        assert r.status_code == 200 and r.json()["is_paused"] is True
        assert client.patch("/dags/recloop_daily", json={"is_paused": False}).status_code == 200
        run = client.post("/dags/recloop_daily/dagRuns", json={"logical_date": f"{DAY0}T00:00:00Z"})
        assert run.status_code == 200, run.text
        run_id = run.json()["dag_run_id"]

        def finished() -> str | None:
            state = client.get(f"/dags/recloop_daily/dagRuns/{run_id}").json()["state"]
            return state if state in ("success", "failed") else None

        state = wait_until(finished, 240, f"DAG run {run_id} to finish", interval_s=2)
        assert state == "success"
        tis = client.get(f"/dags/recloop_daily/dagRuns/{run_id}/taskInstances").json()[
            "task_instances"
        ]
        assert {t["task_id"]: t["state"] for t in tis} == dict.fromkeys(EXPECTED_TASKS, "success")
    finally:
        airflow_runner.stop_standalone(proc)


def test_recloop_airflow_stops_every_airflow_process_on_sigterm(settings, tmp_path):
    port = free_port()
    out = open(tmp_path / "recloop-airflow.out", "wb")  # noqa: SIM115 - closed in finally
    cli = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "airflow", "--port", str(port)],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    started: list[psutil.Process] = []
    try:
        airflow_runner.wait_ready(port, timeout=180)
        started = psutil.Process(cli.pid).children(recursive=True)
        standalone = [p for p in started if "standalone" in " ".join(p.cmdline())]
        assert len(standalone) == 1 and len(started) >= 5, [p.cmdline() for p in started]
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=120) == 0
        survivors = [p.pid for p in started if p.is_running() and p.status() != "zombie"]
        assert survivors == [] and process_session.session_pids(standalone[0].pid) == []
        # SIGINT first (the graceful path); on a loaded machine it may need SIGTERM after 30 s
        assert b"airflow: stopped (SIGINT" in (tmp_path / "recloop-airflow.out").read_bytes()
    finally:
        cli.kill()  # whatever a failed assertion left running
        for p in started:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        out.close()
