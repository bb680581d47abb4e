"""Served OPE: the logging reconstruction is exact, the estimators are unbiased on a synthetic
served policy with known target probabilities, and ESS is (sum w)^2 / sum w^2."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from pipelines.release import served_ope
from serving import rerank

K = 4
ETA = 0.7
EXAM = (1.0 + np.arange(K)) ** -ETA
DAY = dt.date(2026, 1, 10)


def _pool_params(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.linspace(1.0, 3.0, n), np.linspace(19.0, 12.0, n)


def _logs(n_users: int, n_requests: int, rate: float, seed: int) -> tuple[pd.DataFrame, dict]:
    """Logged impressions of a served policy: per user an exploit list of 4 and a pool of 3
    items (of 8, ordered worst first), exploration at ``rate``; clicks ``EXAM[s] * rel(u, a)``."""
    rng = np.random.default_rng(seed)
    perms = {u: rng.permutation(8) for u in range(n_users)}
    rel = np.empty((n_users, 8))  # the logging's exploit items are its worst: targets differ
    for u, perm in perms.items():
        rel[u, perm] = np.linspace(0.1, 0.66, 8) * rng.uniform(0.8, 1.2)
    alpha, beta = _pool_params(3)
    rows = []
    for n in range(n_requests):
        u = int(rng.integers(n_users))
        exploit, pool = perms[u][:4], perms[u][4:7]
        slate = rerank.explore(exploit, np.zeros(4), pool, alpha, beta, K, rate, rng)
        for s, (a, p) in enumerate(zip(slate.rows, slate.propensity, strict=True)):
            click = float(rng.random() < EXAM[s] * rel[u, a])
            rows.append((f"r{n}", f"u{u}", f"i{a}", s, "champion", p, click))
    cols = ["request_id", "user_id", "item_id", "position", "arm", "propensity", "reward"]
    imp = pd.DataFrame(rows, columns=cols).sort_values(["request_id", "position"])
    return imp.reset_index(drop=True), {"rel": rel, "perms": perms}


def _target(world: dict, rate: float, order: list[int]) -> served_ope.Policies:
    """Target per user: exploit = ``order`` applied to the logging's 7 items, pool = the rest."""
    alpha, beta = _pool_params(3)
    probs = rerank.thompson_probabilities(alpha, beta, 512)  # explore()'s grid
    out = {}
    for u, perm in world["perms"].items():
        items = [f"i{perm[j]}" for j in order]
        policy = {"rate": rate, "exploit": items[:4], "pool": items[4:7],
                  "pool_probs": probs.tolist()}  # fmt: skip
        out[f"u{u}"] = rerank.policy_probabilities(policy, K)
    return out


def _truth(imp: pd.DataFrame, world: dict, policies: served_ope.Policies) -> float:
    vals = []
    for u in imp.drop_duplicates("request_id")["user_id"]:
        ids, probs = policies[u]
        rel = world["rel"][int(u[1:]), [int(a[1:]) for a in ids]]
        vals.append(float((probs * EXAM[None, :] * rel[:, None]).sum() / K))
    return float(np.mean(vals))


@pytest.fixture(scope="module")
def logged() -> tuple[pd.DataFrame, dict]:
    return _logs(6, 6000, rate=0.4, seed=2)


def test_reconstructed_logging_probabilities_are_the_policy():
    """Every shown item's probability at every slot, recovered from the logged slate alone,
    equals the policy's (:func:`serving.rerank.slot_probabilities`)."""
    imp, world = _logs(3, 300, rate=0.3, seed=1)
    mu, explore = served_ope.service_slot_matrix(imp, K)
    alpha, beta = _pool_params(3)
    probs = rerank.thompson_probabilities(alpha, beta, 512)  # explore()'s grid
    exact = _target(world, 0.3, list(range(7)))  # the logging policy itself
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
    target = _target(world, rate, order)
    truth = _truth(imp, world, target)
    logging_value = float(imp["reward"].mean())
    res = served_ope.evaluate_logs(imp, target, DAY, n_boot=200, eta=ETA)
    e = res["estimates"][name]
    assert abs(truth - logging_value) > 0.01  # the target differs from the logging policy
    assert e["ci_low"] <= truth <= e["ci_high"], (name, e, truth)
    assert abs(e["estimate"] - truth) / truth < 0.08, (name, e["estimate"], truth)


def test_pbm_has_more_support_than_slots():
    imp, world = _logs(6, 2000, rate=0.4, seed=3)
    res = served_ope.evaluate_logs(imp, _target(world, 0.3, [2, 4, 0, 6, 1, 3, 5]), DAY,
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
    imp, _ = _logs(2, 20, rate=0.3, seed=4)
    imp.loc[imp["request_id"] == imp["request_id"].iloc[0], "arm"] = "logging_policy"
    mu, _, excluded = served_ope.logging_slot_matrix(imp, K, None, DAY)
    assert excluded == K and np.isnan(mu[:K]).all() and np.isfinite(mu[K:]).all()
