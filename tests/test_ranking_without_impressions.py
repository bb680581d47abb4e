"""The daily loop on logs without impressions (ratings only, as imported histories are): the
ranker trains on ratings >= ``RECLOOP_RATING_POSITIVE`` with sampled negatives, or is left out of
the bundle with the reason; register, the forward evaluation and the gate succeed either way and
say what they could not evaluate (no ranker, no logged propensities)."""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.core import layout
from pipelines.core.settings import Settings
from pipelines.data.ingest import write_daily_partitions
from pipelines.data.validate import validate_partition
from pipelines.features.store import apply_repo
from pipelines.features.tables import compute_features
from pipelines.ranking import data, evaluate
from pipelines.ranking import train as ranking
from pipelines.release import gate, registry
from pipelines.release.bundle_ope import NO_PROPENSITIES, missing_propensities
from pipelines.release.register import register_day
from pipelines.retrieval import train
from pipelines.retrieval.index import build_item_index
from tests.helpers import fresh_mlflow

DAYS = ["2026-02-01", "2026-02-02", "2026-02-03", "2026-02-04", "2026-02-05"]
GOOD = [f"i{j}" for j in range(20)]  # liked by everyone: rated 4-5
BAD = [f"i{j}" for j in range(20, 60)]  # rated 1-2


