"""A synthetic served policy with known probabilities, for the served-OPE tests: ``K`` slots
with examination ``EXAM``, logged impressions of an exploit-and-explore policy (:func:`logs`),
target policies (:func:`target`) and their exact value (:func:`truth`)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd

from pipelines.release import served_ope
from serving import rerank

K = 4
ETA = 0.7
EXAM = (1.0 + np.arange(K)) ** -ETA
DAY = dt.date(2026, 1, 10)


def pool_params(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.linspace(1.0, 3.0, n), np.linspace(19.0, 12.0, n)


def logs(n_users: int, n_requests: int, rate: float, seed: int) -> tuple[pd.DataFrame, dict]:
    """Logged impressions of a served policy: per user an exploit list of 4 and a pool of 3
    items (of 8, ordered worst first), exploration at ``rate``; clicks ``EXAM[s] * rel(u, a)``."""
    rng = np.random.default_rng(seed)
    perms = {u: rng.permutation(8) for u in range(n_users)}
    rel = np.empty((n_users, 8))  # the logging's exploit items are its worst: targets differ
    for u, perm in perms.items():
        rel[u, perm] = np.linspace(0.1, 0.66, 8) * rng.uniform(0.8, 1.2)
    alpha, beta = pool_params(3)
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


def target(world: dict, rate: float, order: list[int]) -> served_ope.Policies:
    """Target per user: exploit = ``order`` applied to the logging's 7 items, pool = the rest."""
    alpha, beta = pool_params(3)
    probs = rerank.thompson_probabilities(alpha, beta, 512)  # explore()'s grid
    out = {}
    for u, perm in world["perms"].items():
        items = [f"i{perm[j]}" for j in order]
        policy = {"rate": rate, "exploit": items[:4], "pool": items[4:7],
                  "pool_probs": probs.tolist()}  # fmt: skip
        out[f"u{u}"] = rerank.policy_probabilities(policy, K)
    return out


def truth(imp: pd.DataFrame, world: dict, policies: served_ope.Policies) -> float:
    vals = []
    for u in imp.drop_duplicates("request_id")["user_id"]:
        ids, probs = policies[u]
        rel = world["rel"][int(u[1:]), [int(a[1:]) for a in ids]]
        vals.append(float((probs * EXAM[None, :] * rel[:, None]).sum() / K))
    return float(np.mean(vals))
