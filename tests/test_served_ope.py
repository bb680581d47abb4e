"""Served OPE: the logging reconstruction is exact, the estimators are unbiased on a synthetic
served policy with known target probabilities, and ESS is (sum w)^2 / sum w^2."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.release import served_ope
from serving import rerank
from tests.synthetic_ope import DAY, ETA, K, pool_params, target, truth
from tests.synthetic_ope import logs as make_logs


@pytest.fixture(scope="module")
def logged() -> tuple[pd.DataFrame, dict]:
    return make_logs(6, 6000, rate=0.4, seed=2)


def test_reconstructed_logging_probabilities_are_the_policy():
    """Every shown item's probability at every slot, recovered from the logged slate alone,
    equals the policy's (:func:`serving.rerank.slot_probabilities`)."""
    imp, world = make_logs(3, 300, rate=0.3, seed=1)
    mu, explore = served_ope.service_slot_matrix(imp, K)
    alpha, beta = pool_params(3)
    probs = rerank.thompson_probabilities(alpha, beta, 512)  # explore()'s grid
    exact = target(world, 0.3, list(range(7)))  # the logging policy itself
    for i, (u, a) in enumerate(zip(imp["user_id"], imp["item_id"], strict=True)):
        ids, p = exact[u]
        assert np.allclose(mu[i], p[ids.index(a)], atol=1e-9), (i, mu[i], p[ids.index(a)])
    assert 0.2 < explore.reshape(-1, K).any(axis=1).mean() < 0.4  # one request in ~0.3 explores
    assert np.isclose(probs.sum(), 1.0)


@pytest.mark.parametrize(
    ("name", "rate", "order"),
    [
        ("slot_ips", 0.0, [4, 0, 1, 5, 2, 3, 6]),  # exploit items at their slot or one lower
        ("pbm_ips", 0.3, [2, 4, 0, 6, 1, 3, 5]),  # any order: items matched whatever their slot
        ("pbm_snips", 0.3, [2, 4, 0, 6, 1, 3, 5]),
        ("pbm_dr", 0.3, [2, 4, 0, 6, 1, 3, 5]),
    ],
)
def test_estimators_recover_the_target_value(logged, name, rate, order):
    imp, world = logged
    policy = target(world, rate, order)
    value = truth(imp, world, policy)
    logging_value = float(imp["reward"].mean())
    res = served_ope.evaluate_logs(imp, policy, DAY, n_boot=200, eta=ETA)
    e = res["estimates"][name]
    assert abs(value - logging_value) > 0.01  # the target differs from the logging policy
    assert e["ci_low"] <= value <= e["ci_high"], (name, e, value)
    assert abs(e["estimate"] - value) / value < 0.08, (name, e["estimate"], value)


def test_pbm_has_more_support_than_slots():
    imp, world = make_logs(6, 2000, rate=0.4, seed=3)
    res = served_ope.evaluate_logs(imp, target(world, 0.3, [2, 4, 0, 6, 1, 3, 5]), DAY,
                                   n_boot=0, eta=ETA)  # fmt: skip
    est = res["estimates"]
    assert est["pbm_snips"]["ess"] > 2 * est["slot_snips"]["ess"]


def test_ess_is_sum_squared_over_sum_of_squares():
    n = 4
    pos = np.array([0, 1, 0, 1])
    mu = np.full((n, 2), 0.5)
    pi = np.array([[0.5, 0.5], [0.5, 0.25], [1.0, 0.0], [0.5, 1.0]])
    res = served_ope.estimates(np.array([1.0, 0, 1, 0]), pos, mu, pi, np.ones(2),
                               np.arange(n), n_boot=0)  # fmt: skip
    w = np.array([1.0, 0.5, 2.0, 2.0])
    assert res["slot_ips"]["ess"] == pytest.approx(w.sum() ** 2 / (w**2).sum())
    assert res["slot_ips"]["estimate"] == pytest.approx((1.0 + 2.0) / 4)
    assert res["slot_snips"]["estimate"] == pytest.approx(3.0 / w.sum())


def test_simulator_rows_without_world_are_excluded():
    imp, _ = make_logs(2, 20, rate=0.3, seed=4)
    imp.loc[imp["request_id"] == imp["request_id"].iloc[0], "arm"] = "logging_policy"
    mu, _, excluded = served_ope.logging_slot_matrix(imp, K, None, DAY)
    assert excluded == K and np.isnan(mu[:K]).all() and np.isfinite(mu[K:]).all()
