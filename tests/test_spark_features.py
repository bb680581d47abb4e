"""RECLOOP_FEATURE_ENGINE=spark (issue 19): PySpark computes the feature tables the DuckDB engine
computes — the same files, Arrow schema, row order and values (ints, strings and timestamps
exact, floats within 1e-9) — on the tiny simulated world and on hand-made logs that reach the
edge cases (no users file, a tie for the top category, a clipped purchase, an item with no
created date, a damaged window file that Spark quarantines). One local[2] SparkSession for the
module (a JVM, 5-10 s to start); the Java checks and the engine setting need none."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.data.simulate import simulate
from pipelines.features import spark_engine
from pipelines.features.tables import ENGINES, compute_features, read_table

TINY_DAYS = 3
D = dt.date(2024, 3, 28)


FAST_START = {
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
    "spark.sql.adaptive.enabled": "false",
    "spark.sql.shuffle.partitions": "2",
}
"""Session settings for a few small queries on a busy 2-core machine (they change no result):
the JIT's quick tier only (the first queries ran 2.5x faster), no adaptive re-planning."""


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The module's one Spark session (``compute`` finds it active and uses it)."""
    home = tmp_path_factory.mktemp("spark")
    session = spark_engine.spark_session(Settings(home=home), FAST_START)
    yield session
    session.stop()


def workspace(home: Path) -> Settings:
    settings = Settings(home=home)
    settings.ensure_dirs()
    return settings


def both_engines(settings: Settings, day: str | dt.date) -> tuple[dict, dict]:
    """Compute ``day`` with each engine, Spark first; ``({engine: result}, {engine: {entity:
    table}})`` with each engine's tables read back from the files it wrote."""
    results, written = {}, {}
    for engine in sorted(ENGINES, key=lambda e: e != "spark"):
        s = replace(settings, feature_engine=engine)
        results[engine] = compute_features(s, day)
        written[engine] = {e: read_table(s, e, day) for e in ("user", "item")}
    return results, written


def assert_same_table(duck: pa.Table, spark: pa.Table) -> None:
    """Same schema and rows in the same order; floats within 1e-9, the rest exact (``created``,
    the wall clock of each computation, aside)."""
    assert spark.schema.equals(duck.schema)
    assert spark.num_rows == duck.num_rows
    for name in duck.column_names:
        if name == "created":
            continue
        a, b = duck[name], spark[name]
        if pa.types.is_floating(a.type):
            np.testing.assert_allclose(b.to_numpy(), a.to_numpy(), rtol=0, atol=1e-9, err_msg=name)
        else:
            assert b.to_pylist() == a.to_pylist(), name


@pytest.mark.integration  # starts a JVM (PySpark local[2])
def test_spark_writes_the_duckdb_tables_on_tiny(spark: Any, tmp_path: Path) -> None:
    settings = workspace(tmp_path / "home")
    simulate(settings, TINY_DAYS, scale="tiny")
    days = sorted(p.name.removeprefix("date=") for p in settings.interactions_dir.iterdir())
    for day in days:  # the simulator's logs are clean: validation would pass every row
        raw = pq.read_table(settings.interactions_dir / f"date={day}" / "part-0.parquet")
        schema.write_partition_atomic(raw, settings.validated_dir, day)
    results, written = both_engines(settings, days[-1])

    duck, spk = results["duckdb"], results["spark"]
    assert (duck["engine"], spk["engine"]) == ("duckdb", "spark local[2]")
    assert spk["paths"] == duck["paths"]  # the same files, rewritten
    assert (spk["users"], spk["items"], spk["events"]) == (
        duck["users"],
        duck["items"],
        duck["events"],
    )
    users = written["spark"]["user"]
    assert users.num_rows > 100 and sum(users["user_ratings_28d"].to_pylist()) > 0
    assert len(set(users["user_top_category"].to_pylist())) > 2  # not all "unknown"
    for entity in ("user", "item"):
        assert_same_table(written["duckdb"][entity], written["spark"][entity])


