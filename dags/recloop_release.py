"""
### recloop release

Manual only (no schedule): **Trigger DAG** with the form below moves the serving champion by hand,
through the same checks and compare-and-set alias moves as the automatic path
(`pipelines/release/operations.py`). Params:

| param | meaning |
|---|---|
| `action` | `promote`, `rollback`, `pin` or `unpin` |
| `version` | a `serving_bundle` version number (MLflow registry); empty: rollback to the previous champion, pin the current champion, unpin |
| `reason` | required: why (recorded in MLflow) |
| `operator` | who (empty: the user who triggered the run) |

- **promote** — `champion` → `version`, refused unless the version's newest gate decision passed
  (`recloop gates --date D`), no A/B experiment rolled it back, the bundle loads and answers the
  service's smoke test, the champion is not pinned to another version, and the champion did not
  move meanwhile.
- **rollback** — `champion` → the previous champion (the newest earlier champion not rolled back
  since, from the registry's `promoted_champion_at` / `rolled_back_at` version tags), load-checked.
- **pin** — the champion stays at `version` until **unpin**: the daily gate and the A/B DAG do not
  move it (an A/B promotion waits), and promote / rollback of another version are refused.

A refusal fails the run (no retries) with the reason in the task log. Every attempt is a run of
the MLflow experiment `recloop-release` (action, version, reason, operator, previous champion,
outcome). The online service follows the `champion` alias within `RECLOOP_SERVE_RELOAD_S`.
Outside Airflow: `recloop release --action A --version V --reason TEXT`.
"""

from __future__ import annotations

from airflow.sdk import dag, task

from pipelines.orchestration.dag_defaults import START_DATE, default_args, release_params

TASK_DOC = """
#### release

One call: `pipelines.release.operations.release_task(params, triggering user)`. Its return value
(the XCom) is the outcome: action, version, previous champion, champion after, pin, notes and the
MLflow run id. A refusal raises `AirflowFailException("release refused: <why>")`.
"""


@dag(
    dag_id="recloop_release",
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    params=release_params(),
    tags=["recloop", "release"],
    doc_md=__doc__,
)
def recloop_release():
    @task(doc_md=TASK_DOC)
    def release(params: dict | None = None, dag_run=None) -> dict:
        from pipelines.release.operations import release_task

        return release_task(params, getattr(dag_run, "triggering_user_name", None))

    release()


recloop_release()
