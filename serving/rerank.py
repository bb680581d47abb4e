"""Re-ranking: business rules, diversity by category caps, and exploration with exact propensities.

Plain functions over arrays of one request's candidates (``C`` of them, already ranked or not).

**Exploit list** (:func:`exploit_list`): excluded items dropped, ``fresh_boost`` added to the
score of items at most ``fresh_days`` old, then greedily by score, at most ``category_cap`` items
(0: any number) of any one category (categories the request's context asked for are not
capped); if that leaves fewer than ``k``, the capped items fill the rest in score order.
Deterministic given the request.

**Exploration** (:func:`explore`): with probability ``rate`` one slot of the response explores.
Its position ``p`` is uniform over the ``k`` slots; the exploit items from ``p`` on move down one
slot (the last drops out) and the explore item goes to ``p``. The explore item is drawn from a
pool of items not in the exploit list (the best-ranked remaining candidates plus new items) by
Thompson sampling over their click posteriors ``Beta(a0 + clicks, b0 + impressions - clicks)``
(new items keep the prior's spread, so they win often), mixed with a uniform draw over the pool
(share ``uniform``, so that exploration does not settle on the pool's best-known items). The draw is made from the Thompson
choice probabilities ``P(j) = P(theta_j is the largest)`` themselves, computed by quadrature
(:func:`thompson_probabilities`): sampling from them is the same policy as drawing the thetas,
and the logged propensity is then the exact probability of what was drawn.

**Explorers** (``ServingConfig.explorer``, ``RECLOOP_SERVE_EXPLORER``): ``thompson`` (the above,
the default), ``epsilon`` (the explore item uniform over the pool, :func:`epsilon_probabilities`)
or ``linucb`` (a softmax over LinUCB scores of the candidates' context vectors, mixed with a
uniform share: :mod:`serving.linucb`). Only ``P(j)`` differs between them; slot, rate and the
propensity formulas below are the same, so the policy record replays all three.

**Propensities** (probability that this policy shows this item in this slot, 0-based slot ``s``):

- exploit item of rank ``r`` (0-based) at slot ``r``: ``(1 - rate) + rate * (k - 1 - r) / k``;
- exploit item of rank ``r`` at slot ``r + 1`` (an exploration above it): ``rate * (r + 1) / k``;
- explore item ``j`` at slot ``p``: ``rate / k * P(j)``.

All lie in ``(0, 1]``; with an empty pool there is no exploration and every propensity is 1.

**The policy as data** (:func:`policy_record`, :func:`slot_probabilities`): the exploit list,
the explore pool with its Thompson probabilities and the rate determine the probability of
*every* item at *every* slot, not only of the items shown. The off-policy evaluation of a served
policy (:mod:`pipelines.release.served_ope`) needs exactly that for the logged items of another
policy; the service returns it in a response's ``policy`` entry (item ids, not rows).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass
class Slate:
    """The response's items. ``rows``: indices into the request's candidate arrays, in slot order;
    ``propensity`` / ``explore`` aligned with them; ``scores`` the (boosted) exploit scores, or the
    posterior mean for the explore item."""

    rows: np.ndarray
    scores: np.ndarray
    propensity: np.ndarray
    explore: np.ndarray
    exploit: np.ndarray | None = None
    """Exploit rows, best first (``(n,)``; the slate's rows when nothing was explored)."""
    pool: np.ndarray | None = None
    """Explore pool rows (``(P,)``), aligned with ``pool_probs`` (Thompson probabilities)."""
    pool_probs: np.ndarray | None = None
    rate: float = 0.0
    """The exploration rate in force (0 when the pool was empty)."""
    explorer: str = "thompson"
    """How ``pool_probs`` were made (``ServingConfig.explorer``): ``thompson``, ``epsilon``,
    ``linucb``. The policy's probabilities depend only on ``pool_probs``, whatever made them."""


def boosted_scores(
    scores: np.ndarray, age_days: np.ndarray, fresh_days: int, fresh_boost: float
) -> np.ndarray:
    """``scores + fresh_boost`` where ``0 <= age_days <= fresh_days`` (``(C,)`` float64)."""
    age = np.asarray(age_days)
    fresh = (age >= 0) & (age <= fresh_days)
    return np.asarray(scores, dtype=np.float64) + fresh_boost * fresh


def optimistic_scores(probs: np.ndarray, impressions: np.ndarray, c: float) -> np.ndarray:
    """``probs + c * sqrt(probs (1 - probs) / (1 + impressions))`` (``(C,)`` float64): an upper
    confidence bound on click probabilities ``probs`` that shrinks as an item is shown
    (``impressions`` ``(C,)``, e.g. 28-day counts; negative read as 0)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 0.0, 1.0)
    n = np.maximum(np.asarray(impressions, dtype=np.float64), 0.0)
    return np.asarray(probs, dtype=np.float64) + c * np.sqrt(p * (1.0 - p) / (1.0 + n))


def retrieval_tempered(scores: np.ndarray, weight: float) -> np.ndarray:
    """``scores * (1 + r) ** -weight`` (``(C,)`` float64), ``r`` = ``0 .. C-1`` the candidates'
    places in the retrieval order they come in: the ranker's click probabilities tempered by the
    merged sources' order (``weight`` 0: unchanged)."""
    s = np.asarray(scores, dtype=np.float64)
    if weight == 0.0:
        return s
    return s * (1.0 + np.arange(len(s), dtype=np.float64)) ** -float(weight)


def tower_blended(scores: np.ndarray, tower: np.ndarray | None, weight: float) -> np.ndarray:
    """``scores * exp(weight * z)`` (``(C,)`` float64): the ranker's click probabilities times the
    user tower's preference, ``z`` the tower's scores ``(C,)`` standardised over the candidates
    (a candidate the tower has no embedding for, NaN, gets the lowest ``z``). Unchanged when
    ``weight`` is 0, ``tower`` is None, or fewer than two candidates have a tower score that
    differs."""
    s = np.asarray(scores, dtype=np.float64)
    if weight == 0.0 or tower is None:
        return s
    t = np.asarray(tower, dtype=np.float64)
    known = np.isfinite(t)
    if known.sum() < 2 or float(t[known].std()) == 0.0:
        return s
    z = (t - t[known].mean()) / t[known].std()
    z = np.where(known, z, z[known].min())
    return s * np.exp(float(weight) * z)


def exploit_list(
    scores: np.ndarray,
    categories: np.ndarray,
    k: int,
    cap: int,
    allowed: np.ndarray | None = None,
    uncapped: frozenset[str] = frozenset(),
) -> np.ndarray:
    """Rows of the top ``k`` (at most ``C``) by ``scores`` under the category cap (``cap`` 0:
    none, the score order).

    ``allowed``: boolean ``(C,)`` mask (False = excluded by a business rule). Ties by row.
    """
    scores = np.asarray(scores, dtype=np.float64)
    ok = np.ones(len(scores), bool) if allowed is None else np.asarray(allowed, bool)
    order = np.lexsort((np.arange(len(scores)), -np.nan_to_num(scores, nan=-np.inf)))
    order = order[ok[order]]
    chosen: list[int] = []
    skipped: list[int] = []
    per_cat: dict[str, int] = {}
    for r in order:
        if len(chosen) == k:
            break
        c = str(categories[r])
        if cap > 0 and c not in uncapped and per_cat.get(c, 0) >= cap:
            skipped.append(int(r))
            continue
        per_cat[c] = per_cat.get(c, 0) + 1
        chosen.append(int(r))
    if len(chosen) < k:
        chosen += skipped[: k - len(chosen)]
    return np.asarray(chosen, dtype=np.int64)


def thompson_probabilities(alpha: np.ndarray, beta: np.ndarray, grid: int = 256) -> np.ndarray:
    """``P(theta_j = max_i theta_i)`` for independent ``theta_i ~ Beta(alpha_i, beta_i)``, ``(n,)``.

    Quadrature on ``grid`` cells spanning the posteriors' mass (each mean +- 12 standard
    deviations, clipped to [0, 1]): the mass of ``theta_j`` in a cell (CDF differences, exact)
    times the product of the others' CDFs averaged over the cell's two edges; renormalized to sum
    1. Within ~2e-3 of pure Thompson sampling; the draw uses these numbers, so the logged
    propensity is exact for the policy that runs. A posterior's CDF row on a grid is remembered
    (:func:`_cdf_rows`): requests whose pools span the same grid reuse it, bit for bit.
    """
    a = np.asarray(alpha, dtype=np.float64)
    b = np.asarray(beta, dtype=np.float64)
    n = a.shape[0]
    if n <= 1:
        return np.ones(n)
    mean = a / (a + b)
    sd = np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))
    lo = max(0.0, float((mean - 12 * sd).min()))
    hi = min(1.0, float((mean + 12 * sd).max()))
    # items with equal posteriors (e.g. never shown) share one CDF row: m distinct pairs
    pairs, inverse, counts = np.unique(
        np.stack([a, b], axis=1), axis=0, return_inverse=True, return_counts=True
    )
    cdf, log_cdf = _cdf_rows(pairs, lo, hi, grid)  # (m, G+1) each
    mass = np.diff(cdf, axis=1)  # (m, G)
    log_all = (counts[:, None] * log_cdf).sum(axis=0, keepdims=True)
    others_edges = np.exp(log_all - log_cdf)  # prod over the other n - 1 items
    others = (others_edges[:, :-1] + others_edges[:, 1:]) / 2
    p = (mass * others).sum(axis=1)[inverse.ravel()]
    total = p.sum()
    return p / total if total > 0 else np.full(n, 1.0 / n)


