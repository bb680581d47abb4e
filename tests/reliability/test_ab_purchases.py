"""Issue 17, case 1 (A/B side): purchases are counted once per (request, item) in the A/B analysis.

A client that repeats a purchase (or a log that carries the same purchase twice, e.g. from two
sources) must not inflate an arm's purchases and conversion: the analysis counts distinct
purchased ``(request_id, item_id)`` pairs per arm, as it counts distinct clicked slots.
"""

from __future__ import annotations

import pandas as pd

from pipelines.experiments import ab


def rows(purchase_repeats: int) -> pd.DataFrame:
    """Two users per arm, one request of 2 slots each, one click and ``purchase_repeats``
    purchase rows of the same (request, item) per request."""
    out = []
    ts = pd.Timestamp("2026-01-01 12:00", tz="UTC")
    for arm in ab.ARMS:
        for u in range(2):
            req, user = f"{arm}-r{u}", f"{arm}-u{u}"
            for pos, item in enumerate(("i1", "i2")):
                out.append({"ts": ts, "arm": arm, "user_id": user, "request_id": req,
                            "position": pos, "item_id": item, "event": "impression"})  # fmt: skip
            base = {"ts": ts, "arm": arm, "user_id": user, "request_id": req, "position": 0,
                    "item_id": "i1"}  # fmt: skip
            out.append({**base, "event": "click"})
            reps = purchase_repeats if arm == "challenger" else 1
            out += [{**base, "event": "purchase"} for _ in range(reps)]
    return pd.DataFrame(out)


def test_repeated_purchases_count_once() -> None:
    honest = ab.summarize(rows(1))
    repeated = ab.summarize(rows(50))
    assert int(honest.loc["challenger", "purchases"]) == 2
    assert int(repeated.loc["challenger", "purchases"]) == 2  # not 100
    assert repeated.loc["challenger", "conversion"] == honest.loc["challenger", "conversion"]
    assert repeated.loc["challenger", "conversion"] <= 1.0
    assert int(repeated.loc["champion", "purchases"]) == 2


def test_distinct_items_of_one_request_each_count() -> None:
    r = rows(1)
    extra = r[(r["event"] == "purchase") & (r["arm"] == "champion")].copy()
    extra["item_id"], extra["position"] = "i2", 1  # a second item bought from the same slate
    out = ab.summarize(pd.concat([r, extra], ignore_index=True))
    assert int(out.loc["champion", "purchases"]) == 4
