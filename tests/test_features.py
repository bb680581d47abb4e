"""Feature tables (pipelines/features/tables.py): DuckDB over validated partitions, no Redis needed."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.features.tables import (
    CTR_PRIOR_IMPRESSIONS,
    DEFAULTS,
    ITEM_SCHEMA,
    USER_SCHEMA,
    compute_features,
    feature_time,
    read_table,
    table_path,
)

D = dt.date(2024, 3, 28)


def day(back: int, hour: int = 12) -> pd.Timestamp:
    """A timestamp ``back`` days before D, at ``hour`` UTC."""
    return pd.Timestamp(D - dt.timedelta(days=back), tz="UTC") + pd.Timedelta(hours=hour)


def write_logs(settings: Settings, rows: list[tuple]) -> None:
    """rows: (ts, user, item, event, value) → one validated partition per day."""
    df = pd.DataFrame(rows, columns=["ts", "user_id", "item_id", "event", "value"])
    df["event_id"] = [f"e{i}" for i in range(len(df))]
    for d, part in df.groupby(df["ts"].dt.date):
        schema.write_partition_atomic(schema.conform(part), settings.validated_dir, d)


def write_attributes(settings: Settings) -> None:
    users = pd.DataFrame(
        {
            "user_id": ["u1", "u2"],
            "age": [31, None],
            "gender": ["f", None],
            "country": ["DE", "FR"],
            "signup_date": [D - dt.timedelta(days=99), None],
        }
    )
    items = pd.DataFrame(
        {
            "item_id": ["i1", "i2", "i3", "i_cold"],
            "category": ["books", "books", "music", "toys"],
            "price": [10.0, 20.0, None, 5.0],
            "created_date": [D - dt.timedelta(days=40), None, None, D],
        }
    )
    schema.write_table_atomic(
        schema.conform(users, schema.USERS), settings.data_dir / "users.parquet"
    )
    schema.write_table_atomic(
        schema.conform(items, schema.ITEMS), settings.data_dir / "items.parquet"
    )


def standard_logs(settings: Settings) -> None:
    rows = [
        # u1: today 2 impressions + 1 click on i1; 5 days ago 1 impression i2 + 1 purchase i2
        (day(0, 9), "u1", "i1", "impression", 1.0),
        (day(0, 9), "u1", "i2", "impression", 1.0),
        (day(0, 10), "u1", "i1", "click", 1.0),
        (day(5), "u1", "i2", "impression", 1.0),
        (day(5), "u1", "i2", "purchase", 1.0),
        # u1 rated i3 20 days ago; 30 days ago is outside the 28-day window
        (day(20), "u1", "i3", "rating", 4.0),
        (day(30), "u1", "i3", "rating", 1.0),
        (day(30), "u1", "i1", "impression", 1.0),
        # u2: one impression counted 3 times (value = count), 3 days ago; a rating of 2
        (day(3, 6), "u2", "i2", "impression", 3.0),
        (day(3, 6), "u2", "i2", "rating", 2.0),
        # u3 (no attributes): impressions of a new item not in items.parquet
        (day(1), "u3", "i_new", "impression", 1.0),
        (day(0), "u3", "i_new", "click", 1.0),
    ]
    write_logs(settings, rows)


def as_dict(table, key: str) -> dict[str, dict]:
    return {r[key]: r for r in table.to_pylist()}


def test_windows_counts_and_rates(settings: Settings) -> None:
    standard_logs(settings)
    write_attributes(settings)
    out = compute_features(settings, D)
    users = as_dict(read_table(settings, "user", D), "user_id")
    items = as_dict(read_table(settings, "item", D), "item_id")
    assert out["users"] == 3 and out["items"] == 5  # attributes ∪ active in window
    assert out["events"] == 10  # the two rows 30 days back are outside the window

    u1 = users["u1"]
    assert (u1["user_impressions_1d"], u1["user_impressions_7d"], u1["user_impressions_28d"]) == (
        2,
        3,
        3,
    )
    assert (u1["user_clicks_1d"], u1["user_clicks_7d"]) == (1, 1)
    assert (u1["user_purchases_1d"], u1["user_purchases_7d"], u1["user_purchases_28d"]) == (0, 1, 1)
    assert (u1["user_ratings_7d"], u1["user_ratings_28d"]) == (0, 1)
    assert u1["user_avg_rating_28d"] == 4.0  # the 1-star rating 30 days ago is out of the window
    assert u1["user_days_since_last_event"] == pytest.approx(14 / 24)  # last event 10:00 on D
    # engagements (click i1 books, purchase i2 books, rating i3 music): books 2 of 3
    assert u1["user_top_category"] == "books"
    assert u1["user_top_category_share"] == pytest.approx(2 / 3)
    assert (u1["user_age"], u1["user_gender"], u1["user_country"]) == (31, "f", "DE")
    assert u1["user_tenure_days"] == 100  # signup 99 days before D, measured at the end of D

    # global CTR over the window: 2 clicks / 7 impressions (u2's row counts 3)
    g = 2 / 7
    k = CTR_PRIOR_IMPRESSIONS
    assert u1["user_ctr_28d"] == pytest.approx((1 + k * g) / (3 + k))
    u2 = users["u2"]
    assert u2["user_impressions_7d"] == 3 and u2["user_impressions_1d"] == 0
    assert (u2["user_age"], u2["user_gender"], u2["user_tenure_days"]) == (-1, "unknown", -1)
    assert u2["user_days_since_last_event"] == pytest.approx(3 - 6 / 24 + 1)
    u3 = users["u3"]
    assert (u3["user_top_category"], u3["user_country"]) == ("unknown", "unknown")

    i1, i2, i3 = items["i1"], items["i2"], items["i3"]
    assert (i1["item_impressions_1d"], i1["item_impressions_28d"], i1["item_clicks_1d"]) == (
        1,
        1,
        1,
    )
    assert (i2["item_impressions_1d"], i2["item_impressions_7d"]) == (1, 5)
    assert i2["item_purchases_7d"] == 1 and i2["item_ratings_28d"] == 1
    assert i2["item_avg_rating_28d"] == 2.0
    assert i3["item_avg_rating_28d"] == 4.0
    assert i1["item_ctr_28d"] == pytest.approx((1 + k * g) / (1 + k))
    assert (i1["item_category"], i1["item_price"], i1["item_age_days"]) == ("books", 10.0, 41)
    # i3: no price, no created_date: age from its first event in the window (20.5 days)
    assert (i3["item_price"], i3["item_age_days"]) == (-1.0, 20)
    # i2: no created_date; first event in the window 5 days back at 12:00 → 5 whole days
    assert i2["item_age_days"] == 5
    # trending: (engagements today + 1) / (7-day daily mean + 1)
    assert i1["item_trending"] == pytest.approx((1 + 1) / (1 / 7 + 1))
    assert i2["item_trending"] == pytest.approx((0 + 1) / (1 / 7 + 1))
    new = items["i_new"]
    assert (new["item_category"], new["item_price"], new["item_age_days"]) == ("unknown", -1.0, 1)
    cold = items["i_cold"]  # in the catalog, never shown: zero counts, prior CTR, global rating
    assert cold["item_impressions_28d"] == 0
    assert cold["item_ctr_28d"] == pytest.approx(g)
    assert cold["item_avg_rating_28d"] == pytest.approx((4.0 + 2.0) / 2)


def test_smoothed_ctr_keeps_one_lucky_click_below_a_proven_item(settings: Settings) -> None:
    rows = [(day(0), "u0", "lucky", "impression", 1.0), (day(0), "u0", "lucky", "click", 1.0)]
    rows += [(day(1), f"u{i}", "proven", "impression", 1.0) for i in range(200)]
    rows += [(day(1), f"u{i}", "proven", "click", 1.0) for i in range(60)]
    rows += [(day(2), f"v{i}", "meh", "impression", 1.0) for i in range(800)]
    rows += [(day(2), f"v{i}", "meh", "click", 1.0) for i in range(20)]
    write_logs(settings, rows)
    compute_features(settings, D)
    items = as_dict(read_table(settings, "item", D), "item_id")
    assert items["proven"]["item_ctr_28d"] > items["lucky"]["item_ctr_28d"]
    assert items["lucky"]["item_ctr_28d"] > items["meh"]["item_ctr_28d"]  # raw 1.0 shrunk, not 0
    assert items["lucky"]["item_ctr_28d"] < 0.2


def test_schema_timestamps_and_no_nulls(settings: Settings) -> None:
    standard_logs(settings)  # no attribute files: defaults everywhere
    compute_features(settings, D)
    for entity, expected in (("user", USER_SCHEMA), ("item", ITEM_SCHEMA)):
        table = pq.read_table(table_path(settings, entity, D))
        assert table.schema.equals(expected, check_metadata=False)
        df = table.to_pandas()
        assert not df.isna().any().any()
        assert (df["event_timestamp"] == pd.Timestamp(feature_time(D))).all()
        assert (df["created"] > df["event_timestamp"]).all()  # computed after D ended
    assert feature_time(D) == dt.datetime(2024, 3, 29, tzinfo=dt.UTC)
    users = as_dict(read_table(settings, "user", D), "user_id")
    assert users["u1"]["user_top_category"] == "unknown"
    assert users["u1"]["user_age"] == DEFAULTS["user_age"] == -1


def test_rerun_replaces_only_that_date(settings: Settings) -> None:
    standard_logs(settings)
    prev = D - dt.timedelta(days=1)
    compute_features(settings, prev)
    first = compute_features(settings, D)
    before_prev = read_table(settings, "user", prev).drop(["created"])
    before = read_table(settings, "user", D).drop(["created"])
    again = compute_features(settings, D)
    assert again["users"] == first["users"] and again["items"] == first["items"]
    assert read_table(settings, "user", D).drop(["created"]).equals(before)
    assert read_table(settings, "user", prev).drop(["created"]).equals(before_prev)
    names = sorted(p.name for p in (settings.features_dir / "user").iterdir())
    assert names == [f"date={prev}", f"date={D}"]  # no temporary folder left behind


def test_missing_partition_is_a_clear_error(settings: Settings) -> None:
    standard_logs(settings)
    later = D + dt.timedelta(days=3)
    with pytest.raises(FileNotFoundError, match=f"date={later}"):
        compute_features(settings, later)
    assert not table_path(settings, "user", later).exists()
