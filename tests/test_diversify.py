"""Calibrated and MMR re-ranking, the re-ranker setting, and the beyond-accuracy metrics."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pipelines.core import beyond_accuracy as ba
from pipelines.loop import stages
from pipelines.report.catalog import catalog_health
from serving import diversify, pipeline, rerank
from serving.config import ServingConfig

# 20 candidates: the 10 best are all of category "a", then b, c, d in turn
SCORES = np.linspace(0.20, 0.01, 20)
CATS = np.array(["a"] * 10 + ["b", "c", "d"] * 3 + ["b"])
TARGET = {"a": 0.4, "b": 0.2, "c": 0.2, "d": 0.2}
LABELS = np.array(["a", "b", "c", "d"])


def _kl(rows: np.ndarray, target: dict[str, float]) -> float:
    q = ba.category_distribution(CATS[rows], LABELS)
    return ba.calibration_kl(np.array([target[g] for g in LABELS]), q)


def test_calibrated_list_is_closer_to_the_target_than_the_capped_list():
    capped = rerank.exploit_list(SCORES, CATS, k=10, cap=3)
    fan = {"a": 0.7, "b": 0.1, "c": 0.1, "d": 0.1}  # a user of "a": the cap holds it to 3
    calibrated = diversify.calibrated_list(SCORES, CATS, 10, fan, lam=0.5)
    assert _kl(calibrated, fan) == pytest.approx(0.0) and _kl(capped, fan) > 0.3
    assert calibrated[CATS[calibrated] == "a"].tolist() == list(range(7))  # the best seven
    # the target's 40 % of "a": the cap is close (3), the calibrated list exact once lam is high
    calibrated = diversify.calibrated_list(SCORES, CATS, 10, TARGET, lam=0.95)
    assert len(set(calibrated.tolist())) == 10
    assert _kl(calibrated, TARGET) < _kl(capped, TARGET)
    assert calibrated[CATS[calibrated] == "a"].tolist() == [0, 1, 2, 3]
    again = diversify.calibrated_list(SCORES, CATS, 10, TARGET, lam=0.95)
    assert again.tolist() == calibrated.tolist()  # deterministic


def test_calibrated_lambda_zero_is_the_score_order_and_respects_allowed():
    rng = np.random.default_rng(3)
    scores = rng.random(30)
    cats = rng.choice(["a", "b", "c"], 30)
    out = diversify.calibrated_list(scores, cats, 8, {"b": 1.0}, lam=0.0)
    assert out.dtype == np.int64 and out.tolist() == np.argsort(-scores)[:8].tolist()
    allowed = np.ones(30, bool)
    allowed[np.argsort(-scores)[:3]] = False
    out = diversify.calibrated_list(scores, cats, 8, {"b": 1.0}, lam=0.0, allowed=allowed)
    assert out.tolist() == np.argsort(-scores)[3:11].tolist()
    only_b = diversify.calibrated_list(scores, cats, 5, {"b": 1.0}, lam=1.0)
    assert (cats[only_b] == "b").all()  # lam 1: the proportions alone, best scores within
    assert len(diversify.calibrated_list(scores, cats, 8, TARGET, 0.5, allowed=~allowed)) == 3


def test_mmr_lambda_one_is_the_score_order_and_lower_lambda_raises_ild():
    order = np.argsort(-SCORES)[:10]
    for vectors in (None, np.eye(4)[np.searchsorted(LABELS, CATS)]):
        assert diversify.mmr_list(SCORES, CATS, 10, 1.0, vectors=vectors).tolist() == order.tolist()
    codes = np.searchsorted(LABELS, CATS)
    ild = {
        lam: ba.intra_list_diversity(diversify.mmr_list(SCORES, CATS, 10, lam)[None], codes)
        for lam in (1.0, 0.7, 0.3)
    }
    assert ild[1.0] == 0.0 and ild[1.0] < ild[0.7] <= ild[0.3]
    assert diversify.mmr_list(SCORES, CATS, 4, 0.3).tolist() == [0, 10, 11, 12]


def test_online_target_uses_the_users_top_category_share():
    scores = np.array([0.4, 0.3, 0.2, 0.1])
    cats = np.array(["a", "b", "c", "b"])
    cand = diversify.online_target(scores, cats, None, None)
    assert cand == pytest.approx({"a": 0.4, "b": 0.4, "c": 0.2})
    user = {"user_top_category": "c", "user_top_category_share": 0.6}
    assert diversify.online_target(scores, cats, None, user) == pytest.approx(
        {"c": 0.6, "a": 0.2, "b": 0.2}
    )
    unknown = {"user_top_category": "unknown", "user_top_category_share": 0.0}
    assert diversify.online_target(scores, cats, None, unknown) == pytest.approx(cand)


def test_metrics_against_hand_computed_values():
    cats = np.array(["a", "a", "b", "c"])
    recs = np.array([[0, 1, 2], [3, -1, -1]])
    assert ba.intra_list_diversity(recs, categories=cats) == pytest.approx(2 / 3)
    vec = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert ba.intra_list_diversity([[0, 1, 2]], vectors=vec) == pytest.approx(2 / 3)
    assert ba.intra_list_diversity([[0, 3]], vectors=vec) == pytest.approx(1 - np.sqrt(0.5))
    p, q = np.array([0.5, 0.5]), np.array([1.0, 0.0])
    expected = 0.5 * np.log(0.5 / 0.995) + 0.5 * np.log(0.5 / 0.005)
    assert ba.calibration_kl(p, q) == pytest.approx(expected) == pytest.approx(1.958517, abs=1e-6)
    assert ba.calibration_kl(p, p) == pytest.approx(0.0)
    labels = np.array(["a", "b", "c"])
    dist = np.array([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])  # row 1: list [3] = "c", KL 0
    assert ba.mean_calibration_kl(recs, cats, dist, labels) == pytest.approx(
        ba.calibration_kl([0.5, 0.5, 0.0], [2 / 3, 1 / 3, 0.0]) / 2
    )
    assert ba.coverage([[0, 1], [1, -1]], 4) == 0.5
    counts = np.array([3.0, 1.0, 0.0, 0.0])  # shares (c + 1) / 8: 1/2, 1/4 → 1 and 2 bits
    assert ba.novelty([[0, 1], [1, -1]], counts) == pytest.approx(5 / 3)
    health = catalog_health(
        pd.DataFrame({"item_id": ["i0", "i1", "i1"]}),
        pd.DataFrame({"item_id": ["i0", "i1", "i2", "i3"], "created_date": [None] * 4}),
        "2026-01-02",
        pd.Series({"i0": 3.0, "i1": 1.0}),
    )
    assert health["novelty"] == pytest.approx(5 / 3) and health["coverage"] == 0.5
    hist = {"u1": {"a": 3.0, "b": 1.0}}
    out = ba.user_distributions(hist, ["u1", "u2"], labels, np.array([0.2, 0.3, 0.5]))
    assert out.tolist() == [[0.75, 0.25, 0.0], [0.2, 0.3, 0.5]]


def test_stages_category_figures_of_served_slates():
    context = {
        "items": pd.Index(["i0", "i1", "i2", "i3"]),
        "category": np.array(["a", "a", "b", "c"]),
        "labels": np.array(["a", "b", "c"]),
        "user_dist": {"u1": np.array([0.5, 0.5, 0.0]), "u2": np.array([0.0, 0.0, 1.0])},
    }
    responses = [
        {"user_id": "u1", "items": [{"item_id": i, "position": n} for n, i in
                                    enumerate(["i2", "i0", "i1"])]},
        {"user_id": "u2", "items": [{"item_id": "i3", "position": 0},
                                    {"item_id": "new", "position": 1}]},
    ]  # fmt: skip
    out = stages.category_figures(responses, context)
    assert out["ild"] == pytest.approx(2 / 3)
    assert out["calibration_kl"] == pytest.approx(
        ba.calibration_kl([0.5, 0.5, 0.0], [2 / 3, 1 / 3, 0.0]) / 2
    )
    assert stages.category_figures(responses, None) == {"ild": None, "calibration_kl": None}


def test_reranker_setting_from_env():
    assert ServingConfig.from_env({}).reranker == "cap"
    cfg = ServingConfig.from_env(
        {"RECLOOP_SERVE_RERANKER": "calibrated", "RECLOOP_SERVE_RERANK_LAMBDA": "0.3"}
    )
    assert cfg.reranker == "calibrated" and cfg.rerank_lambda == 0.3
    with pytest.raises(ValueError, match="reranker"):
        ServingConfig.from_env({"RECLOOP_SERVE_RERANKER": "shuffle"})
    with pytest.raises(ValueError, match="rerank_lambda"):
        ServingConfig.from_env({"RECLOOP_SERVE_RERANK_LAMBDA": "1.5"})
    assert ServingConfig.from_env({}).category_cap == 0  # no cap
    assert ServingConfig.from_env({"RECLOOP_SERVE_CATEGORY_CAP": "10"}).category_cap == 10
    with pytest.raises(ValueError, match="category_cap"):
        ServingConfig.from_env({"RECLOOP_SERVE_CATEGORY_CAP": "-1"})
    assert ServingConfig.from_env({"RECLOOP_SERVE_CATEGORY_CAP": "0"}).category_cap == 0


def _slate(cfg: ServingConfig, user: dict | None = None) -> rerank.Slate:
    """``pipeline._rerank`` of one request over the module's candidates (catalog last)."""
    n = len(SCORES)
    table = SimpleNamespace(clicks=np.arange(n) % 3.0, impressions=np.full(n, 40.0))
    engine = SimpleNamespace(config=cfg, rng=np.random.default_rng(7), rng_lock=threading.Lock())
    ranked = pipeline._Ranked(
        [f"i{r}" for r in range(n)], SCORES, np.arange(n), CATS, np.full(n, 30),
        ["mf"] * (n - 2) + ["catalog"] * 2, True,
    )  # fmt: skip
    req = pipeline.Request("u1", 10, categories=("b",))
    return pipeline._rerank(engine, req, SimpleNamespace(item_table=table), ranked, user)


