"""The ranker stage on tiny simulated days: training from the logs with point-in-time features,
forward evaluation, and scoring pairs from the online features in a real Redis."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.core.settings import Settings
from pipelines.data import simulate
from pipelines.data.validate import validate_partition
from pipelines.features.store import apply_repo, materialize_date
from pipelines.features.tables import compute_features
from pipelines.ranking import data, evaluate, predict
from pipelines.ranking import train as ranking
from pipelines.retrieval import train

pytestmark = pytest.mark.integration
DAYS = ["2026-01-01", "2026-01-02"]


@pytest.fixture()
def world(redis_settings):
    s = redis_settings
    simulate.simulate(s, len(DAYS), "tiny", 11)
    for d in DAYS:
        validate_partition(s, d)
        compute_features(s, d)
    apply_repo(s)
    materialize_date(s, DAYS[-1])
    train.train(s, "two_tower", DAYS[0])
    return s


def test_train_evaluate_and_predict_from_redis(world, tmp_path):
    summary = ranking.train_for_date(world, DAYS[0], epochs=2)
    assert summary["positives"] > 0 and summary["rows"] > summary["positives"]
    assert summary["negative_mix"] == {}  # impressions: no sampled negatives by default
    assert summary["rows"] == len(
        data.labelled_impressions(world, *[pd.Timestamp(DAYS[0]).date()] * 2)
    )
    ranker = predict.load_ranker(world, "ranker", DAYS[0])
    assert ranker.config()["feature_service"] == data.SERVICE

    out = evaluate.evaluate_forward(world, DAYS[1])
    metrics = out["metrics"]
    assert set(metrics) == {"ranker", "ranker_lr", "retrieval_only"}
    assert 0.0 <= metrics["ranker"]["auc"] <= 1.0 and np.isfinite(metrics["ranker"]["logloss"])
    assert "spearman_truth" in metrics["ranker"]  # simulated data: compared with the truth
    assert (world.reports_dir / "ranker" / f"date={DAYS[1]}.json").exists()

    logs = data.labelled_impressions(
        world, pd.Timestamp(DAYS[1]).date(), pd.Timestamp(DAYS[1]).date()
    )
    pairs = logs[["user_id", "item_id"]].head(20).copy()
    pairs.loc[len(pairs)] = ["nobody", pairs["item_id"].iloc[0]]
    scored = predict.predict_pairs(world, pairs)
    assert len(scored) == len(pairs) and scored["score"].between(0, 1).all()
    assert scored["user_missing"].iloc[-1] and not scored["user_missing"].iloc[0]
    # same features read through Feast's own path give the same scores
    slow = predict.predict_pairs(world, pairs, fast=False)
    np.testing.assert_allclose(slow["score"], scored["score"], rtol=1e-5)

    # RECLOOP_RANKER_IPS reaches the daily training (off by default)
    assert summary["ips"] is False
    ips_settings = Settings.from_env({**world.as_env(), "RECLOOP_RANKER_IPS": "1"})
    assert ips_settings.ranker_ips and ips_settings.as_env()["RECLOOP_RANKER_IPS"] == "1"
    assert ranking.train_for_date(ips_settings, DAYS[0], epochs=1)["ips"] is True


def test_no_ranker_yet_is_reported_not_an_error(world):
    out = evaluate.evaluate_forward(world, DAYS[0])
    assert "nothing to evaluate" in out["note"]
    with pytest.raises(FileNotFoundError, match="no trained 'ranker'"):
        predict.load_ranker(world)