def ratings_log(
    days: list[str], n_users: int = 40, per_day: int = 4, seed: int = 0
) -> pd.DataFrame:
    """``rating`` events only (no impressions, no requests, no propensities): each user rates
    ``per_day`` items a day, half from :data:`GOOD` (4-5 stars), half from :data:`BAD` (1-2)."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in days:
        start = pd.Timestamp(d, tz="UTC")
        for u in range(n_users):
            for k in range(per_day):
                good = k % 2 == 0
                item = rng.choice(GOOD if good else BAD)
                rows.append({
                    "event_id": f"{d}-u{u}-{k}", "user_id": f"u{u}", "item_id": str(item),
                    "ts": start + pd.Timedelta(minutes=int(rng.integers(1, 1439))),
                    "event": "rating",
                    "value": float(rng.integers(4, 6) if good else rng.integers(1, 3)),
                })  # fmt: skip
    return pd.DataFrame(rows)


# --- unit: labels of a ratings-only log ----------------------------------------------------------


def test_ratings_are_labelled_by_the_threshold_one_row_per_user_item_day():
    events = ratings_log(DAYS[:1], n_users=3)
    events = pd.concat([events, events.iloc[:1].assign(event_id="dup")], ignore_index=True)
    events["ts"] = pd.to_datetime(events["ts"], utc=True)
    rows = data.label_positives(events, rating_positive=4.0)
    assert list(rows.columns) == list(data.LABEL_COLUMNS)
    assert not rows.duplicated(["request_id", "item_id"]).any()  # the repeated rating kept once
    assert set(rows.loc[rows["label"] == 1, "item_id"]) <= set(GOOD)
    assert set(rows.loc[rows["label"] == 0, "item_id"]) <= set(BAD)
    assert rows["propensity"].isna().all() and rows["position"].isna().all()
    assert rows["request_id"].str.endswith("|" + DAYS[0]).all()
    stricter = data.label_positives(events, rating_positive=5.0)
    assert 0 < stricter["label"].sum() < rows["label"].sum()


def test_gate_reports_what_it_could_not_evaluate(settings: Settings):
    candidate = {
        "version": "2", "validation": "passed", "ndcg@10": 0.3, "has_ranker": False,
        "auc": None, "index_recall": 0.97, "ope": {"not_evaluated": NO_PROPENSITIES},
    }  # fmt: skip
    d = gate.decide(settings, DAYS[1], candidate, None)
    by_name = {g.name: g for g in d.gates}
    assert by_name["ranker_auc"].verdict == gate.SKIPPED
    assert by_name["ranker_auc"].note == "not evaluated: no ranker in the bundle"
    assert by_name["snips"].verdict == gate.NOT_EVALUATED
    assert by_name["snips"].note == "not evaluated: no logged propensities"
    assert d.action == "champion"
    assert "no ranker in the bundle" in d.reason and "not evaluated: snips" in d.reason


# --- the loop on a ratings-only workspace --------------------------------------------------------


@pytest.fixture()
def ratings_world(redis_settings: Settings) -> Settings:
    """Five days of ratings-only logs, validated, with features, a two-tower and its index for
    days 3 and 4, and an MLflow registry."""
    s = redis_settings
    fresh_mlflow(s)
    write_daily_partitions(s, ratings_log(DAYS), "ratings.csv")
    for d in DAYS:
        assert validate_partition(s, d).passed, d
        compute_features(s, d)
    apply_repo(s)
    for d in DAYS[2:4]:
        train.train(s, "two_tower", d)
        build_item_index(s, d)
    return s


def test_ratings_only_loop_trains_registers_and_gates(
    ratings_world: Settings, capsys: pytest.CaptureFixture
):
    from serving.bundle import load as load_served
    from serving.bundle import smoke_score

    # this world's users rate liked (4-5) and disliked (1-2) items alike: the ranker is asked to
    # learn "liked" (the default, 0, counts every rating as an engagement)
    s = dataclasses.replace(ratings_world, rating_positive=4.0)
    # day 3: no rating reaches 6 stars, so no positives: no ranker, nothing written
    none = ranking.train_for_date(dataclasses.replace(s, rating_positive=6.0), DAYS[2], epochs=2)
    assert none["trained"] is False and "0 positives" in none["reason"]
    assert not layout.model_dir(s, "ranker", DAYS[2]).exists()
    reg3 = register_day(s, DAYS[2])
    assert reg3["ranker"] is None
    served = load_served(s, reg3["bundle"])  # serves in retrieval order
    assert served.ranker is None
    smoke_score(served)

    out = evaluate.evaluate_forward(s, DAYS[3])  # no ranker through day 3: a note, not an error
    assert "metrics" not in out and "nothing to evaluate" in out["note"]
    assert missing_propensities(s, dt.date.fromisoformat(DAYS[3])).startswith(NO_PROPENSITIES)
    dec = gate.daily_gate(s, DAYS[3])
    gates = {g["name"]: g for g in dec["gates"]}
    assert dec["candidate_version"] == reg3["bundle"] and dec["action"] == "champion", dec
    assert gates["ranker_auc"]["note"] == gate.NO_RANKER
    assert gates["snips"]["verdict"] == "not_evaluated"
    assert gates["snips"]["note"].startswith("not evaluated: no logged propensities")
    assert dec["aliases"]["champion"] == reg3["bundle"]
    assert gate.read_decision(s, DAYS[3])["gates"] == dec["gates"]  # reports/gates/date=D.json
    capsys.readouterr()
    assert main(["gates", "--date", DAYS[3]]) == 0
    text = capsys.readouterr().out
    assert "not evaluated: no ranker in the bundle" in text
    assert "not evaluated: no logged propensities" in text and "decision: champion" in text

    # day 4: ratings >= 4 are positives, sampled negatives complete them
    summary = ranking.train_for_date(s, DAYS[3], epochs=3)
    assert summary["trained"] and summary["label_source"] == data.POSITIVES_SOURCE
    assert summary["rows"] > 2 * summary["positives"] > 0
    meta = registry.artifact_meta(layout.model_dir(s, "ranker", DAYS[3]))
    assert meta["label_source"] == "positives+sampled negatives"
    reg4 = register_day(s, DAYS[3])
    assert reg4["ranker"] is not None
    # no impressions to replay, no simulator truth, and the forward replay of day 5's users has
    # no online features (no Redis here): the stage gate says so and keeps the ranker
    judged = reg4["stage_gate"]
    assert judged["keep_ranker"] is True and judged["decided"] is False, judged
    assert "cannot judge by OPE" in judged["reason"] and "error" not in judged, judged
    assert "40 of 40 replayed answers of full degraded" in judged["reason"], judged

    # day 5 with no rating counted positive: the forward evaluation says so instead of failing
    none = evaluate.evaluate_forward(dataclasses.replace(s, rating_positive=6.0), DAYS[4])
    assert "metrics" not in none and none["note"].startswith("not evaluated: ")
    # day 5: the ranker through day 4 judged on day 5's ratings against sampled negatives
    out = evaluate.evaluate_forward(s, DAYS[4])
    assert out["label_source"] == data.POSITIVES_SOURCE
    assert out["metrics"]["ranker"]["auc"] > 0.7, out["metrics"]["ranker"]
    # (the LR baseline is not asserted: 3 epochs on ~1,500 rows leave it near its random start)
    assert 0.0 <= out["metrics"]["ranker_lr"]["auc"] <= 1.0
    dec = gate.daily_gate(s, DAYS[4])
    gates = {g["name"]: g for g in dec["gates"]}
    assert dec["candidate_version"] == reg4["bundle"]
    assert gates["ranker_auc"]["verdict"] == "pass"
    assert gates["ranker_auc"]["candidate"] == pytest.approx(out["metrics"]["ranker"]["auc"])
    assert gates["snips"]["note"].startswith("not evaluated: no logged propensities")
    assert dec["action"] == "challenger", dec
    assert dec["aliases"] == {"champion": reg3["bundle"], "challenger": reg4["bundle"]}
