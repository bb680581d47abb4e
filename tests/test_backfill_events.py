"""A views/carts/purchases log (RetailRocket-style, no impressions, no ratings) end to end:
``recloop ingest table`` with an event mapping → ``backfill`` → a champion → ``recloop
recommend`` covering known and unknown visitors. Integration tier: it uses ``redis_settings``."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.cli import main
from pipelines.core import schema
from pipelines.core.eval_reports import read_eval_report
from pipelines.orchestration.backfill import backfill, format_summary
from pipelines.release import registry
from pipelines.release.gate import read_decision

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04", "2026-01-05"]
VISITORS = 36  # v1..v36 every day; v37, v38 only on the last day (unknown to the models)
ITEMS = 60
GROUPS = 3  # visitor n likes the items i with i % 3 == n % 3


def write_event_log(path: Path) -> Path:
    """A RetailRocket-style CSV (``timestamp,visitorid,event,itemid,transactionid``; ms epochs)
    of :data:`DAYS`: each visitor views 5 items a day of its taste group (lower item ids more
    often: a popularity skew), puts some in the cart and buys some (with a transaction id)."""
    rng = np.random.default_rng(11)
    start_ms = int(dt.datetime.fromisoformat(DAYS[0]).replace(tzinfo=dt.UTC).timestamp()) * 1000
    rows: list[str] = []
    for day in range(len(DAYS)):
        active = range(1, VISITORS + 1 + (2 if day == len(DAYS) - 1 else 0))
        for v in active:
            liked = np.array([i for i in range(1, ITEMS + 1) if i % GROUPS == v % GROUPS])
            weights = 1.0 / np.arange(1, len(liked) + 1)
            for item in rng.choice(liked, size=5, replace=False, p=weights / weights.sum()):
                ts = start_ms + day * 86_400_000 + int(rng.integers(0, 86_000_000))
                rows.append(f"{ts},{v},view,{item},")
                if rng.random() < 0.3:
                    rows.append(f"{ts + 60_000},{v},addtocart,{item},")
                    if rng.random() < 0.5:
                        rows.append(f"{ts + 120_000},{v},transaction,{item},{len(rows)}")
    path.write_text("timestamp,visitorid,event,itemid,transactionid\n" + "\n".join(rows) + "\n")
    return path


def test_event_log_ingest_backfill_recommend_every_visitor(redis_settings, mlflow_settings, capsys):
    s = redis_settings
    src = write_event_log(s.home / "events.csv")
    ingest = ["ingest", "table", str(src), "--ts-unit", "ms"]
    for mapping in ("user_id=visitorid", "item_id=itemid", "ts=timestamp", "event=event"):
        ingest += ["--map", mapping]
    ingest += ["--events", "view=click,addtocart=click,transaction=purchase"]
    assert main(ingest) == 0
    out = capsys.readouterr().out
    n_rows = len(src.read_text().splitlines()) - 1
    assert f"imported {n_rows} events" in out and "dropped" not in out, out
    assert [d.isoformat() for d in schema.partition_dates(s.interactions_dir)] == DAYS
    day0 = schema.read_partition(s.interactions_dir, DAYS[0])
    assert set(day0["event"]) == {"click", "purchase"} and day0["propensity"].isna().all()

    summary = backfill(s, DAYS[0], DAYS[-1], progress=False, test_days=1, refit=False)

    assert [x.day for x in summary.ran("validate")] == DAYS
    assert [x.day for x in summary.ran("features")] == DAYS
    ran = {x.step for x in summary.ran() if x.day == DAYS[-1]}
    for step in ("train_mf", "train_two_tower", "build_index", "train_ranker", "register", "gate"):
        assert step in ran, format_summary(summary)
    # no impressions: the ranker learns from the clicks/purchases and sampled negatives
    (ranker,) = summary.ran("train_ranker")
    assert not ranker.detail.startswith("not trained"), ranker.detail
    decision = read_decision(s, DAYS[-1])
    assert decision["action"] == "champion", decision["reason"]
    assert summary.champion is not None and registry.get_alias(s, "champion") == summary.champion
    assert decision["candidate_version"] == summary.champion

    known = [str(v) for v in range(1, VISITORS + 1)]
    unknown = [str(VISITORS + 1), str(VISITORS + 2), "never-seen"]  # last day only / never
    users = s.home / "users.txt"
    users.write_text("\n".join([*known[:10], *unknown, known[10]]) + "\n")
    recs_csv = s.home / "recs.csv"
    recommend = ["recommend", "--model", "mf", "--k", "5", "--users", str(users)]
    assert main([*recommend, "--out", str(recs_csv)]) == 0
    recs = pd.read_csv(recs_csv, dtype={"user_id": str, "item_id": str})
    assert set(recs["user_id"]) == {*known[:11], *unknown}
    assert (recs.groupby("user_id").size() == 5).all()
    source = recs.groupby("user_id")["source"].agg(set)
    assert all(source[u] == {"model"} for u in known[:11])
    assert all(source[u] == {"cold_start"} for u in unknown)
    # the taste groups are learnable from these events (item-kNN beats the popularity list)
    metrics = read_eval_report(s, DAYS[-1])["metrics"]
    assert metrics["itemknn"]["ndcg@10"] > 2 * metrics["popular"]["ndcg@10"], metrics