def write_world(settings: Settings) -> None:
    """Hand-made logs over 9 days and an items file, no users file: u1's clicks tie books and
    music; u2 buys i3 for 250 (counts 10) and has an impression row of count 3; i3 is in no
    attribute file (its age runs from its first event, 8.04 days before the end of D); a
    damaged file in D-1's partition (the first engine quarantines it)."""
    rows = [
        (D, 9, "u1", "i1", "click", 1.0),
        (D, 10, "u1", "i2", "click", 1.0),
        (D, 11, "u2", "i3", "purchase", 250.0),
        (D - dt.timedelta(days=1), 6, "u2", "i1", "impression", 3.0),
        (D - dt.timedelta(days=1), 7, "u2", "i1", "rating", 4.0),
        (D - dt.timedelta(days=8), 23, "u3", "i3", "purchase", 2.5),
    ]
    for day in sorted({r[0] for r in rows}):
        part = [r for r in rows if r[0] == day]
        frame = pd.DataFrame(
            {
                "event_id": [f"e{day}-{k}" for k in range(len(part))],
                "ts": [pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=r[1]) for r in part],
                "user_id": [r[2] for r in part],
                "item_id": [r[3] for r in part],
                "event": [r[4] for r in part],
                "value": [r[5] for r in part],
            }
        )
        schema.write_partition_atomic(schema.conform(frame), settings.validated_dir, day)
    items = pd.DataFrame(
        {
            "item_id": ["i1", "i2"],
            "category": ["music", "books"],
            "price": [5.0, 12.5],
            "created_date": [D - dt.timedelta(days=30), None],
        }
    )
    schema.write_table_atomic(
        schema.conform(items, schema.ITEMS), settings.data_dir / "items.parquet"
    )
    damaged = settings.validated_dir / f"date={D - dt.timedelta(days=1)}" / "part-9.parquet"
    damaged.write_bytes(b"PAR1 not a parquet file")  # damaged after its validation


@pytest.mark.integration  # starts a JVM (PySpark local[2])
def test_spark_matches_duckdb_on_the_edge_cases(spark: Any, tmp_path: Path) -> None:
    settings = workspace(tmp_path / "home")
    write_world(settings)
    results, written = both_engines(settings, D)
    bad = str(settings.validated_dir / f"date={D - dt.timedelta(days=1)}" / "part-9.parquet")
    assert (results["spark"]["quarantined"], results["duckdb"]["quarantined"]) == ([bad], [])
    for entity in ("user", "item"):
        assert_same_table(written["duckdb"][entity], written["spark"][entity])
    users = {r["user_id"]: r for r in written["spark"]["user"].to_pylist()}
    items = {r["item_id"]: r for r in written["spark"]["item"].to_pylist()}
    assert (users["u1"]["user_top_category"], users["u1"]["user_top_category_share"]) == (
        "books",  # the tie goes to the first name
        0.5,
    )
    assert users["u2"]["user_purchases_1d"] == 10  # 250 clipped to max_purchase_value
    assert (users["u2"]["user_impressions_1d"], users["u2"]["user_impressions_7d"]) == (0, 3)
    assert users["u3"]["user_tenure_days"] == -1 and users["u3"]["user_gender"] == "unknown"
    assert (items["i1"]["item_age_days"], items["i2"]["item_age_days"]) == (
        31,
        0,
    )  # i2: no created date, first event on D
    assert items["i3"]["item_age_days"] == 8 and items["i3"]["item_category"] == "unknown"


def test_missing_java_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="apt-get install openjdk-17-jre-headless"):
        spark_engine.require_java({"PATH": str(tmp_path)})
    with pytest.raises(RuntimeError, match="JAVA_HOME=.* has no bin/java"):
        spark_engine.require_java({"JAVA_HOME": str(tmp_path)})


@pytest.mark.parametrize(
    ("banner", "ok"),
    [
        ('openjdk version "11.0.22" 2024-01-16', False),
        ('java version "1.8.0_392"', False),
        ('openjdk version "17.0.15" 2025-04-15', True),
        ('openjdk version "21" 2023-09-19', True),
    ],
)
def test_java_older_than_17_is_refused(tmp_path: Path, banner: str, ok: bool) -> None:
    java = tmp_path / "bin" / "java"
    java.parent.mkdir()
    java.write_text(f"#!/bin/sh\necho '{banner}' >&2\n")
    java.chmod(0o755)
    env = {"JAVA_HOME": str(tmp_path)}
    if ok:
        assert spark_engine.require_java(env) == str(java)
    else:
        with pytest.raises(RuntimeError, match="needs Java 17\\+.*openjdk-17-jre-headless"):
            spark_engine.require_java(env)


def test_engine_setting(tmp_path: Path) -> None:
    env = {"RECLOOP_HOME": str(tmp_path), "RECLOOP_FEATURE_ENGINE": "spark",
           "RECLOOP_SPARK_MASTER": "spark://10.0.0.1:7077"}  # fmt: skip
    s = Settings.from_env(env)
    assert (s.feature_engine, s.spark_master) == ("spark", "spark://10.0.0.1:7077")
    assert Settings.from_env(s.as_env()) == s
    assert Settings.from_env({"RECLOOP_HOME": str(tmp_path)}).feature_engine == "duckdb"
    with pytest.raises(
        ValueError, match="RECLOOP_FEATURE_ENGINE='polars': expected duckdb or spark"
    ):
        compute_features(replace(s, feature_engine="polars"), D)
