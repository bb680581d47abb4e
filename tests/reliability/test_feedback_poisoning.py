"""Issue 17, case 1: ``/feedback`` cannot poison tomorrow's data.

One served request is planted in the service's memory (what ``/recommend`` remembers), then an
attacker repeats clicks, sends huge values and out-of-range ratings. What the daily pipeline would
ingest (the impression log, flushed at shutdown) must hold one row per (request, item, event) —
the first — with a click's value 1, a purchase's value within ``max_purchase_value`` and a rating
in 1..5; the rows pass the validation gate. With two worker processes the first-only rule holds
across workers (counted in Redis).
"""

from __future__ import annotations

import asyncio
import shutil

import pandas as pd

from pipelines.core import schema
from pipelines.core.settings import Settings
from serving import shared
from serving.config import ServingConfig
from serving.logging import impressions_dir
from tests.helpers import Service

ITEMS = ("i0", "i1", "i2", "i3")


def planted(request_id: str = "req-1") -> dict:
    """What ``/recommend`` remembers of a served request (4 items)."""
    return {
        "request_id": request_id, "user_id": "u1", "items": ITEMS,
        "propensities": (0.9, 0.9, 0.5, 0.9), "arm": "champion",
        "model_version": "bundle-1", "feedback": {},
    }  # fmt: skip


def logged(settings: Settings) -> pd.DataFrame:
    root = impressions_dir(settings.home)
    return pd.concat([schema.read_partition(root, d) for d in schema.partition_dates(root)])


ATTACK = [  # (body, expected status)
    ({"item_id": "i1"}, 200),  # the first click counts
    ({"item_id": "i1"}, 200),  # repeats are answered...
    ({"item_id": "i1", "event": "click", "value": 1.0}, 200),  # ...but not logged again
    ({"item_id": "i2", "event": "click", "value": 1e6}, 422),  # a click is worth 1
    ({"item_id": "i2", "event": "click", "value": 0}, 422),
    ({"item_id": "i1", "event": "purchase", "value": 1e6}, 422),  # over max_purchase_value
    ({"item_id": "i1", "event": "purchase", "value": -1}, 422),
    ({"item_id": "i1", "event": "purchase", "value": 2}, 200),
    ({"item_id": "i1", "event": "purchase", "value": 5}, 200),  # a repeat: not logged
    ({"item_id": "i3", "event": "rating", "value": 7}, 422),  # ratings are 1..5
    ({"item_id": "i3", "event": "rating", "value": 0.5}, 422),
    ({"item_id": "i3", "event": "rating", "value": 4}, 200),
    ({"item_id": "i3", "event": "rating", "value": 1}, 200),  # a repeat: the first stays
    ({"item_id": "i0", "event": "view", "value": 1}, 422),  # unknown event
]


def test_repeats_and_huge_values_do_not_reach_the_log(settings: Settings, tmp_path):
    from pipelines.data.validate import validate_partition

    async def go():
        async with Service(settings, ServingConfig(reload_interval_s=0), load=False) as s:
            s.engine.remember("req-1", planted())
            out = []
            for body, _ in ATTACK:
                r = await s.client.post("/feedback", json={"request_id": "req-1", **body})
                out.append(r)
            metrics = (await s.client.get("/metrics")).text
            return out, metrics

    shutil.rmtree(impressions_dir(settings.home), ignore_errors=True)
    answers, metrics = asyncio.run(go())  # the lifespan's exit flushes the log
    for (body, want), r in zip(ATTACK, answers, strict=True):
        assert r.status_code == want, (body, r.status_code, r.text)
    first, again = answers[0].json(), answers[1].json()
    assert first["duplicate"] is False and again["duplicate"] is True
    assert again["logged"] == first["logged"] == "req-1-1c"  # the first click's event id
    assert "recloop_feedback_duplicates_total 4" in metrics

    rows = logged(settings)
    got = sorted(zip(rows["item_id"], rows["event"], rows["value"], strict=True))
    assert got == [("i1", "click", 1.0), ("i1", "purchase", 2.0), ("i3", "rating", 4.0)]
    assert rows["event_id"].is_unique
    # tomorrow's pipeline takes them: the served partition passes the validation gate
    fresh = Settings.from_env({"RECLOOP_HOME": str(tmp_path / "fresh")})
    fresh.ensure_dirs()
    day = schema.partition_dates(impressions_dir(settings.home))[0]
    shutil.copytree(
        schema.partition_dir(impressions_dir(settings.home), day),
        schema.partition_dir(fresh.interactions_dir, day),
    )
    result = validate_partition(fresh, day, data_docs=False)
    assert result.rows_quarantined == 0 and result.rows_good == 3


def test_purchase_bound_is_a_setting(settings: Settings):
    cfg = ServingConfig(reload_interval_s=0, max_purchase_value=100.0)

    async def go():
        async with Service(settings, cfg, load=False) as s:
            s.engine.remember("req-1", planted())
            body = {"request_id": "req-1", "item_id": "i2", "event": "purchase"}
            return [
                (await s.client.post("/feedback", json={**body, "value": v})).status_code
                for v in (100.5, 100.0)
            ]

    assert go_run(go()) == [422, 200]


def go_run(coro):
    return asyncio.run(coro)


def test_first_click_only_across_two_workers(redis_settings: Settings):
    """Two worker processes (``processes=2``): the repeat reaches the other worker, which
    answers it as a duplicate from the Redis counter and logs nothing."""
    cfg = ServingConfig(reload_interval_s=0, processes=2)

    async def go():
        a, b = Service(redis_settings, cfg, load=False), Service(redis_settings, cfg, load=False)
        async with a, b:
            rec = planted("req-2")
            a.engine.remember("req-2", rec)
            assert shared.publish(redis_settings, rec, 60)  # what the serving worker shares
            body = {"request_id": "req-2", "item_id": "i2"}
            r1 = await a.client.post("/feedback", json=body)
            r2 = await b.client.post("/feedback", json=body)
            r3 = await b.client.post("/feedback", json=body)
            return r1, r2, r3

    shutil.rmtree(impressions_dir(redis_settings.home), ignore_errors=True)
    r1, r2, r3 = asyncio.run(go())
    assert [r.status_code for r in (r1, r2, r3)] == [200, 200, 200]
    assert [r.json()["duplicate"] for r in (r1, r2, r3)] == [False, True, True]
    rows = logged(redis_settings)
    assert list(rows["event_id"]) == ["req-2-2c"]
