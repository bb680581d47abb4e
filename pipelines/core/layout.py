"""The map of the workspace: every path under ``RECLOOP_HOME``, one small function each.

Nothing here touches the disk: each function only joins names. ``Settings`` holds the top-level
folders (``settings.data_dir``, ``settings.reports_dir``, ...); everything below them is named
here, and every module that reads or writes the workspace asks this module for the path.
``D`` is a logical date ``YYYY-MM-DD``; a ``date=D`` folder is one partition
(:func:`pipelines.core.schema.partition_dir`).

```
RECLOOP_HOME/
  data/                                   settings.data_dir
    interactions/date=D/*.parquet         settings.interactions_dir: the daily logs (raw)
    validated/date=D/*.parquet            settings.validated_dir, validated_partition(): passed the gate
    users.parquet, items.parquet          attributes_path(): user and item attributes
    imports/date=D.json                   import_record_path(): where an imported day came from
  quarantine/date=D/                      settings.quarantine_dir: rows the validation rejected
  quarantine/served/date=D/               served_quarantine_dir(): feedback matching no impression
  truth/                                  settings.truth_dir: the simulator's ground truth
    world.json                            world_path(): how to rebuild the simulated world
    policy_value.parquet                  policy_value_path(): true value of the logging policy
    impressions/date=D/part-0.parquet     truth_impressions_dir(): true click prob. per impression
  features/                               settings.features_dir: the Feast offline store
    user/date=D/part-0.parquet            feature_table_dir(), feature_table_path()
    item/date=D/part-0.parquet
    registry.db                           feast_registry_path(): the Feast registry
  mlflow/                                 settings.mlflow_dir
    mlflow.db                             mlflow_db_path(): default tracking + registry database
    artifacts/<experiment>/               mlflow_artifacts_dir(): local artifact locations
    cache/<key>/                          mlflow_cache_dir(): downloaded remote artifacts
    registry.lock                         registry_lock_path(): the alias lock (fcntl)
  airflow/                                settings.airflow_home: AIRFLOW_HOME
    airflow.db, logs/, passwords.json     airflow_db_path(), airflow_logs_dir(), airflow_passwords_path()
    .migrated, standalone.log             airflow_migrated_path(), airflow_standalone_log_path()
  artifacts/                              settings.artifacts_dir
    models/<name>/date=D/                 models_dir(), model_dir(): a model trained through D
    index/index-<version>/                indexes_dir(): FAISS indexes, one per two-tower version
                                          (pipelines.retrieval.faiss_index.index_dir names them)
    scenarios/<variant>/                  scenario_dir(): altered bundles of the loop's scenarios
  reports/                                settings.reports_dir
    validation/date=D.json                validation_report_path()
    data_docs/                            data_docs_dir(): Great Expectations Data Docs
    gx_validation_results/                Great Expectations' results store (named by its config in
                                          pipelines.data.validate, beside data_docs/)
    stats/date=D.json                     stats_reports_dir(), stats_report_path()
    eval/date=D.json                      eval_reports_dir(), eval_report_path(): retrievers' forward evaluation
    ranker/date=D.json                    ranker_report_path(): forward evaluation of the rankers
    ope/date=D/<label>.json               ope_reports_dir(), ope_report_dir(), ope_report_path()
    gates/date=D.json                     gate_reports_dir(), gate_report_path(): gate decisions
    ab/<experiment>/date=D.json           ab_reports_dir(), ab_report_dir(), ab_report_path()
    loop/days.json                        loop_days_path(): the closed loop's day records
    index.html                            html_report_path(): ``recloop report``
  serving/                                serving_dir()
    impressions/date=D/                   impressions_dir(): the service's impression log
    requests/date=D/                      requests_dir(): the service's request log
    traffic/date=D/                       traffic_dir(): manifests of the simulated traffic
  logs/serve.log                          serve_log_path(): the closed loop's service output
  bench/                                  bench_dir(): indexes cached by benchmarks/bench_serving.py
  redis-<port>.pid, redis-<port>.log      written by ``infra/redis.sh`` (shell, not Python)
```

Each file format has one reader and one writer, in one module: a missing file reads as absent
(None or empty), an unreadable or wrongly shaped one raises ``ValueError`` naming the file
(:func:`pipelines.core.schema.read_json_file`). Formats read by several stages live in
``pipelines.core`` too: :mod:`~pipelines.core.gate_decisions`, :mod:`~pipelines.core.loop_days`,
:mod:`~pipelines.core.eval_reports`, :mod:`~pipelines.core.stats_reports`,
:mod:`~pipelines.core.ope_reports`, :mod:`~pipelines.core.ab_decisions`,
:mod:`~pipelines.core.artifact_meta` (the ``meta.json`` of every artifact folder) and
:mod:`~pipelines.core.validated` (the validated partitions); the others beside the stage that
writes them: ``truth/world.json`` in :mod:`pipelines.data.simulate`, ``reports/validation/`` in
:mod:`pipelines.data.validate`, ``reports/ranker/`` in :mod:`pipelines.ranking.evaluate`.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pipelines.core.schema import parse_date, partition_dir
from pipelines.core.settings import Settings

Date = str | dt.date


def _dated_json(folder: Path, date: Date) -> Path:
    """``folder/date=D.json``."""
    return folder / f"date={parse_date(date).isoformat()}.json"


# --- data/ -----------------------------------------------------------------------------------
def validated_partition(settings: Settings, date: Date) -> Path:
    """``data/validated/date=D``: the rows of ``D`` that passed validation."""
    return partition_dir(settings.validated_dir, date)


def attributes_path(settings: Settings, table: str) -> Path:
    """``data/users.parquet`` or ``data/items.parquet`` (``table``: ``users`` or ``items``)."""
    if table not in ("users", "items"):
        raise ValueError(f"table must be 'users' or 'items', got {table!r}")
    return settings.data_dir / f"{table}.parquet"


def imports_dir(settings: Settings) -> Path:
    """``data/imports``: one ``date=D.json`` import record per imported day
    (:mod:`pipelines.data.ingest` reads and writes them)."""
    return settings.data_dir / "imports"


def import_record_path(settings: Settings, date: Date) -> Path:
    """``data/imports/date=D.json``: the import that wrote the raw partition of ``D``."""
    return _dated_json(imports_dir(settings), date)


# --- quarantine/ and truth/ --------------------------------------------------------------------
def served_quarantine_dir(settings: Settings) -> Path:
    """``quarantine/served``: unmatched feedback rows, one ``date=D`` partition per day."""
    return settings.quarantine_dir / "served"


def world_path(settings: Settings) -> Path:
    """``truth/world.json``: what rebuilds the simulated world."""
    return settings.truth_dir / "world.json"


def policy_value_path(settings: Settings) -> Path:
    """``truth/policy_value.parquet``: the true value of the logging policy per day."""
    return settings.truth_dir / "policy_value.parquet"


def truth_impressions_dir(settings: Settings) -> Path:
    """``truth/impressions``: one ``date=D/part-0.parquet`` of true probabilities per impression."""
    return settings.truth_dir / "impressions"


# --- features/ -------------------------------------------------------------------------------
def feature_table_dir(settings: Settings, entity: str) -> Path:
    """``features/<entity>`` (entity: ``user`` or ``item``): the FileSource path Feast reads."""
    if entity not in ("user", "item"):
        raise ValueError(f"entity must be 'user' or 'item', got {entity!r}")
    return settings.features_dir / entity


def feature_table_path(settings: Settings, entity: str, date: Date) -> Path:
    """``features/<entity>/date=D/part-0.parquet``."""
    return partition_dir(feature_table_dir(settings, entity), date) / "part-0.parquet"


def feast_registry_path(settings: Settings) -> Path:
    """``features/registry.db``: the Feast registry."""
    return settings.features_dir / "registry.db"


# --- mlflow/ ---------------------------------------------------------------------------------
def mlflow_db_path(settings: Settings) -> Path:
    """``mlflow/mlflow.db``: the default tracking + registry database (the default of
    ``RECLOOP_MLFLOW_URI``, which ``Settings.from_env`` spells out: it cannot import this module)."""
    return settings.mlflow_dir / "mlflow.db"


def mlflow_artifacts_dir(settings: Settings, experiment: str) -> Path:
    """``mlflow/artifacts/<experiment>``: the artifact location of a local experiment."""
    return settings.mlflow_dir / "artifacts" / experiment


def mlflow_cache_dir(settings: Settings, key: str) -> Path:
    """``mlflow/cache/<key>`` (``/`` in ``key`` becomes ``_``): a downloaded remote artifact."""
    return settings.mlflow_dir / "cache" / key.replace("/", "_")


def registry_lock_path(settings: Settings) -> Path:
    """``mlflow/registry.lock``: the file locked while registry aliases move."""
    return settings.mlflow_dir / "registry.lock"


# --- airflow/ --------------------------------------------------------------------------------
def airflow_db_path(settings: Settings) -> Path:
    """``airflow/airflow.db``: Airflow's SQLite metadata database."""
    return settings.airflow_home / "airflow.db"


