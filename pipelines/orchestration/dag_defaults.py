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

    ``train_from_date`` (``YYYY-MM-DD``, default empty; null, as the trigger form sends an
    empty field, is the same): runs for earlier logical dates skip
    ``train_*``, ``build_index``, ``train_ranker``, ``evaluate``, ``evaluate_ranker``,
    ``register`` and ``gate`` (shown as skipped), so a backfill over a range retrains once::

        airflow backfill create --dag-id recloop_daily --from-date D1 --to-date D2 \\
            --dag-run-conf '{"train_from_date": "D2"}'

    (the bundle trained on D2 is gated by the run of D2+1; ``"train_from_date": "D2-1"`` also
    trains on D2-1 so the run of D2 gates a champion). Empty: every run trains (the default).

    ``force_materialize`` (default off): the ``features`` task materializes the day into Redis
    even when Redis already holds a newer day (a re-run of an old date otherwise leaves Redis
    alone). ``skip_training`` (default off): the run validates, computes stats and features and
    skips the same tasks ``train_from_date`` skips.
    """
    from airflow.sdk import Param

    return {
        "train_from_date": Param(
            "",
            type=["null", "string"],  # optional: the trigger form requires a non-null type
            title="Train from date",
            description="YYYY-MM-DD: runs for earlier logical dates skip training, evaluation, "
            "register and gate (for backfills over a range); empty: every run trains",
        ),
        "force_materialize": Param(
            False,
            type="boolean",
            title="Force materialize",
            description="materialize this date into Redis even when Redis holds a newer day "
            "(off: an older date leaves Redis's newer values alone)",
        ),
        "skip_training": Param(
            False,
            type="boolean",
            title="Skip training",
            description="validate, stats and features only: skip training, evaluation, "
            "register and gate",
        ),
    }


def release_params() -> dict[str, Any]:
    """The ``recloop_release`` DAG's params (the Airflow UI's trigger form): ``action``
    (promote | rollback | pin | unpin), ``version`` (a ``serving_bundle`` version number; empty
    for rollback to the previous champion, pin of the current champion, unpin), ``reason``
    (required text) and ``operator`` (empty: the user who triggered the run)."""
    from airflow.sdk import Param

    return {
        "action": Param(
            "promote",
            type="string",
            enum=["promote", "rollback", "pin", "unpin"],
            title="Action",
            description="promote: champion -> version (gated, load-checked); rollback: champion "
            "-> the previous champion (or version); pin: champion fixed at version (default: "
            "the current one) until unpin; unpin: lift the pin",
        ),
        "version": Param(
            "",
            type=["null", "string", "integer"],  # optional (null: the form may leave it empty)
            title="Bundle version",
            description="serving_bundle version number (MLflow registry); empty: rollback to "
            "the previous champion, pin the current champion, unpin",
        ),
        "reason": Param(
            type="string",
            minLength=3,
            title="Reason",
            description="why (recorded in MLflow, experiment recloop-release)",
        ),
        "operator": Param(
            "",
            type=["null", "string"],  # optional (null: the form may leave it empty)
            title="Operator",
            description="who (empty: the user who triggered the run)",
        ),
    }