CDF_ROWS_MAX = 8192
"""Beta CDF rows :func:`_cdf_rows` remembers per process (with its log: 4 KB at the default
grid of 256, at most ~34 MB; beyond: all forgotten, recomputed). The demo's item table has ~2k
distinct posteriors and a pool spans one of a few grids."""
_cdf_memo: dict[tuple[float, float, int, float, float], tuple[np.ndarray, np.ndarray]] = {}
_cdf_lock = threading.Lock()


def _cdf_rows(pairs: np.ndarray, lo: float, hi: float, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """``(cdf, log cdf)``, each ``(m, grid + 1)``, of the Beta posteriors ``pairs`` ``(m, 2)`` on
    the edges ``linspace(lo, hi, grid + 1)`` (the last edge's CDF 1 when ``hi`` is 1; the log
    of the CDF clipped at 1e-300). Rows are remembered by ``(lo, hi, grid, alpha, beta)``: the
    pool's widest posterior sets the grid, so most requests share a few grids; only the rows
    not remembered are computed (``betainc`` is elementwise: the same numbers either way)."""
    from scipy.special import betainc

    keys = [(lo, hi, grid, float(x), float(y)) for x, y in pairs.tolist()]
    got = [_cdf_memo.get(key) for key in keys]
    todo = [i for i, row in enumerate(got) if row is None]
    if todo:
        edges = np.linspace(lo, hi, grid + 1)[None, :]
        new = betainc(pairs[todo, :1], pairs[todo, 1:], edges)  # (t, G+1)
        new[:, -1] = np.where(hi >= 1.0, 1.0, new[:, -1])
        logs = np.log(np.clip(new, 1e-300, None))
        with _cdf_lock:
            if len(_cdf_memo) + len(todo) > CDF_ROWS_MAX:
                _cdf_memo.clear()
            for t, i in enumerate(todo):
                got[i] = (new[t], logs[t])
                if len(todo) <= CDF_ROWS_MAX:
                    _cdf_memo[keys[i]] = got[i]
    cdf = np.stack([row[0] for row in got])
    log_cdf = np.stack([row[1] for row in got])
    return cdf, log_cdf


def epsilon_probabilities(n: int) -> np.ndarray:
    """The ``epsilon`` explorer's choice over a pool of ``n``: uniform, ``(n,)`` of ``1 / n``."""
    return np.full(n, 1.0 / n) if n else np.zeros(0)


def exploit_propensity(rank: int, slot: int, k: int, rate: float) -> float:
    """Propensity of the exploit item of ``rank`` shown at ``slot`` (both 0-based)."""
    if slot == rank:
        return (1.0 - rate) + rate * (k - 1 - rank) / k
    if slot == rank + 1:
        return rate * (rank + 1) / k
    raise ValueError(f"an exploit item of rank {rank} is never shown at slot {slot}")


def explore(
    exploit: np.ndarray,
    exploit_scores: np.ndarray,
    pool: np.ndarray,
    alpha: np.ndarray,
    beta: np.ndarray,
    k: int,
    rate: float,
    rng: np.random.Generator,
    grid: int = 512,
    uniform: float = 0.0,
    probs: np.ndarray | Callable[[], np.ndarray | None] | None = None,
    explorer: str = "thompson",
    need_policy: bool = True,
) -> Slate:
    """Final slate from the exploit list (``(k,)`` rows, best first, ``len <= k``) and the explore
    ``pool`` (rows not in it, with their posteriors ``alpha``/``beta``). See the module docstring.
    ``uniform``: share of the explore draw made uniformly over the pool (the rest by Thompson):
    ``P(j) = uniform / P + (1 - uniform) * P_thompson(j)``. ``probs``: the explore choice's
    probabilities ``(P,)`` (summing to 1) made by another ``explorer``
    (:func:`epsilon_probabilities`, :func:`serving.linucb.choice_probabilities`), used instead
    of Thompson's and ``uniform``; the draws are made in the same order, so only the explored
    item can differ. ``probs`` may be a function returning them (or None: Thompson's), called
    only when they are needed: with ``need_policy`` False a request that does not explore leaves
    them uncomputed (``pool_probs`` None; its propensities do not depend on them) — the service
    passes False unless its responses carry their policy.
    """
    exploit = np.asarray(exploit, dtype=np.int64)
    n = len(exploit)
    if n == 0:
        return Slate(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0, bool))
    k = n  # the response length; propensities are over its slots
    pool = np.asarray(pool, dtype=np.int64)
    if len(pool) == 0 or rate <= 0.0:
        none = np.zeros(0, np.int64)
        return Slate(exploit, np.asarray(exploit_scores, float), np.ones(n), np.zeros(n, bool),
                     exploit, none, np.zeros(0), 0.0, explorer)  # fmt: skip
    explore_now = rng.random() < rate
    if explore_now or need_policy:
        if callable(probs):
            probs = probs()
        if probs is None:
            probs = thompson_probabilities(alpha, beta, grid)
            if uniform > 0.0:
                probs = uniform / len(pool) + (1.0 - uniform) * probs
        probs = np.asarray(probs, dtype=np.float64)
    else:
        probs = None
    policy = {"exploit": exploit, "pool": pool, "pool_probs": probs, "rate": float(rate),
              "explorer": explorer}  # fmt: skip
    if not explore_now:
        props = np.array([exploit_propensity(r, r, k, rate) for r in range(n)])
        return Slate(exploit, np.asarray(exploit_scores, float), props, np.zeros(n, bool), **policy)
    j = int(rng.choice(len(pool), p=probs))
    p = int(rng.integers(k))
    rows = np.concatenate([exploit[:p], [pool[j]], exploit[p : n - 1]])
    mean = float(alpha[j] / (alpha[j] + beta[j]))
    scores = np.concatenate([exploit_scores[:p], [mean], exploit_scores[p : n - 1]])
    props = np.empty(n)
    for slot in range(n):
        if slot < p:
            props[slot] = exploit_propensity(slot, slot, k, rate)
        elif slot == p:
            props[slot] = rate / k * float(probs[j])
        else:
            props[slot] = exploit_propensity(slot - 1, slot, k, rate)
    flags = np.zeros(n, bool)
    flags[p] = True
    return Slate(rows.astype(np.int64), scores.astype(float), props, flags, **policy)


