"""Issue 17, case 1 (the feature SQL): a forged feedback ``value`` does not poison the features.

One impression and one click with ``value: 1e6`` (or a purchase of 1e6) used to make that item
top every popularity count of the next day. The feature SQL counts a click as 1 and clips a
purchase's value to ``settings.max_purchase_value``: the poisoned item's counts and CTR are what
one honest click or a bounded purchase gives, and the global CTR prior is not skewed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pandas as pd
import pytest

from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.features.tables import compute_features, read_table

D = dt.date(2025, 5, 10)


def write_day(settings: Settings, forged: float) -> None:
    ts = pd.Timestamp(D, tz="UTC") + pd.Timedelta(hours=8)
    rows = []
    for k in range(20):  # honest traffic: item "pop" clicked 5 times in 20 impressions
        rows.append(("impression", "pop", 1.0, k))
        if k % 4 == 0:
            rows.append(("click", "pop", 1.0, k))
    rows += [("impression", "evil", 1.0, 99), ("click", "evil", forged, 99),
             ("purchase", "evil", forged, 99)]  # fmt: skip
    frame = pd.DataFrame(rows, columns=["event", "item_id", "value", "k"])
    frame["event_id"] = [f"e{i}" for i in range(len(frame))]
    frame["ts"] = ts
    frame["user_id"] = [f"u{k}" for k in frame["k"]]
    table = schema.conform(frame.drop(columns="k"))
    schema.write_partition_atomic(table, settings.validated_dir, D)


def items(settings: Settings) -> dict[str, dict]:
    compute_features(settings, D)
    return {r["item_id"]: r for r in read_table(settings, "item", D).to_pylist()}


def test_forged_click_and_purchase_values_are_clipped(settings: Settings) -> None:
    cap = 10.0
    s = dataclasses.replace(settings, max_purchase_value=cap)
    write_day(s, forged=1e6)
    got = items(s)
    evil, pop = got["evil"], got["pop"]
    assert evil["item_clicks_1d"] == 1  # one click counts one
    assert evil["item_purchases_1d"] == cap  # bounded by the setting
    assert pop["item_clicks_1d"] > evil["item_clicks_1d"]  # the honest item still leads
    assert evil["item_trending"] <= 1 + cap + 1
    # the global CTR (the smoothing prior) is (5 + 1) / 21, not skewed by 1e6
    assert 0.0 < evil["item_ctr_28d"] < 0.5

    write_day(s, forged=1.0)  # an honest day with the same rows gives the same clicks
    assert items(s)["evil"]["item_clicks_1d"] == 1


def test_setting_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("RECLOOP_HOME", str(tmp_path))
    monkeypatch.setenv("RECLOOP_MAX_PURCHASE_VALUE", "3.5")
    s = Settings.from_env()
    assert s.max_purchase_value == 3.5
    assert s.as_env()["RECLOOP_MAX_PURCHASE_VALUE"] == "3.5"
