"""Ranker training data: labels from logs, sampled negatives, IPS weights, evaluation metrics."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from pipelines.ranking.data import LABEL_COLUMNS, ips_weights, label_impressions, sample_negatives
from pipelines.ranking.evaluate import (
    calibration_table,
    evaluate_ranker,
    expected_calibration_error,
    mean_ndcg_at_k,
)
from pipelines.ranking.train import fit_dlrm, fit_logistic_regression


def _log(rows: list[tuple]) -> pd.DataFrame:
    """(event_id, request_id, user, item, event, position, propensity) → an INTERACTIONS frame."""
    frame = pd.DataFrame(
        rows,
        columns=["event_id", "request_id", "user_id", "item_id", "event", "position", "propensity"],
    )
    frame["ts"] = pd.Timestamp("2026-01-02", tz="UTC") + pd.to_timedelta(
        np.arange(len(frame)), unit="s"
    )
    frame["value"] = 1.0
    frame["arm"] = "logging_policy"
    frame["model_version"] = "sim-v0"
    return frame


def test_labels_come_from_clicks_of_the_same_request() -> None:
    events = _log(
        [
            ("r1-0i", "r1", "u1", "i1", "impression", 0, 0.5),
            ("r1-1i", "r1", "u1", "i2", "impression", 1, 0.4),
            ("r1-2i", "r1", "u1", "i3", "impression", 2, 0.3),
            ("r1-1c", "r1", "u1", "i2", "click", 1, 0.4),  # clicked impression → 1
            ("r2-0i", "r2", "u1", "i1", "impression", 0, 0.6),
            ("r2-9c", "r2", "u1", "i3", "click", 9, 0.1),  # click on i3 in r2: r1's i3 stays 0
            ("r3-0i", "r3", "u2", "i4", "impression", 0, 0.7),
            ("r4-0c", "r4", "u1", "i1", "click", 0, 0.2),  # another request: labels no r1/r2 row
            ("r3-0p", "r3", "u2", "i4", "purchase", 0, 0.7),  # a purchase is not a click
            ("x-0i", None, "u3", "i5", "impression", 0, 0.5),  # no request: dropped
        ]
    )
    out = label_impressions(events)
    assert list(out.columns) == list(LABEL_COLUMNS)
    got = dict(zip(out["event_id"], out["label"], strict=True))
    assert got == {"r1-0i": 0, "r1-1i": 1, "r1-2i": 0, "r2-0i": 0, "r3-0i": 0}
    assert not out["sampled"].any() and (out["negative_source"] == "logged").all()
    assert (out["event_timestamp"] == out["ts"]).all()
    assert out.loc[out["event_id"] == "r1-1i", "propensity"].item() == 0.4
    assert label_impressions(events, positive_events=("click", "purchase"))["label"].sum() == 2


def _labelled(n_users: int = 200, per_user: int = 20, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for j in range(per_user):
            rows.append((f"e{u}-{j}", f"r{u}-{j // 10}", f"u{u}", f"i{rng.integers(100)}", j % 10))
    frame = pd.DataFrame(rows, columns=["event_id", "request_id", "user_id", "item_id", "position"])
    frame = frame.drop_duplicates(["request_id", "item_id"]).reset_index(drop=True)
    frame["label"] = (rng.random(len(frame)) < 0.2).astype(np.int8)
    frame["propensity"] = 0.1
    frame["ts"] = pd.Timestamp("2026-01-02", tz="UTC")
    frame["event_timestamp"] = frame["ts"]
    return frame


def test_negative_mix_proportions_and_hard_negatives_exclude_engaged_items() -> None:
    labelled = _labelled()
    n_pos = int(labelled["label"].sum())
    engaged = labelled[labelled["label"] == 1].groupby("user_id")["item_id"].agg(set).to_dict()
    # each user's hard candidates: its engaged items first, then others
    hard = {
        u: sorted(engaged.get(u, set())) + [f"i{j}" for j in range(100, 105)]
        for u in labelled["user_id"].unique()
    }
    pool = np.array([f"i{j}" for j in range(110)], dtype=object)
    out = sample_negatives(
        labelled, pool, item_popularity=np.arange(110) + 1.0, hard_candidates=hard,
        mix={"uniform": 0.5, "popularity": 0.2, "hard": 0.3}, ratio=2.0, seed=1,
    )  # fmt: skip
    sampled = out[out["sampled"]]
    assert len(out) == len(labelled) + len(sampled)
    assert len(sampled) == 2 * n_pos
    counts = sampled["negative_source"].value_counts()
    assert counts["hard"] == round(0.3 * 2 * n_pos)
    assert counts["popularity"] == round(0.2 * 2 * n_pos)
    assert counts["uniform"] == 2 * n_pos - counts["hard"] - counts["popularity"]
    assert (sampled["label"] == 0).all() and sampled["propensity"].isna().all()
    pairs = set(zip(sampled["user_id"], sampled["item_id"], strict=True))
    for u, items in engaged.items():
        assert not any((u, i) in pairs for i in items)  # no source returns an engaged item
    hard_rows = sampled[sampled["negative_source"] == "hard"]
    assert hard_rows["item_id"].isin([f"i{j}" for j in range(100, 105)]).all()
    # sampled rows copy their anchor positive's request and time (same point-in-time features)
    anchors = labelled[labelled["label"] == 1]
    assert set(sampled["request_id"]) <= set(anchors["request_id"])
    # popularity^0.75 favours the popular end of the pool
    pop_items = sampled.loc[sampled["negative_source"] == "popularity", "item_id"]
    assert pop_items.str[1:].astype(int).mean() > 60
    # deterministic under the seed
    again = sample_negatives(
        labelled, pool, item_popularity=np.arange(110) + 1.0, hard_candidates=hard,
        mix={"uniform": 0.5, "popularity": 0.2, "hard": 0.3}, ratio=2.0, seed=1,
    )  # fmt: skip
    pd.testing.assert_frame_equal(out, again)


def test_without_hard_candidates_the_hard_share_is_uniform(caplog) -> None:
    labelled = _labelled(n_users=50)
    pool = np.array([f"i{j}" for j in range(100)], dtype=object)
    with caplog.at_level(logging.INFO, logger="pipelines.ranking.data"):
        out = sample_negatives(labelled, pool, seed=0)  # default mix 70 % uniform + 30 % hard
    sampled = out[out["sampled"]]
    assert len(sampled) == labelled["label"].sum()
    assert set(sampled["negative_source"]) == {"uniform"}
    assert "no hard candidates" in caplog.text
    with pytest.raises(ValueError, match="unknown negative sources"):
        sample_negatives(labelled, pool, mix={"random": 1.0})


def test_ips_weights_clip_and_self_normalize() -> None:
    p = pd.Series([0.5, 0.01, 0.001, None, 0.25])
    w = ips_weights(p, clip=50.0)
    raw = np.array([2.0, 50.0, 50.0, 4.0])  # 1/p capped at 50
    np.testing.assert_allclose(w[[0, 1, 2, 4]], raw / raw.mean())
    assert w[[0, 1, 2, 4]].mean() == pytest.approx(1.0)
    assert w[3] == 1.0  # no propensity (a sampled negative): weight 1
    assert w[1] == w[2]  # both clipped
    np.testing.assert_allclose(ips_weights(p, clip=50.0, self_normalize=False)[[0, 1, 2, 4]], raw)
    with pytest.raises(ValueError, match="row 1"):
        ips_weights([0.5, 0.0])
    with pytest.raises(ValueError, match="row 0"):
        ips_weights([1.5])


def test_ndcg_per_request_by_hand() -> None:
    # r1: positive at rank 2 of 3 → 1/log2(3); r2: positive first → 1; r3: no positive, skipped
    req = ["r1", "r1", "r1", "r2", "r2", "r3"]
    labels = [0, 1, 0, 1, 0, 0]
    scores = [0.9, 0.5, 0.1, 0.7, 0.2, 0.3]
    assert mean_ndcg_at_k(req, labels, scores, k=10) == pytest.approx((1 / np.log2(3) + 1) / 2)
    assert mean_ndcg_at_k(req, labels, scores, k=1) == pytest.approx(0.5)
    assert mean_ndcg_at_k(req, labels, [0, 1, 0, 1, 0, 0], k=10) == pytest.approx(1.0)


def test_calibration_table_and_ece() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.01, 0.5, 100_000)
    y = (rng.random(len(p)) < p).astype(float)
    table = calibration_table(y, p)
    assert len(table) == 10 and table["n"].sum() == len(p)
    assert table["mean_pred"].is_monotonic_increasing
    assert expected_calibration_error(table) < 0.01  # calibrated
    off = calibration_table(y, np.full(len(p), 0.5))
    assert expected_calibration_error(off) == pytest.approx(abs(0.5 - y.mean()))


def _features(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    cat = rng.choice(["a", "b", "c"], n)
    truth = 1 / (1 + np.exp(-(-1.5 + 1.2 * x + np.where(cat == "a", 1.0, 0.0))))
    return pd.DataFrame(
        {
            "request_id": [f"r{j // 10}" for j in range(n)],
            "position": np.arange(n) % 10,
            "x": x,
            "cat": cat,
            "propensity": rng.uniform(0.05, 1.0, n),
            "retrieval": rng.normal(size=n),
            "truth": truth,
            "label": (rng.random(n) < truth).astype(np.int8),
        }
    )


def test_train_and_evaluate_with_ips_and_the_logistic_baseline() -> None:
    train, test = _features(3000, 0), _features(1000, 1)
    params = dict(dim=4, epochs=3, batch_size=256, feature_service="ranker_v1")
    model = fit_dlrm(train, ["x"], ["cat"], ips=True, **params)
    assert model.feature_service == "ranker_v1" and model.fit_report["rows"] == 3000
    res = evaluate_ranker(model, test, retrieval_score_col="retrieval", true_prob_col="truth")
    for key in (
        "auc",
        "logloss",
        "ece",
        "calibration",
        "ndcg@10",
        "ndcg@10_lift",
        "spearman_truth",
    ):
        assert key in res
    assert res["auc"] > 0.7 and res["spearman_truth"] > 0.8
    assert res["ndcg@10_lift"] > 0  # a random retrieval score is beaten
    assert len(res["calibration"]) == 10
    lr = fit_logistic_regression(train, ["x"], ["cat"], dim=4, epochs=3, batch_size=256)
    assert lr.interaction == "linear"
    assert evaluate_ranker(lr, test)["auc"] > 0.7


def _two_logged_days(settings) -> None:
    """Two validated days of 60 requests x 5 impressions, a click on every 7th impression."""
    from pipelines.core import schema

    for day in ("2026-01-01", "2026-01-02"):
        rows = []
        for r in range(60):
            for j in range(5):
                rows.append((f"{day}-{r}-{j}i", f"{day}-r{r}", f"u{r % 17}", f"i{(r + j) % 23}",
                             "impression", j, 0.2))  # fmt: skip
                if (r * 5 + j) % 7 == 0:
                    rows.append((f"{day}-{r}-{j}c", f"{day}-r{r}", f"u{r % 17}",
                                 f"i{(r + j) % 23}", "click", j, 0.2))  # fmt: skip
        frame = _log(rows)
        frame["ts"] = pd.Timestamp(day, tz="UTC") + pd.to_timedelta(np.arange(len(frame)), "s")
        schema.write_partition_atomic(frame, settings.validated_dir, day)


def test_window_labels_over_max_rows_label_a_sample_of_whole_requests(tmp_path) -> None:
    import datetime as dt

    from pipelines.core.settings import Settings
    from pipelines.ranking.data import window_labels

    settings = Settings(home=tmp_path)
    settings.ensure_dirs()
    _two_logged_days(settings)
    first, last = dt.date(2026, 1, 1), dt.date(2026, 1, 2)
    full, source = window_labels(settings, first, last)
    assert source == "impressions" and len(full) == 600
    assert window_labels(settings, first, last, max_rows=600)[0].equals(full)
    part, source = window_labels(settings, first, last, max_rows=240)
    assert source == "impressions" and 120 <= len(part) <= 360
    # whole requests, labelled as in the full window
    assert (part.groupby("request_id").size() == 5).all()
    want = full.set_index("event_id")["label"]
    assert (part.set_index("event_id")["label"] == want.reindex(part["event_id"])).all()
    assert part["request_id"].str.startswith("2026-01-01").any()
    assert part["request_id"].str.startswith("2026-01-02").any()
    again, _ = window_labels(settings, first, last, max_rows=240)
    assert again.equals(part)  # seeded: a rerun labels the same requests


def test_sample_users_keeps_whole_users() -> None:
    from pipelines.ranking.data import sample_users

    rows = _labelled(n_users=50, per_user=4)
    assert sample_users(rows, 50, seed=0) is rows
    part = sample_users(rows, 10, seed=0)
    assert part["user_id"].nunique() == 10
    assert (
        part.groupby("user_id")
        .size()
        .eq(rows.groupby("user_id").size()[part["user_id"].unique()])
        .all()
    )
    assert part.equals(sample_users(rows, 10, seed=0))
