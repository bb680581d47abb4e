"""
### recloop daily

Takes one day's interaction logs (`RECLOOP_HOME/data/interactions/date={{ ds }}`) through the loop:

1. **validate** — Great Expectations gate; bad rows to `quarantine/`, partition-level failures stop
   the run (no retry: the data will not fix itself).
2. **stats** — counts, CTR by position, new users and items → `reports/stats/`; **fit_linucb** —
   the LinUCB explorer's state (`A`, `b`) refitted on the validated impressions and clicks of the
   week up to the day, contexts from the day-before feature tables, written atomically to
   `serving/linucb/state.npz`, which the service reloads when it changes (so the day's feedback
   steers the next day's exploration); a logged no-op unless `RECLOOP_SERVE_EXPLORER=linucb`,
   when the week holds no impression, or when the saved state is newer (a rerun of an old date).
3. **features** — DuckDB feature tables for the day and `feast apply` (Redis is written after the
   gate, by **materialize**).
4. **train_mf**, **train_two_tower**, **train_popular**, **train_itemknn** — retrieval models on the
   validated history up to the day → `artifacts/models/<model>/date=D/`; **train_extra** — the
   retrievers `RECLOOP_TRAIN_EXTRA` names (none by default: a logged no-op), each then a
   candidate source of the day's bundle under its own name (`RECLOOP_SERVE_SOURCES`).
5. **build_index** — FAISS index over the two-tower item embeddings; recall@10 against exact search
   is measured and a build below its target fails.
6. **evaluate** — forward evaluation: the models trained through yesterday, scored on today's
   positives beside the baselines → `reports/eval/`.
7. **train_ranker** — the ranker (``RECLOOP_RANKER=auto``: the cross-feature logistic regression
   or the DLRM, whichever fits the validation day better; and the logistic-regression baseline)
   on the window's labelled impressions, or on logs without impressions positives plus sampled
   negatives (70% uniform, 30% hard from the two-tower), features joined
   point in time through Feast; **evaluate_ranker** scores yesterday's rankers on today's
   impressions (AUC, logloss, calibration, NDCG@10 lift over retrieval order) → `reports/ranker/`.
8. **register** — MLflow runs and registered versions (`mf`, `two_tower`, `index`, `ranker`) and a
   `serving_bundle` pinning a consistent set, with its configuration fingerprint; the stage gate
   judges the ranked slate against retrieval order and trending, and a ranker that does not lift
   it is left out of the bundle (retrieval order serves); idempotent on reruns.
9. **gate** (as soon as the evaluations are in, before today's training ends) — the bundle trained
   through yesterday is checked on today's numbers (validation,
   NDCG@10 and ranker AUC against the champion, index recall, OPE when given). A *refresh* (the
   champion's configuration retrained) replaces the champion; a *change* becomes `challenger`
   for the A/B test (the first bundle: `champion`); a pinned champion or a running experiment
   holds a refresh; decision (with its kind) → MLflow and `reports/gates/`. Then
   **materialize** writes the day's feature window into the Redis online store (retried when
   Redis is unreachable; also when the gate was skipped), before **register**: the gate replays bundles on the day's logs and
   those replays must read the online features the service read that day (the day before's) —
   with the day's own, a bundle's evaluation on the day it served disagreed with its own logs
   (demo day 10: ESS 742 of 15,000, SNIPS 0.0955 for a true 0.0656; with the day before's: ESS
   14,743, 0.0634); the stage gate in **register** then sees what the new bundle will serve with.

One run per logical date; a rerun of a date overwrites that date's outputs and nothing else.

**Backfilling a range** (`airflow backfill create --dag-id recloop_daily --from-date D1
--to-date D2 --dag-run-conf '{"train_from_date": "D2"}'`): the param `train_from_date` makes
every run before that date validate and featurize only; its train, index, evaluate, register,
gate and fit_linucb tasks are skipped (`AirflowSkipException`), so only the last day retrains.
Empty (the default) leaves every run as above. `recloop backfill --start D1 --end D2` does the
same range in one process, much faster.

**Operator params** (Trigger DAG → the form, or `--conf`; the defaults change nothing):
`force_materialize` re-materializes the day into Redis even when Redis holds a newer day (a re-run
of an old date otherwise leaves the newer values), `skip_training` runs validate, stats and
features only (the retraining tasks above are skipped).

Every task body is one call into `pipelines.orchestration.tasks`, whose function of the same name
(`features`: `compute_features`) makes one call into the stage module below; nothing heavy is
imported at parse time.

| task | code (under `pipelines/`) |
|---|---|
| `validate` | `data/validate.py` `validate_partition` |
| `stats` | `data/stats.py` `daily_stats` |
| `features` | `features/tables.py` `compute_features`, `features/store.py` `apply_repo` |
| `materialize` | `features/store.py` `materialize_date` |
| `train_mf`, `train_popular`, `train_itemknn`, `train_two_tower` | `retrieval/train.py` `train` (data: `retrieval/data.py`) |
| `build_index` | `retrieval/index.py` `build_item_index` (FAISS library: `retrieval/faiss_index.py`) |
| `evaluate` | `retrieval/evaluate.py` `evaluate_forward` |
| `train_ranker` | `ranking/train.py` `train_for_date` (data: `ranking/data.py`) |
| `evaluate_ranker` | `ranking/evaluate.py` `evaluate_forward` |
| `register` | `release/register.py` `register_day` (MLflow: `release/registry.py`) |
| `gate` | `release/gate.py` `daily_gate` |
| `fit_linucb` | `release/linucb_fit.py` `daily_fit` (state: `serving/linucb.py`) |
| `train_extra` | `retrieval/train.py` `train` for each model of `RECLOOP_TRAIN_EXTRA` (none by default) |
"""

