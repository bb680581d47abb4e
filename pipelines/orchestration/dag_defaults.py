"""What every recloop DAG file shares: default task arguments and the asset URIs that connect
the DAGs (the daily DAG's outlets are the A/B DAG's schedule, so they must be one string).

Imports only the standard library and ``pipelines.core.settings``: DAG files stay thin at parse time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from pipelines.core.settings import Settings

START_DATE = datetime(1995, 1, 1, tzinfo=UTC)  # before any replayed data (MovieLens is 1997+)

VALIDATED_URI = "recloop://validated-interactions"
ONLINE_FEATURES_URI = "recloop://online-features"
ITEM_INDEX_URI = "recloop://item-index"
BUNDLE_URI = "recloop://serving-bundle"


def default_args() -> dict[str, Any]:
    """Owner and retries of every task, from the environment (RECLOOP_TASK_RETRIES,
    RECLOOP_RETRY_DELAY_S); reads environment variables only."""
    settings = Settings.from_env()
    return {
        "owner": "recloop",
        "retries": settings.task_retries,
        "retry_delay": timedelta(seconds=settings.retry_delay_s),
    }
