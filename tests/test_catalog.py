"""Catalog health (coverage, Gini, novelty, new items), activity buckets, the report's section."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from pipelines.core import layout, schema
from pipelines.report import catalog
from pipelines.report.html import write_report

D = dt.date(2026, 1, 10)


def _catalog(n: int, new: int = 0) -> pd.DataFrame:
    """``n`` items i0..; the last ``new`` created on D, the others long before."""
    created = [dt.date(2025, 1, 1)] * (n - new) + [D] * new
    return pd.DataFrame({"item_id": [f"i{k}" for k in range(n)], "created_date": created})


def _shown(items: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"item_id": items})


def test_gini_extremes_and_a_known_value():
    assert catalog.gini([5, 5, 5, 5]) == 0.0
    assert catalog.gini([0, 0, 0, 0]) == 0.0 and catalog.gini([]) == 0.0 and catalog.gini([3]) == 0
    assert catalog.gini([0] * 99 + [10]) == pytest.approx(0.99)  # one item of 100: (n-1)/n
    # (1, 3): sum |xi - xj| over ordered pairs = 4, / (2 n^2 mean) = 4 / (2*4*2) = 0.25
    assert catalog.gini([3, 1]) == pytest.approx(0.25)
    assert catalog.gini([1, 2, 3, 4]) < catalog.gini([0, 0, 1, 9])


def test_catalog_health_on_a_hand_made_day():
    cat = _catalog(10, new=2)  # i8, i9 new
    shown = _shown(["i0", "i0", "i1", "i9"])
    h = catalog.catalog_health(shown, cat, D)
    assert h["impressions"] == 4 and h["distinct_items"] == 3 and h["catalog_items"] == 10
    assert h["coverage"] == pytest.approx(0.3)
    assert h["new_item_share"] == pytest.approx(0.25)
    counts = [2, 1] + [0] * 7 + [1]
    assert h["gini"] == pytest.approx(catalog.gini(counts)) and h["gini"] > 0.5
    # no popularity: every item equally likely, novelty = log2(catalog size)
    assert h["novelty"] == pytest.approx(math.log2(10))
    # i0 took 7 of 10 positives before: (7+1)/(10+10) for i0, (0+1)/20 for the others
    pop = pd.Series({"i0": 7, "i2": 3})
    h2 = catalog.catalog_health(shown, cat, D, pop)
    want = np.mean([-math.log2(8 / 20)] * 2 + [-math.log2(1 / 20)] * 2)
    assert h2["novelty"] == pytest.approx(want)
    # shown items outside the catalog join it; new_days bounds "new"
    h3 = catalog.catalog_health(_shown(["zz"]), cat, D, new_days=0)
    assert h3["catalog_items"] == 10 and h3["coverage"] == pytest.approx(1 / 11)
    assert h3["new_item_share"] == 0.0


def test_catalog_health_of_nothing_shown():
    h = catalog.catalog_health(_shown([]), _catalog(5), D)
    assert h["distinct_items"] == 0 and h["coverage"] == 0.0 and h["gini"] == 0.0
    assert h["novelty"] is None and h["new_item_share"] is None


def test_activity_buckets_and_per_bucket_means():
    got = catalog.activity_bucket([0, 1, 4, 5, 19, 20, 300])
    assert list(got) == ["0", "1-4", "1-4", "5-19", "5-19", "20+", "20+"]
    buckets = pd.Series({"a": "0", "b": "1-4", "c": "1-4"})
    values = pd.Series([0.1, 0.2, 0.3, 0.5, 0.9], index=["a", "b", "b", "c", "d"])
    per = catalog.by_bucket(values, buckets)
    assert list(per) == list(catalog.BUCKETS)
    assert per["0"]["mean"] == pytest.approx(0.5)  # a and d (no bucket → "0")
    assert per["0"]["users"] == 2 and per["1-4"]["users"] == 2 and per["1-4"]["n"] == 3
    assert per["1-4"]["mean"] == pytest.approx(1.0 / 3)
    assert per["20+"] == {"mean": None, "users": 0, "n": 0}


def _write_logs(settings, day: dt.date, rows: list[tuple[str, str, str]]) -> None:
    """A validated partition of ``day`` from ``(user, item, event)`` rows."""
    ts = pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=1)
    frame = pd.DataFrame(
        [
            {
                "event_id": f"{day}-{n}",
                "ts": ts + pd.Timedelta(seconds=n),
                "user_id": u,
                "item_id": i,
                "event": e,
                "value": 1.0,
                "request_id": f"r{n}",
                "position": 0,
                "arm": "champion",
                "model_version": "bundle-1",
                "propensity": 0.5,
            }  # fmt: skip
            for n, (u, i, e) in enumerate(rows)
        ]
    )
    schema.write_partition_atomic(
        schema.conform(frame, schema.INTERACTIONS), settings.validated_dir, day
    )


def _items_table(settings, n: int) -> None:
    created = ["2025-01-01"] * (n - 1) + [D.isoformat()]
    pd.DataFrame(
        {
            "item_id": [f"i{k}" for k in range(n)],
            "category": "x",
            "price": 1.0,
            "created_date": created,
        }  # fmt: skip
    ).to_parquet(layout.attributes_path(settings, "items"))


def test_positives_buckets_and_daily_health_from_validated_logs(settings):
    _items_table(settings, 4)
    d1 = D - dt.timedelta(days=1)
    clicks = [("u1", "i0", "click")] * 6 + [("u2", "i1", "purchase"), ("u2", "i1", "impression")]
    _write_logs(settings, d1, clicks + [("u1", "i0", "impression")])
    _write_logs(settings, D, [("u1", "i0", "impression"), ("u2", "i3", "impression"),
                              ("u3", "i0", "impression"), ("u1", "i0", "click")])  # fmt: skip
    users = catalog.positives_before(settings, D)
    assert users.to_dict() == {"u1": 6, "u2": 1}
    assert catalog.positives_before(settings, d1).empty
    b = catalog.user_buckets(settings, D, ["u1", "u2", "u3", "u1"])
    assert b.to_dict() == {"u1": "5-19", "u2": "1-4", "u3": "0"}
    health = catalog.daily_health(settings, [d1, D]).set_index("date")
    assert list(health.index) == [d1.isoformat(), D.isoformat()]
    day = health.loc[D.isoformat()]
    assert day["impressions"] == 3 and day["distinct_items"] == 2 and day["catalog_items"] == 4
    assert day["coverage"] == pytest.approx(0.5)
    assert day["new_item_share"] == pytest.approx(1 / 3)  # i3 was created on D
    want = catalog.catalog_health(
        _shown(["i0", "i3", "i0"]),
        catalog.read_catalog(settings, D),
        D,
        pd.Series({"i0": 6, "i1": 1}),
    )
    assert day["novelty"] == pytest.approx(want["novelty"]) and day["gini"] == pytest.approx(
        want["gini"]
    )
    # d1 has no catalog item newer than 7 days and no positives before it
    assert health.loc[d1.isoformat(), "new_item_share"] == 0.0


def test_report_has_the_catalog_section(settings):
    _items_table(settings, 4)
    _write_logs(settings, D, [("u1", "i0", "impression"), ("u2", "i3", "impression")])
    page = write_report(settings).read_text()
    part = page.split('id="catalog"')[1]
    assert part.count("<img ") == 1 and "no data" not in part
    assert "2 of 4" in part and "0.500" in part  # distinct items of the catalog, coverage
