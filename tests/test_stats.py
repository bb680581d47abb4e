"""Daily statistics over validated partitions: counts, CTR by position, new users and items."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipelines.core import schema
from pipelines.data.stats import daily_stats, format_stats


def _day(settings, date, rows):
    df = pd.DataFrame(
        rows, columns=["event_id", "user_id", "item_id", "event", "request_id", "position"]
    )
    df["ts"] = pd.Timestamp(date, tz="UTC") + pd.Timedelta(hours=1)
    df["value"] = 1.0
    schema.write_partition_atomic(schema.conform(df), settings.validated_dir, date)


def test_counts_ctr_by_position_and_new_ids(settings):
    _day(
        settings,
        "2026-01-01",
        [("e1", "u1", "a", "impression", "r1", 0), ("e2", "u1", "a", "click", "r1", 0)],
    )
    _day(
        settings,
        "2026-01-02",
        [
            ("e3", "u1", "a", "impression", "r2", 0),
            ("e4", "u1", "b", "impression", "r2", 1),
            ("e5", "u2", "a", "impression", "r3", 0),
            ("e6", "u2", "c", "impression", "r3", 1),
            ("e7", "u2", "a", "click", "r3", 0),
            ("e8", "u1", "a", "click", "r9", 0),  # a click from another request labels nothing here
        ],
    )
    out = daily_stats(settings, "2026-01-02")
    assert out["events"] == {"click": 2, "impression": 4}
    assert (out["users"], out["new_users"], out["items"], out["new_items"]) == (2, 1, 3, 2)
    assert out["ctr"] == pytest.approx(0.5)
    assert [(p["position"], p["impressions"], p["clicks"]) for p in out["ctr_by_position"]] == [
        (0, 2, 1),
        (1, 2, 0),
    ]
    saved = json.loads((settings.reports_dir / "stats" / "date=2026-01-02.json").read_text())
    assert saved == out
    assert "1 new" in format_stats(out)
    # the first day has nothing before it: everything is new
    first = daily_stats(settings, "2026-01-01")
    assert (first["new_users"], first["new_items"]) == (1, 1)


def test_missing_validated_day_is_a_clear_error(settings):
    with pytest.raises(FileNotFoundError, match="no validated partition for 2026-03-01"):
        daily_stats(settings, "2026-03-01")
