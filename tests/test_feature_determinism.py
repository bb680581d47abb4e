"""Feature tables are deterministic (issue 17, crash injection): the same validated logs give the
same values whatever the number of DuckDB threads, so a rerun of a day writes what the first run
wrote. No Redis needed."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.features.tables import compute_features, read_table

D = dt.date(2024, 3, 28)


def write_purchases(settings: Settings, days: int = 7, rows: int = 5000) -> None:
    """``rows`` purchases a day of 3 users on 3 items, each of a random non-integral value in
    [0, 10): sums of many floats, one validated file a day (DuckDB scans files in parallel)."""
    rng = np.random.default_rng(0)
    for back in range(days):
        d = D - dt.timedelta(days=back)
        secs = rng.integers(0, 86_400, rows)
        frame = pd.DataFrame(
            {
                "event_id": [f"e{back}-{i}" for i in range(rows)],
                "ts": pd.Timestamp(d, tz="UTC") + pd.to_timedelta(secs, unit="s"),
                "user_id": rng.integers(0, 3, rows).astype(str),
                "item_id": rng.integers(0, 3, rows).astype(str),
                "event": "purchase",
                "value": rng.random(rows) * 10,
            }
        )
        schema.write_partition_atomic(schema.conform(frame), settings.validated_dir, d)


def features_with_threads(
    settings: Settings, threads: int, monkeypatch: pytest.MonkeyPatch
) -> dict[str, pa.Table]:
    """D's user and item tables computed by DuckDB connections of ``threads`` threads
    (``created``, the wall clock, dropped)."""
    connect = duckdb.connect
    with monkeypatch.context() as m:
        m.setattr(duckdb, "connect", lambda *a, **k: connect(*a, config={"threads": threads}))
        compute_features(settings, D)
    return {e: read_table(settings, e, D).drop_columns(["created"]) for e in ("user", "item")}


def test_float_features_do_not_depend_on_thread_count(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_purchases(settings)
    runs = [features_with_threads(settings, n, monkeypatch) for n in (1, 4, 1, 4)]
    items = runs[0]["item"].to_pandas()
    assert len(items) == 3 and (items["item_purchases_7d"] > 10_000).all()
    assert items["item_trending"].between(0.9, 1.1).all()  # ~ one day's share of seven
    for run in runs[1:]:
        for entity in ("user", "item"):
            assert run[entity].equals(runs[0][entity]), entity


def test_top_category_ties_go_to_the_first_category_by_name(settings: Settings) -> None:
    items = pd.DataFrame({"item_id": ["i_m", "i_b", "i_t"], "category": ["music", "books", "toys"]})
    schema.write_table_atomic(
        schema.conform(items, schema.ITEMS), settings.data_dir / "items.parquet"
    )
    # u1: one click on music (seen first), one on books, one on toys: a three-way tie
    # u2: two on toys, one on books: no tie
    rows = [("u1", "i_m"), ("u1", "i_t"), ("u1", "i_b"), ("u2", "i_t"), ("u2", "i_b")]
    rows.append(("u2", "i_t"))
    ts = [pd.Timestamp(D, tz="UTC") + pd.Timedelta(hours=h) for h in range(len(rows))]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id"]).assign(
        ts=ts, event="click", value=1.0, event_id=[f"e{i}" for i in range(len(rows))]
    )
    schema.write_partition_atomic(schema.conform(frame), settings.validated_dir, D)
    compute_features(settings, D)
    users = read_table(settings, "user", D).to_pandas().set_index("user_id")
    assert users.loc["u1", "user_top_category"] == "books"
    assert users.loc["u1", "user_top_category_share"] == pytest.approx(1 / 3)
    assert users.loc["u2", "user_top_category"] == "toys"
