"""
### recloop daily

Takes one day's interaction logs (`RECLOOP_HOME/data/interactions/date={{ ds }}`) through the loop:

1. **validate** — Great Expectations gate; bad rows to `quarantine/`, partition-level failures stop
   the run (no retry: the data will not fix itself).
2. **stats** — counts, CTR by position, new users and items → `reports/stats/`.

One run per logical date; a rerun of a date overwrites that date's outputs and nothing else.
Every task body is one call into `pipelines.tasks`; nothing heavy is imported at parse time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import dag, task

from pipelines.settings import Settings

_settings = Settings.from_env()  # reads environment variables only
DEFAULT_ARGS = {
    "owner": "recloop",
    "retries": _settings.task_retries,
    "retry_delay": timedelta(seconds=_settings.retry_delay_s),
}


@dag(
    dag_id="recloop_daily",
    schedule="@daily",
    start_date=datetime(1995, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["recloop", "daily"],
    doc_md=__doc__,
)
def recloop_daily():
    @task
    def validate(ds: str | None = None) -> dict:
        from pipelines import tasks

        return tasks.validate(ds)

    @task
    def stats(ds: str | None = None) -> dict:
        from pipelines import tasks

        return tasks.stats(ds)

    validate() >> stats()


recloop_daily()
