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


def dag_params() -> dict[str, Any]:
    """The daily DAG's params (a run's ``conf`` overrides them; the UI's trigger form shows them).

    ``train_from_date`` (``YYYY-MM-DD``, default empty): runs for earlier logical dates skip
    ``train_*``, ``build_index``, ``train_ranker``, ``evaluate``, ``evaluate_ranker``,
    ``register`` and ``gate`` (shown as skipped), so a backfill over a range retrains once::

        airflow backfill create --dag-id recloop_daily --from-date D1 --to-date D2 \\
            --dag-run-conf '{"train_from_date": "D2"}'

    (the bundle trained on D2 is gated by the run of D2+1; ``"train_from_date": "D2-1"`` also
    trains on D2-1 so the run of D2 gates a champion). Empty: every run trains (the default).
    """
    from airflow.sdk import Param

    return {
        "train_from_date": Param(
            "",
            type="string",
            title="Train from date",
            description="YYYY-MM-DD: runs for earlier logical dates skip training, evaluation, "
            "register and gate (for backfills over a range); empty: every run trains",
        )
    }