def airflow_logs_dir(settings: Settings) -> Path:
    """``airflow/logs``: Airflow's task logs."""
    return settings.airflow_home / "logs"


def airflow_passwords_path(settings: Settings) -> Path:
    """``airflow/passwords.json``: the passwords SimpleAuthManager generated."""
    return settings.airflow_home / "passwords.json"


def airflow_migrated_path(settings: Settings) -> Path:
    """``airflow/.migrated``: stamp written once the metadata database is migrated."""
    return settings.airflow_home / ".migrated"


def airflow_standalone_log_path(settings: Settings) -> Path:
    """``airflow/standalone.log``: the output of ``airflow standalone``."""
    return settings.airflow_home / "standalone.log"


# --- artifacts/ ------------------------------------------------------------------------------
def models_dir(settings: Settings, name: str) -> Path:
    """``artifacts/models/<name>``: one ``date=D`` folder per training day of model ``name``."""
    return settings.artifacts_dir / "models" / name


def model_dir(settings: Settings, name: str, date: Date) -> Path:
    """``artifacts/models/<name>/date=D``: model ``name`` trained through ``D``."""
    return partition_dir(models_dir(settings, name), date)


def indexes_dir(settings: Settings) -> Path:
    """``artifacts/index``: one ``index-<version>`` folder per index (named by
    ``pipelines.retrieval.faiss_index.index_dir``)."""
    return settings.artifacts_dir / "index"