def test_cap_keeps_todays_slate_and_calibrated_changes_only_the_exploit_list():
    cfg = ServingConfig(explore_rate=0.4, seed=7, category_cap=3)
    # today's code: exploit_list with the catalog rows disallowed and "b" uncapped, then explore
    allowed = np.arange(20) < 18
    exploit = rerank.exploit_list(SCORES, CATS, 10, 3, allowed, frozenset({"b"}))
    pool = np.argsort(-SCORES, kind="stable")
    pool = pool[~np.isin(pool, exploit)][: cfg.explore_pool]
    clicks = pool % 3.0
    today = rerank.explore(
        exploit, SCORES[exploit], pool, 1 + clicks, 19 + 40 - clicks, 10, 0.4,
        np.random.default_rng(7), cfg.explore_grid, cfg.explore_uniform,
    )  # fmt: skip
    for got in (_slate(cfg), _slate(cfg.with_(reranker="cap", rerank_lambda=0.9))):
        assert got.rows.tolist() == today.rows.tolist()
        assert got.exploit.tolist() == exploit.tolist()
        assert np.array_equal(got.propensity, today.propensity)
    user = {"user_top_category": "c", "user_top_category_share": 0.5}
    cal = _slate(cfg.with_(reranker="calibrated", rerank_lambda=0.95), user)
    target = diversify.online_target(SCORES, CATS, allowed, user)
    assert target["c"] == 0.5 and _kl(cal.exploit, target) < _kl(exploit, target)
    assert (CATS[cal.exploit] == "c").sum() == 3 > (CATS[exploit] == "c").sum()
    assert not np.isin(cal.exploit, [18, 19]).any()
    assert cal.exploit.tolist() != exploit.tolist() and len(cal.exploit) == 10
    mmr = _slate(cfg.with_(reranker="mmr", rerank_lambda=0.5))
    assert len(set(CATS[mmr.exploit[:4]])) == 4
