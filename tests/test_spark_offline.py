"""Feast's Spark offline store (issue 19): with ``RECLOOP_FEATURE_ENGINE=spark`` the feature repo
registers ``SparkSource``s and ``training_frame`` runs its point-in-time join in Spark; on the
same tables and events it returns the frame Feast's file store returns, row for row, values and
dtypes exact — events before any feature row, exactly at a feature timestamp, between rows, past
the ttl, slates of one user at one time, a nanosecond timestamp (Spark keeps microseconds), ids
the tables do not know. One local[2] session for the module (tests/test_spark_features.py's)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pandas as pd
import pytest

from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.features import spark_engine
from pipelines.features import store as fs
from pipelines.features.tables import (
    DEFAULTS,
    ITEM_FEATURES,
    ITEM_SCHEMA,
    USER_FEATURES,
    USER_SCHEMA,
    feature_time,
)
from tests.test_spark_features import FAST_START

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::FutureWarning"),  # dask, inside Feast's file store
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # Feast: "spark ... is in alpha"
]

DAYS = [dt.date(2024, 5, 8), dt.date(2024, 5, 9), dt.date(2024, 5, 10)]
NO_CODEGEN = {
    "spark.sql.codegen.wholeStage": "false",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
}
"""Interpreted plans: a cold JVM compiles none for a dozen rows (the first join ran ~20% faster)."""


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The module's one Spark session (Feast's Spark store finds it active and uses it)."""
    home = tmp_path_factory.mktemp("spark")
    session = spark_engine.spark_session(Settings(home=home), FAST_START | NO_CODEGEN)
    yield session
    session.stop()


def write_tables(settings: Settings) -> None:
    """Hand-made tables over 3 days: values that change every day, users and items that appear
    late (u3, i3) or stop (u2 after day 1), so each event sees a different row."""
    for k, date in enumerate(DAYS):
        stamp = {"event_timestamp": feature_time(date), "created": feature_time(date)}
        users = [
            {n: DEFAULTS[n] for n, _, _ in USER_FEATURES}
            | {"user_id": f"u{u}", "user_clicks_28d": 10 * k + u, "user_ctr_28d": 0.1 * k + u}
            | {"user_top_category": f"c{(u + k) % 3}", **stamp}
            for u in range(4)
            if not (u == 3 and k < 2) and not (u == 2 and k > 0)
        ]
        items = [
            {n: DEFAULTS[n] for n, _, _ in ITEM_FEATURES}
            | {"item_id": f"i{i}", "item_clicks_28d": 100 * k + i, "item_price": 1.5 * i + k}
            | stamp
            for i in range(4)
            if not (i == 3 and k == 0)
        ]
        for name, rows, arrow_schema in (
            ("user", users, USER_SCHEMA),
            ("item", items, ITEM_SCHEMA),
        ):
            table = schema.conform(pd.DataFrame(rows), arrow_schema)
            schema.write_partition_atomic(table, settings.features_dir / name, date)


def events() -> pd.DataFrame:
    t0 = pd.Timestamp(DAYS[0], tz="UTC")  # day 0's rows are known from t0 + 1 day
    at = [
        ("u0", "i0", t0 + pd.Timedelta(hours=5)),  # before any feature row
        ("u0", "i1", t0 + pd.Timedelta(days=1)),  # exactly at day 0's feature timestamp
        ("u1", "i1", t0 + pd.Timedelta(days=1, hours=3)),  # a slate: one user, one time ...
        ("u1", "i2", t0 + pd.Timedelta(days=1, hours=3)),
        ("u1", "i3", t0 + pd.Timedelta(days=1, hours=3)),  # ... an item with no row yet
        ("u1", "i1", t0 + pd.Timedelta(days=2, hours=3)),  # the same user, a day later
        ("u2", "i0", t0 + pd.Timedelta(days=2, hours=1)),  # u2's last row, 1 day old
        ("u2", "i0", t0 + pd.Timedelta(days=3, hours=1)),  # u2's last row past the 2-day ttl
        ("u3", "i3", t0 + pd.Timedelta(days=3)),  # exactly at day 2's timestamp
        ("u3", "i2", t0 + pd.Timedelta(days=3, nanoseconds=500)),  # below Spark's microsecond
        ("u0", "i2", t0 + pd.Timedelta(days=6)),  # every row past the ttl
        ("nobody", "i1", t0 + pd.Timedelta(days=2)),  # ids the tables do not know
        ("u1", "nothing", t0 + pd.Timedelta(days=2)),
        ("u0", "i0", t0 + pd.Timedelta(days=1)),  # a repeat of row 1's user and time
    ]
    frame = pd.DataFrame(at, columns=["user_id", "item_id", "event_timestamp"])
    frame["label"] = [k % 2 for k in range(len(frame))]
    return frame


def test_spark_store_builds_the_file_stores_frame(spark: Any, settings: Settings) -> None:
    """``fill=False``: the stores' own answers, nulls and dtypes as they come (``fill`` is
    the same code after them)."""
    write_tables(settings)
    file_settings = replace(settings, feature_engine="duckdb")
    spark_settings = replace(settings, feature_engine="spark")
    fs.apply_repo(file_settings)
    by_file = fs.training_frame(file_settings, events(), "ranker_v1", fill=False)
    # the registry holds FileSources: training_frame applies the Spark engine's sources itself
    by_spark = fs.training_frame(spark_settings, events(), "ranker_v1", fill=False)
    assert by_file.attrs["offline_store"] == "file"
    assert by_spark.attrs["offline_store"] == "spark"
    store = fs.get_store(spark_settings)
    assert type(store.get_feature_view("user_features").batch_source).__name__ == "SparkSource"

    pd.testing.assert_frame_equal(by_spark, by_file, check_exact=True)
    # The frame is the point-in-time one (not two equal wrong answers).
    assert list(by_spark["user_missing"]) == [
        True, False, False, False, False, False, False, True,
        False, False, True, True, False, False,
    ]  # fmt: skip
    assert list(by_spark["item_missing"]) == [
        True, False, False, False, True, False, False, False,
        False, False, True, False, True, False,
    ]  # fmt: skip
    clicks = by_spark["user_clicks_28d"].tolist()
    assert clicks[1:7] == [0, 1, 1, 1, 11, 2] and clicks[8:10] == [23, 23]
    assert by_spark["item_clicks_28d"].tolist()[8:10] == [203, 202]
    assert by_spark["user_top_category"].tolist()[8] == "c2"
    assert by_spark["event_timestamp"].tolist() == events()["event_timestamp"].tolist()