def slot_probabilities(
    n: int, pool_probs: np.ndarray, rate: float
) -> tuple[np.ndarray, np.ndarray]:
    """Item-at-slot probabilities of the policy of :func:`explore` over a slate of ``n`` slots.

    Returns ``(E (n, n), X (P, n))``: ``E[r, s]`` the probability that the exploit item of rank
    ``r`` is at slot ``s`` (module docstring; the exploit item of rank ``n - 1`` drops out
    whenever an exploration lands, probability ``rate``), ``X[j, s] =
    rate / n * pool_probs[j]`` for pool item ``j`` (its explore position is uniform). Each slot's
    column sums to 1 over ``E`` and ``X`` (``pool_probs`` summing to 1; with ``rate`` 0 or an
    empty pool ``E`` is the identity and ``X`` empty)."""
    pp = np.asarray(pool_probs, dtype=np.float64)
    rate = float(rate) if len(pp) else 0.0
    e = np.zeros((n, n))
    for r in range(n):
        e[r, r] = exploit_propensity(r, r, n, rate)
        if r + 1 < n:
            e[r, r + 1] = exploit_propensity(r, r + 1, n, rate)
    x = np.repeat((rate / max(n, 1) * pp)[:, None], n, axis=1) if n else np.zeros((len(pp), 0))
    return e, x