from __future__ import annotations

from airflow.sdk import Asset, TriggerRule, dag, task

from pipelines.orchestration.dag_defaults import (
    BUNDLE_URI,
    ITEM_INDEX_URI,
    ONLINE_FEATURES_URI,
    START_DATE,
    VALIDATED_URI,
    dag_params,
    default_args,
)

VALIDATED = Asset(VALIDATED_URI)
ONLINE_FEATURES = Asset(ONLINE_FEATURES_URI)
ITEM_INDEX = Asset(ITEM_INDEX_URI)
BUNDLE = Asset(BUNDLE_URI)


@dag(
    dag_id="recloop_daily",
    schedule="@daily",
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(),
    params=dag_params(),
    tags=["recloop", "daily"],
    doc_md=__doc__,
)
def recloop_daily():
    """The task wiring, as one flat list: a task per stage, each a one-line call into
    ``pipelines.orchestration.tasks``, then the dependencies. Kept in one function (over the
    80-line rule) because a DAG reads best as a single list of its tasks and edges."""

    @task(outlets=[VALIDATED])
    def validate(ds: str | None = None) -> dict:
        from pipelines.orchestration import tasks

        return tasks.validate(ds)

    @task
    def stats(ds: str | None = None) -> dict:
        from pipelines.orchestration import tasks

        return tasks.stats(ds)

    @task
    def features(ds: str | None = None, params: dict | None = None) -> dict:
        from pipelines.orchestration import tasks

        return tasks.compute_features(ds, params=params)

    @task(outlets=[ONLINE_FEATURES], trigger_rule=TriggerRule.NONE_FAILED)
    def materialize(ds: str | None = None, params: dict | None = None) -> dict:
        from pipelines.orchestration import tasks

        return tasks.materialize(ds, params=params)

    @task
    def fit_linucb(ds: str | None = None, params: dict | None = None) -> dict:
        from pipelines.orchestration import tasks

        return tasks.fit_linucb(ds, params=params)

    @task
    def train_extra(ds: str | None = None, params: dict | None = None) -> dict:
        from pipelines.orchestration import tasks

        return tasks.train_extra(ds, params=params)

    @task
    def train_mf(ds: str | None = None, params: dict | None = None) -> dict:
        from pipelines.orchestration import tasks

        return tasks.train_model(ds, "mf", params=params)

    @task
    def train_two_tower(ds: str | None = None, params: dict | None = None) -> dict:
        from pipelines.orchestration import tasks

        return tasks.train_model(ds, "two_tower", params=params)

    @task
    def train_popular(ds: str | None = None, params: dict | None = None) -> dict:
        from pipelines.orchestration import tasks

        return tasks.train_model(ds, "popular", params=params)

    @task
    def train_itemknn(ds: str | None = None, params: dict | None = None) -> dict:
        from pipelines.orchestration import tasks

        return tasks.train_model(ds, "itemknn", params=params)

    @task(outlets=[ITEM_INDEX])
    def build_index(ds: str | None = None, params: dict | None = None) -> dict:
        from pipelines.orchestration import tasks

        return tasks.build_index(ds, params=params)

    @task
    def evaluate(ds: str | None = None, params: dict | None = None) -> dict:
        from pipelines.orchestration import tasks

        return tasks.evaluate(ds, params=params)

    @task
    def train_ranker(ds: str | None = None, params: dict | None = None) -> dict:
        from pipelines.orchestration import tasks

        return tasks.train_ranker(ds, params=params)

    @task
    def evaluate_ranker(ds: str | None = None, params: dict | None = None) -> dict:
        from pipelines.orchestration import tasks

        return tasks.evaluate_ranker(ds, params=params)

    @task(outlets=[BUNDLE])
    def register(ds: str | None = None, params: dict | None = None) -> dict:
        from pipelines.orchestration import tasks

        return tasks.register(ds, params=params)

    @task
    def gate(ds: str | None = None, params: dict | None = None) -> dict:
        from pipelines.orchestration import tasks

        return tasks.gate(ds, params=params)

    checked = validate()
    feats = features()
    offline_eval, ranker_eval = evaluate(), evaluate_ranker()
    checked >> [stats(), feats, fit_linucb()]
    feats >> [offline_eval, ranker_eval]
    mf, two_tower, ranker = train_mf(), train_two_tower(), train_ranker()
    extra = train_extra()
    feats >> [mf, two_tower, train_popular(), train_itemknn(), extra]
    index = build_index()
    two_tower >> [index, ranker]
    online = materialize()  # after the gate (or its skip: backfill, skip_training)
    [offline_eval, ranker_eval] >> gate() >> online
    feats >> online
    [mf, extra, index, ranker, online] >> register()


recloop_daily()
