"""pipelines.core.layout: every path under RECLOOP_HOME, pinned (the workspace must not move)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from pipelines.core import layout
from pipelines.core.settings import Settings

D = dt.date(2026, 1, 3)


@pytest.fixture()
def ws(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home")  # nothing is created: layout only names paths


def rel(ws: Settings, path: Path) -> str:
    return path.relative_to(ws.home).as_posix()


def test_every_path_is_where_it_always_was(ws: Settings):
    expected = [
        (layout.validated_partition(ws, D), "data/validated/date=2026-01-03"),
        (layout.attributes_path(ws, "users"), "data/users.parquet"),
        (layout.attributes_path(ws, "items"), "data/items.parquet"),
        (layout.served_quarantine_dir(ws), "quarantine/served"),
        (layout.world_path(ws), "truth/world.json"),
        (layout.policy_value_path(ws), "truth/policy_value.parquet"),
        (layout.truth_impressions_dir(ws), "truth/impressions"),
        (layout.feature_table_dir(ws, "user"), "features/user"),
        (layout.feature_table_path(ws, "item", D), "features/item/date=2026-01-03/part-0.parquet"),
        (layout.feast_registry_path(ws), "features/registry.db"),
        (layout.mlflow_db_path(ws), "mlflow/mlflow.db"),
        (layout.mlflow_artifacts_dir(ws, "recloop-gates"), "mlflow/artifacts/recloop-gates"),
        (layout.mlflow_cache_dir(ws, "serving_bundle/v3"), "mlflow/cache/serving_bundle_v3"),
        (layout.registry_lock_path(ws), "mlflow/registry.lock"),
        (layout.airflow_db_path(ws), "airflow/airflow.db"),
        (layout.airflow_logs_dir(ws), "airflow/logs"),
        (layout.airflow_passwords_path(ws), "airflow/passwords.json"),
        (layout.airflow_migrated_path(ws), "airflow/.migrated"),
        (layout.airflow_standalone_log_path(ws), "airflow/standalone.log"),
        (layout.models_dir(ws, "two_tower"), "artifacts/models/two_tower"),
        (layout.model_dir(ws, "ranker", "2026-01-03"), "artifacts/models/ranker/date=2026-01-03"),
        (layout.indexes_dir(ws), "artifacts/index"),
        (layout.scenario_dir(ws, "inverted7-bundle2"), "artifacts/scenarios/inverted7-bundle2"),
        (layout.validation_report_path(ws, D), "reports/validation/date=2026-01-03.json"),
        (layout.data_docs_dir(ws), "reports/data_docs"),
        (layout.stats_reports_dir(ws), "reports/stats"),
        (layout.stats_report_path(ws, D), "reports/stats/date=2026-01-03.json"),
        (layout.eval_reports_dir(ws), "reports/eval"),
        (layout.eval_report_path(ws, D), "reports/eval/date=2026-01-03.json"),
        (layout.ranker_report_path(ws, D), "reports/ranker/date=2026-01-03.json"),
        (layout.ope_reports_dir(ws), "reports/ope"),
        (layout.ope_report_dir(ws, D), "reports/ope/date=2026-01-03"),
        (layout.ope_report_path(ws, D, "bundle-3"), "reports/ope/date=2026-01-03/bundle-3.json"),
        (layout.gate_reports_dir(ws), "reports/gates"),
        (layout.gate_report_path(ws, D), "reports/gates/date=2026-01-03.json"),
        (layout.ab_reports_dir(ws), "reports/ab"),
        (layout.ab_report_dir(ws, "1-vs-2"), "reports/ab/1-vs-2"),
        (layout.ab_report_path(ws, "1-vs-2", D), "reports/ab/1-vs-2/date=2026-01-03.json"),
        (layout.loop_days_path(ws), "reports/loop/days.json"),
        (layout.html_report_path(ws), "reports/index.html"),
        (layout.serving_dir(ws), "serving"),
        (layout.impressions_dir(ws), "serving/impressions"),
        (layout.requests_dir(ws), "serving/requests"),
        (layout.traffic_dir(ws), "serving/traffic"),
        (layout.serve_log_path(ws), "logs/serve.log"),
        (layout.bench_dir(ws), "bench"),
    ]
    assert [rel(ws, path) for path, _ in expected] == [want for _, want in expected]


def test_a_datetime_or_text_date_names_the_same_partition(ws: Settings):
    assert layout.gate_report_path(ws, "2026-01-03") == layout.gate_report_path(ws, D)
    assert layout.validated_partition(ws, "2026-01-03T10:00:00") == layout.validated_partition(
        ws, D
    )
    with pytest.raises(ValueError, match="not a date"):
        layout.gate_report_path(ws, "yesterday")


def test_unknown_entities_and_tables_are_refused(ws: Settings):
    with pytest.raises(ValueError, match="entity"):
        layout.feature_table_dir(ws, "session")
    with pytest.raises(ValueError, match="table"):
        layout.attributes_path(ws, "orders")


def test_nothing_is_created(ws: Settings):
    layout.model_dir(ws, "mf", D)
    layout.loop_days_path(ws)
    assert not ws.home.exists()
