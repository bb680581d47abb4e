"""Re-ranking units: category caps, fresh boost, Thompson probabilities, exact propensities."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from serving import rerank


def test_category_cap_and_fill():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    cats = np.array(["a", "a", "a", "b", "a", "c"])
    rows = rerank.exploit_list(scores, cats, k=4, cap=2)
    assert rows.tolist() == [0, 1, 3, 5]  # third "a" skipped for "b" and "c"
    short = rerank.exploit_list(scores, cats, k=6, cap=2)
    assert short.tolist() == [0, 1, 3, 5, 2, 4]  # too few otherwise: capped items fill in order
    steered = rerank.exploit_list(scores, cats, k=4, cap=1, uncapped=frozenset({"a"}))
    assert steered.tolist() == [0, 1, 2, 3]
    allowed = np.array([False, True, True, True, True, True])
    assert 0 not in rerank.exploit_list(scores, cats, k=3, cap=5, allowed=allowed)
    assert rerank.exploit_list(scores, cats, k=4, cap=0).tolist() == [0, 1, 2, 3]  # no cap


def test_fresh_boost_only_for_young_items():
    out = rerank.boosted_scores(np.array([0.1, 0.1, 0.1]), np.array([-1, 2, 10]), 3, 0.05)
    assert np.allclose(out, [0.1, 0.15, 0.1])


def test_thompson_probabilities_match_sampling():
    rng = np.random.default_rng(0)
    imps = np.r_[np.zeros(4), rng.integers(5, 400, 16)].astype(float)
    clicks = np.round(imps * rng.uniform(0.02, 0.12, len(imps)))
    a, b = 1 + clicks, 19 + imps - clicks
    p = rerank.thompson_probabilities(a, b)
    assert p.shape == (20,) and abs(p.sum() - 1) < 1e-9 and (p >= 0).all()
    draws = rng.beta(a, b, size=(400_000, 20)).argmax(axis=1)
    mc = np.bincount(draws, minlength=20) / len(draws)
    assert np.abs(p - mc).max() < 5e-3
    assert p[:4].sum() > 4 / 20  # new items (prior only) win more than a uniform share


def test_remembered_cdf_rows_give_the_same_probabilities_bit_for_bit(monkeypatch):
    """The CDF rows kept between requests change nothing: a pool computed from scratch, again
    from the memo, and one sharing some rows with it (same grid) give identical numbers; a
    full memo is emptied, not grown."""
    rng = np.random.default_rng(3)
    imps = np.r_[np.zeros(5), rng.integers(5, 400, 60)].astype(float)
    clicks = np.round(imps * rng.uniform(0.02, 0.12, len(imps)))
    a, b = 1 + clicks, 19 + imps - clicks
    rerank._cdf_memo.clear()
    cold = rerank.thompson_probabilities(a, b)
    assert len(rerank._cdf_memo) == len(set(zip(a.tolist(), b.tolist(), strict=True)))
    warm = rerank.thompson_probabilities(a, b)
    assert warm.tolist() == cold.tolist()
    part = np.r_[0, 1, np.arange(30, 65)]  # the prior (widest: same grid) and half the rest
    mixed = rerank.thompson_probabilities(a[part], b[part])
    rerank._cdf_memo.clear()
    assert mixed.tolist() == rerank.thompson_probabilities(a[part], b[part]).tolist()
    monkeypatch.setattr(rerank, "CDF_ROWS_MAX", 10)
    assert rerank.thompson_probabilities(a, b).tolist() == cold.tolist()
    assert len(rerank._cdf_memo) <= 10


@pytest.mark.parametrize("uniform", [0.0, 0.5])
def test_logged_propensities_are_the_policy_frequencies(uniform: float):
    """Run the policy many times on one request: each (item, slot)'s empirical frequency equals
    the propensity logged with it (Thompson alone, and mixed half with a uniform draw)."""
    rng = np.random.default_rng(1)
    k, rate = 4, 0.3
    exploit = np.array([0, 1, 2, 3])
    scores = np.array([0.4, 0.3, 0.2, 0.1])
    pool = np.array([4, 5, 6])
    alpha, beta = np.array([1.0, 2.0, 1.0]), np.array([19.0, 30.0, 5.0])
    n = 60_000
    seen: Counter = Counter()
    logged: dict = {}
    for _ in range(n):
        slate = rerank.explore(exploit, scores, pool, alpha, beta, k, rate, rng, uniform=uniform)
        assert len(set(slate.rows.tolist())) == k
        assert ((slate.propensity > 0) & (slate.propensity <= 1)).all()
        for slot, (row, prop) in enumerate(zip(slate.rows, slate.propensity, strict=True)):
            seen[(int(row), slot)] += 1
            assert abs(logged.setdefault((int(row), slot), prop) - prop) < 1e-12
    for key, prop in logged.items():
        assert abs(seen[key] / n - prop) < 4 * np.sqrt(prop * (1 - prop) / n) + 1e-3, key
    # every (item, slot) the policy can produce was produced
    assert len(logged) == k + (k - 1) + k * len(pool)
    probs = slate.pool_probs
    assert abs(probs.sum() - 1) < 1e-9 and probs.min() >= uniform / len(pool) - 1e-12


def test_no_pool_means_no_exploration():
    slate = rerank.explore(np.array([2, 0]), np.array([0.5, 0.1]), np.array([], np.int64),
                           np.array([]), np.array([]), 2, 0.5, np.random.default_rng(0))  # fmt: skip
    assert slate.rows.tolist() == [2, 0] and slate.propensity.tolist() == [1.0, 1.0]


def test_optimistic_scores_favour_the_rarely_shown_and_fade_with_impressions():
    from serving.rerank import optimistic_scores

    p = np.array([0.10, 0.08, 0.08, 0.0])
    shown = np.array([5000, 0, 5000, 0])
    out = optimistic_scores(p, shown, 0.2)
    assert out[1] > out[0] > out[2]  # the unseen item passes the well-known better one
    assert out[2] == pytest.approx(0.08, abs=1e-3)  # 5,000 impressions: almost no bonus
    assert out[3] == 0.0  # nothing to be optimistic about a certain zero
    assert np.array_equal(optimistic_scores(p, shown, 0.0), p)


def test_exploit_optimism_reaches_the_exploit_list_only_when_set_and_only_for_ranker_scores(
    tmp_path,
):
    """The serving re-rank stage with ``exploit_optimism``: an item never shown whose ranker
    probability is a little below ten well-known ones enters the exploit list; not at 0, and
    not when the scores are retrieval scores (not probabilities)."""
    import types

    import pandas as pd

    from pipelines.core.settings import Settings
    from serving.bundle import ItemTable
    from serving.config import ServingConfig
    from serving.engine import build_engine
    from serving.pipeline import Request, _Ranked, _rerank

    ids = [f"i{j}" for j in range(12)]
    frame = pd.DataFrame({"item_id": ids, "item_category": [f"c{j}" for j in range(12)],
                          "item_impressions_28d": [5000] * 10 + [0, 5000]})  # fmt: skip
    bundle = types.SimpleNamespace(item_table=ItemTable.from_frame(frame, "2026-01-01"))
    probs = np.array([0.12 - 0.001 * j for j in range(10)] + [0.10, 0.02])
    trows = bundle.item_table.rows(ids)
    settings = Settings(home=tmp_path)

    def exploit(c: float, probabilities: bool = True) -> list[str]:
        cfg = ServingConfig(explore_rate=0.0, exploit_optimism=c)
        engine = build_engine(settings, cfg)
        try:
            ranked = _Ranked(ids, probs, trows, np.array([f"c{j}" for j in range(12)]),
                             np.full(12, 30), ["two_tower"] * 12, probabilities)  # fmt: skip
            slate = _rerank(engine, Request("u1", 10), bundle, ranked)
        finally:
            engine.hydrate_pool.shutdown(wait=False)
        return [ids[r] for r in slate.rows]

    assert "i10" not in exploit(0.0)
    assert "i10" in exploit(0.2) and "i11" not in exploit(0.2)  # rare but poor stays out
    assert "i10" not in exploit(0.2, probabilities=False)


def test_retrieval_tempered_scales_by_the_retrieval_place():
    from serving.rerank import retrieval_tempered

    p = np.array([0.1, 0.2, 0.4, 0.4])
    np.testing.assert_array_equal(retrieval_tempered(p, 0.0), p)
    got = retrieval_tempered(p, 1.0)
    np.testing.assert_allclose(got, [0.1, 0.1, 0.4 / 3, 0.1])
    # a large weight restores the retrieval order whatever the probabilities
    assert list(np.argsort(-retrieval_tempered(p[::-1], 50.0), kind="stable")) == [0, 1, 2, 3]


def test_tower_blended_multiplies_by_the_exponential_of_the_standardised_tower_score():
    from serving.rerank import tower_blended

    p = np.array([0.1, 0.2, 0.4, 0.3])
    t = np.array([1.0, 3.0, np.nan, 2.0])  # the third item has no tower embedding
    np.testing.assert_array_equal(tower_blended(p, t, 0.0), p)
    np.testing.assert_array_equal(tower_blended(p, None, 0.5), p)
    z = (np.array([1.0, 3.0, 2.0]) - 2.0) / np.std([1.0, 3.0, 2.0])
    want = p * np.exp(0.5 * np.array([z[0], z[1], z[0], z[2]]))  # NaN: the lowest z
    np.testing.assert_allclose(tower_blended(p, t, 0.5), want)
    # a tower with no spread, or a single score, changes nothing
    np.testing.assert_array_equal(tower_blended(p, np.full(4, 2.0), 1.0), p)
    np.testing.assert_array_equal(tower_blended(p, np.array([1.0, np.nan, np.nan, np.nan]), 1.0), p)
    # a large weight gives the tower's order; equal tower scores keep the ranker's
    assert list(np.argsort(-tower_blended(p, t, 50.0), kind="stable")) == [1, 3, 2, 0]
