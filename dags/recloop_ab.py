"""
### recloop A/B analysis

Runs whenever the daily DAG publishes a validated partition (asset
`recloop://validated-interactions`). One task, **analyze**: the experiment the registry aliases
define now (`champion` vs `challenger` serving bundles, named `<champion>-vs-<challenger>`) is
analysed on the validated logs from its start through the day (`ds` when the run has one, else
the newest validated partition): per-arm impressions, CTR and conversion with intervals, the
CTR difference under an always-valid mSPRT (p-value and confidence sequence), guardrails on CTR
and conversion drops, a minimum sample per arm and a maximum duration (`pipelines.experiments.ab.ABConfig`).

Decision: **promote** (challenger becomes `champion`; the service hot-reloads it), **continue**,
**rollback** (a guardrail failed: challenger alias cleared) or **stop** (max duration without a
significant gain: challenger alias cleared). Each decision → MLflow (`recloop-ab`) and
`reports/ab/<experiment>/date=D.json`; `recloop ab --experiment E` shows them. Recomputed from
the logs on every run: reruns and restarts count nothing twice.
"""

from __future__ import annotations

from airflow.sdk import Asset, dag, task

from pipelines.orchestration.dag_defaults import (
    START_DATE,
    VALIDATED_URI,
    default_args,
)

VALIDATED = Asset(VALIDATED_URI)  # the daily DAG's validate outlet


@dag(
    dag_id="recloop_ab",
    schedule=[VALIDATED],
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    tags=["recloop", "ab"],
    doc_md=__doc__,
)
def recloop_ab():
    @task
    def analyze(ds: str | None = None) -> dict:
        from pipelines.core.settings import Settings
        from pipelines.experiments import ab

        return ab.analyze_current(Settings.from_env(), ds)

    analyze()


recloop_ab()