def policy_record(slate: Slate, ids: list[str]) -> dict[str, object]:
    """The slate's policy as JSON-ready data, item ids from ``ids`` (the request's candidates):
    ``{"rate", "exploit": [ids best first], "pool": [ids], "pool_probs": [floats],
    "explorer"}`` (the explorer is a label: the probabilities need only ``pool_probs``)."""
    exploit = slate.rows if slate.exploit is None else slate.exploit
    pool = np.zeros(0, np.int64) if slate.pool is None else slate.pool
    probs = np.zeros(0) if slate.pool_probs is None else slate.pool_probs
    return {
        "rate": float(slate.rate),
        "exploit": [ids[int(r)] for r in exploit],
        "pool": [ids[int(r)] for r in pool],
        "pool_probs": [float(p) for p in probs],
        "explorer": slate.explorer,
    }


def policy_probabilities(policy: dict, k: int) -> tuple[list[str], np.ndarray]:
    """``(item ids (m,), probabilities (m, k))`` of a :func:`policy_record`: every item the policy
    can show and its probability at each of the ``k`` slots (the response's length; the exploit
    list is cut to ``k``). An item in neither list has probability 0 everywhere."""
    exploit = list(policy["exploit"])[:k]
    n = len(exploit)
    e, x = slot_probabilities(n, np.asarray(policy.get("pool_probs") or [], float),
                              float(policy.get("rate") or 0.0))  # fmt: skip
    ids = exploit + list(policy.get("pool") or [])
    probs = np.zeros((len(ids), k))
    probs[:n, :n] = e
    probs[n:, :n] = x
    return ids, probs