def scenario_dir(settings: Settings, variant: str) -> Path:
    """``artifacts/scenarios/<variant>``: the altered bundle of a loop scenario."""
    return settings.artifacts_dir / "scenarios" / variant


# --- reports/ --------------------------------------------------------------------------------
def validation_report_path(settings: Settings, date: Date) -> Path:
    """``reports/validation/date=D.json``."""
    return _dated_json(settings.reports_dir / "validation", date)


def data_docs_dir(settings: Settings) -> Path:
    """``reports/data_docs``: Great Expectations Data Docs."""
    return settings.reports_dir / "data_docs"


def stats_reports_dir(settings: Settings) -> Path:
    """``reports/stats``: one ``date=D.json`` per day."""
    return settings.reports_dir / "stats"


def stats_report_path(settings: Settings, date: Date) -> Path:
    """``reports/stats/date=D.json``."""
    return _dated_json(stats_reports_dir(settings), date)


def eval_reports_dir(settings: Settings) -> Path:
    """``reports/eval``: one ``date=D.json`` per day."""
    return settings.reports_dir / "eval"


def eval_report_path(settings: Settings, date: Date) -> Path:
    """``reports/eval/date=D.json``: forward evaluation of the retrieval models."""
    return _dated_json(eval_reports_dir(settings), date)


def ranker_report_path(settings: Settings, date: Date) -> Path:
    """``reports/ranker/date=D.json``: forward evaluation of the rankers."""
    return _dated_json(settings.reports_dir / "ranker", date)


def ope_reports_dir(settings: Settings) -> Path:
    """``reports/ope``: one ``date=D`` folder per day."""
    return settings.reports_dir / "ope"


def ope_report_dir(settings: Settings, date: Date) -> Path:
    """``reports/ope/date=D``: one ``<label>.json`` per evaluated policy."""
    return partition_dir(ope_reports_dir(settings), date)


def ope_report_path(settings: Settings, date: Date, label: str) -> Path:
    """``reports/ope/date=D/<label>.json`` (``label``: e.g. ``bundle-3``)."""
    return ope_report_dir(settings, date) / f"{label}.json"


def gate_reports_dir(settings: Settings) -> Path:
    """``reports/gates``: one ``date=D.json`` gate decision per day."""
    return settings.reports_dir / "gates"


def gate_report_path(settings: Settings, date: Date) -> Path:
    """``reports/gates/date=D.json``: the gate decision of ``D``."""
    return _dated_json(gate_reports_dir(settings), date)


def ab_reports_dir(settings: Settings) -> Path:
    """``reports/ab``: one folder per experiment."""
    return settings.reports_dir / "ab"


def ab_report_dir(settings: Settings, experiment: str) -> Path:
    """``reports/ab/<experiment>``."""
    return ab_reports_dir(settings) / experiment


def ab_report_path(settings: Settings, experiment: str, date: Date) -> Path:
    """``reports/ab/<experiment>/date=D.json``: the experiment's decision on ``D``."""
    return _dated_json(ab_report_dir(settings, experiment), date)


def loop_days_path(settings: Settings) -> Path:
    """``reports/loop/days.json``: one record per logical date the closed loop worked on."""
    return settings.reports_dir / "loop" / "days.json"


def html_report_path(settings: Settings) -> Path:
    """``reports/index.html``: the default output of ``recloop report``."""
    return settings.reports_dir / "index.html"


# --- serving/ and logs/ ----------------------------------------------------------------------
def serving_dir(settings: Settings) -> Path:
    """``serving``: what the online service and the simulated traffic write."""
    return settings.home / "serving"


def impressions_dir(settings: Settings) -> Path:
    """``serving/impressions`` (partitions ``date=D`` below it)."""
    return serving_dir(settings) / "impressions"


def requests_dir(settings: Settings) -> Path:
    """``serving/requests`` (partitions ``date=D`` below it, wall-clock dates)."""
    return serving_dir(settings) / "requests"


def traffic_dir(settings: Settings) -> Path:
    """``serving/traffic`` (manifest partitions ``date=D`` below it)."""
    return serving_dir(settings) / "traffic"


def serve_log_path(settings: Settings) -> Path:
    """``logs/serve.log``: stdout and stderr of the closed loop's service process."""
    return settings.home / "logs" / "serve.log"


def bench_dir(settings: Settings) -> Path:
    """``bench``: what the benchmarks cache in a workspace (``benchmarks/bench_serving.py``)."""
    return settings.home / "bench"
