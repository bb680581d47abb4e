"""The daily DAG on Airflow's production topology (issue 18): the CeleryExecutor with a Redis
broker of its own, the metadata database on PostgreSQL, and the scheduler, DAG processor,
triggerer, API server and two Celery workers as separate processes
(:mod:`pipelines.cluster.airflow_celery`), on free loopback ports.

One topology serves the module: a run of the tiny world's first day spreads its tasks over both
workers; that run's first tasks cleared and rerun with the worker of a running task SIGKILLed
(the whole process tree, as a lost machine) retry the task on the other worker once the
scheduler misses its heartbeat, end in success and leave the day's outputs as the undisturbed
run left them."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator

import pytest

from pipelines.cluster import airflow_celery, postgres
from pipelines.core import schema
from pipelines.core.net import free_port
from pipelines.core.settings import Settings
from pipelines.core.wait import wait_until
from pipelines.data import simulate
from pipelines.orchestration import airflow_runner, process_session
from tests.helpers import RedisServer, fresh_mlflow

DAG, DAY0 = "recloop_daily", "2026-01-01"
RERUN, VICTIM = ["validate", "stats", "features"], "features"
"""The tasks the kill test reruns: the day's first three, ~15 s of work, instead of the whole
run; its victim is the longest of them (~8 s: killed a second in, it cannot end first)."""
HEARTBEAT_TIMEOUT_S = 20
"""The scheduler declares a running task lost after this many seconds without a heartbeat
(Airflow's default, 300, is the production value; the test kills a worker on purpose)."""


@dataclasses.dataclass
class Cluster:
    settings: Settings
    topo: airflow_celery.CeleryTopology
    client: object  # httpx.Client on the REST API


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer
) -> Iterator[Cluster]:
    """A tiny two-day world and the Celery topology (2 workers, 1 task each) over it."""
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    home = tmp_path_factory.mktemp("celery-home")
    env = {"RECLOOP_HOME": str(home), "RECLOOP_REDIS_URL": redis_server.url,
           "RECLOOP_TASK_RETRIES": "1", "RECLOOP_RETRY_DELAY_S": "1"}  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:  # what airflow_env passes on to every process
        for key, value in env.items():
            mp.setenv(key, value)
        mp.delenv("RECLOOP_MLFLOW_URI", raising=False)
        mp.setenv("AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT", str(HEARTBEAT_TIMEOUT_S))
        mp.setenv("AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL", "2")
        s = Settings.from_env()
        s.ensure_dirs()
        fresh_mlflow(s)
        simulate.simulate(s, 2, "tiny", 7)
        pg = postgres.for_workspace(home, free_port())
        postgres.start(pg)
        topo = airflow_celery.CeleryTopology(s, pg.url("airflow"), free_port(), free_port(), 2)
        try:
            postgres.ensure_databases(pg, ("airflow",))
            airflow_celery.start(topo)
            client = airflow_runner.api_client(topo.api_port, airflow_runner.admin_password(s))
            yield Cluster(s, topo, client)
        finally:
            airflow_celery.stop(topo.run_dir, grace_s=5.0)
            postgres.stop(pg)
            if pg.data_dir.is_relative_to(postgres.SHARED_ROOT):
                shutil.rmtree(pg.data_dir, ignore_errors=True)


def _outputs(s: Settings, day: str) -> tuple[str, str]:
    """(digest of the validated partition, the stats report) of ``day``."""
    folder = schema.partition_dir(s.validated_dir, day)
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in sorted(folder.rglob("*.parquet"))))
    return digest.hexdigest(), (s.reports_dir / "stats" / f"date={day}.json").read_text()


@pytest.fixture(scope="module")
def first_run(cluster: Cluster) -> tuple[str, list[dict], tuple[str, str]]:
    """``(run id, task instances, outputs)`` of an undisturbed run of DAY0."""
    run_id = airflow_runner.trigger_run(cluster.client, DAG, DAY0)
    state, tis = airflow_runner.wait_run(cluster.client, DAG, run_id, timeout=280)
    assert state == "success", [(t["task_id"], t["state"]) for t in tis]
    return run_id, tis, _outputs(cluster.settings, DAY0)


