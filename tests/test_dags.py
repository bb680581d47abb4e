"""DAG integrity: every DAG file imports cleanly, fast, with tags and retries, and stays thin."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import DAGS

# integration: Airflow parses the DAG folder in-process, and each DAG file in a subprocess of its own
pytestmark = pytest.mark.integration
DAG_FILES = sorted(p.name for p in DAGS.glob("*.py"))
HEAVY = ("torch", "faiss", "feast", "mlflow", "great_expectations", "pandas", "duckdb", "redis")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    start = time.perf_counter()
    bag = DagBag(dag_folder=str(DAGS))
    bag.parse_seconds = time.perf_counter() - start
    return bag


@pytest.mark.parametrize("name", DAG_FILES)
def test_no_import_errors(dagbag, name):
    errors = {Path(k).name: v for k, v in dagbag.import_errors.items()}
    assert name not in errors, errors.get(name)


def test_daily_dag_shape(dagbag):
    dag = dagbag.dags.get("recloop_daily")
    assert dag is not None
    assert "recloop" in dag.tags
    assert dag.doc_md and "validate" in dag.doc_md
    assert dag.schedule == "@daily"
    assert dag.max_active_runs == 1
    for task in dag.tasks:
        assert task.retries >= 1, f"{task.task_id} has no retries"
    validate = dag.get_task("validate")
    assert "stats" in validate.downstream_task_ids


@pytest.mark.parametrize("name", DAG_FILES)
def test_parse_is_thin(name):
    """Parsing a DAG file (Airflow itself already imported) imports none of the heavy libraries
    and takes little time."""
    code = (
        "import sys, time, runpy, airflow.sdk; t = time.perf_counter(); "
        f"runpy.run_path({str(DAGS / name)!r}); "
        "print(time.perf_counter() - t); "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    seconds, heavy = (
        out.stdout.strip().splitlines()[-2:]
        if out.stdout.strip().count("\n")
        else (out.stdout.strip(), "")
    )
    assert heavy == "", f"{name} imports {heavy} at parse time"
    assert float(seconds) < 2.0


def test_release_dag_shape(dagbag):
    """Manual trigger only, the operator's params in the trigger form, docs on DAG and task."""
    dag = dagbag.dags.get("recloop_release")
    assert dag is not None
    assert dag.schedule is None and "recloop" in dag.tags
    assert dag.doc_md and "rollback" in dag.doc_md
    assert {"action", "version", "reason", "operator"} <= set(dag.params.keys())
    assert dag.params.get_param("action").schema["enum"] == ["promote", "rollback", "pin", "unpin"]
    assert dag.params.get_param("reason").schema["minLength"] >= 1
    (task,) = dag.tasks
    assert task.retries >= 1 and task.doc_md and "release_task" in task.doc_md


def test_daily_dag_fits_linucb_and_the_inline_runner_runs_the_same_tasks(dagbag):
    """``fit_linucb`` runs once the day is validated; the closed loop's inline runner
    (``DAILY_TASKS``) calls a task body for every task of the DAG and no other."""
    from pipelines.loop.closed_loop import DAILY_TASKS

    dag = dagbag.dags["recloop_daily"]
    assert dag.get_task("fit_linucb").upstream_task_ids == {"validate"}
    assert dag.get_task("train_extra").upstream_task_ids == {"features"}
    assert "train_extra" in dag.get_task("register").upstream_task_ids
    names = {"compute_features": "features"}
    inline = {f"train_{arg}" if arg else names.get(fn, fn) for fn, arg in DAILY_TASKS}
    assert inline == set(dag.task_ids)


def test_daily_dag_operator_params_default_to_no_change(dagbag):
    params = dagbag.dags["recloop_daily"].params
    assert params["force_materialize"] is False and params["skip_training"] is False
    assert params["train_from_date"] == ""
