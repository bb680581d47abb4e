"""The daily DAG's task bodies: one plain function per task, each taking the logical date.

``dags/recloop_daily.py`` calls exactly one of these per task; each reads its settings from the
environment, does its stage, logs what happened and returns a small JSON-able summary (Airflow
stores it as the task's XCom). They are also what ``recloop`` calls outside Airflow.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from pipelines.settings import Settings

log = logging.getLogger("recloop.tasks")


def _settings() -> Settings:
    s = Settings.from_env()
    s.ensure_dirs()
    return s


def validate(ds: str) -> dict[str, Any]:
    """Validation gate for day ``ds``. A partition-level failure fails the task without retries
    (the data will not fix itself); anything else (I/O, a bug) is retried by Airflow."""
    from pipelines.validate import ValidationError, validate_partition

    try:
        result = validate_partition(_settings(), ds)
    except ValidationError as exc:
        from airflow.sdk.exceptions import AirflowFailException

        log.error("validation failed for %s: %s", ds, exc)
        raise AirflowFailException(str(exc)) from exc
    summary = dataclasses.asdict(result) if dataclasses.is_dataclass(result) else dict(result)
    log.info("validation of %s: %s", ds, summary)
    return {
        k: (str(v) if not isinstance(v, (int, float, bool, type(None))) else v)
        for k, v in summary.items()
    }


def stats(ds: str) -> dict[str, Any]:
    """Counts, CTR by position and new users/items of the validated day ``ds``."""
    from pipelines.stats import daily_stats, format_stats

    out = daily_stats(_settings(), ds)
    log.info("%s", format_stats(out))
    return out