def test_environment_and_commands_keep_each_process_apart(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    """No server: the topology's environment and command lines."""
    s = dataclasses.replace(settings, redis_url="redis://127.0.0.1:6399/0")
    topo = airflow_celery.CeleryTopology(s, "postgresql+psycopg2://postgres@127.0.0.1:5433/airflow",
                                         6390, 8080, workers=3)  # fmt: skip
    env = airflow_celery.environment(topo)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert (
        env["AIRFLOW__CELERY__BROKER_URL"] == "redis://127.0.0.1:6390/0" != env["RECLOOP_REDIS_URL"]
    )
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == topo.pg_url
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == f"db+{topo.pg_url}"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:8080/execution/"
    assert (
        airflow_celery.environment(topo)["AIRFLOW__API_AUTH__JWT_SECRET"]
        == env["AIRFLOW__API_AUTH__JWT_SECRET"]
    )  # one secret for every process, kept across starts
    cmds = airflow_celery.commands(topo)
    assert list(cmds) == topo.names() == [
        "broker", "api-server", "scheduler", "dag-processor", "triggerer",
        "worker1", "worker2", "worker3",
    ]  # fmt: skip
    hosts = [cmds[w][cmds[w].index("--celery-hostname") + 1] for w in ("worker1", "worker3")]
    assert hosts == ["worker1@%h", "worker3@%h"]
    monkeypatch.setenv(airflow_celery.WORKER_ENV, "worker3")  # what a task instance records
    assert airflow_celery.worker_hostname() == f"worker3@{socket.gethostname()}"


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_daily_run_spreads_its_tasks_over_both_workers(cluster: Cluster, first_run):
    _, tis, _ = first_run
    tasks = [t["task_id"] for t in cluster.client.get(f"/dags/{DAG}/tasks").json()["tasks"]]
    assert len(tasks) > 10  # the whole daily DAG, every task successful
    assert {t["task_id"]: t["state"] for t in tis} == dict.fromkeys(tasks, "success")
    workers = {t["hostname"].split("@")[0] for t in tis}
    assert workers == {"worker1", "worker2"}, [(t["task_id"], t["hostname"]) for t in tis]


def _kill_worker(topo: airflow_celery.CeleryTopology, name: str) -> None:
    """SIGKILL every process of worker ``name``'s session (Celery, its pool, the task)."""
    leader = airflow_celery.running_pid(topo.run_dir, name)
    assert leader is not None, f"{name} is not running"
    for pid in process_session.session_pids(leader):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_a_worker_killed_mid_task_its_task_retries_on_the_other(cluster: Cluster, first_run):
    run_id, first, outputs = first_run
    client = cluster.client
    clear = {"dry_run": False, "dag_run_id": run_id, "only_failed": False, "task_ids": RERUN}
    r = client.post(f"/dags/{DAG}/clearTaskInstances", json=clear)
    assert r.status_code == 200, r.text

    def running() -> dict | None:  # the victim once it has run a second (of its ~8) on a worker
        t = client.get(f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/{VICTIM}").json()
        if t["state"] != "running" or not t["hostname"] or not t["start_date"]:
            return None
        return (
            t if time.time() - dt.datetime.fromisoformat(t["start_date"]).timestamp() > 1 else None
        )

    victim = wait_until(running, 120, f"{VICTIM} to run", interval_s=0.3)
    killed = victim["hostname"].split("@")[0]
    _kill_worker(cluster.topo, killed)
    state, tis = airflow_runner.wait_run(client, DAG, run_id, timeout=300)
    tries = {t["task_id"]: t["try_number"] for t in first}
    now = {t["task_id"]: t for t in tis}
    after = now[victim["task_id"]]
    assert state == "success", [(t["task_id"], t["state"]) for t in tis]
    assert all(now[task]["try_number"] > tries[task] for task in RERUN), (tries, now)
    assert after["try_number"] == victim["try_number"] + 1, (victim, after)
    assert after["hostname"].split("@")[0] != killed, (victim, after)
    assert _outputs(cluster.settings, DAY0) == outputs
