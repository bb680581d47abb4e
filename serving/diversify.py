"""Re-rankers against popularity bias: calibrated lists (Steck 2018) and MMR diversity.

Plain functions over one request's ``C`` candidates, returning the exploit list as
:func:`serving.rerank.exploit_list` does: ``(n,)`` int64 candidate rows, best first,
``n = min(k, allowed candidates)``; ``allowed`` a boolean ``(C,)`` mask (False = excluded).
Both are greedy and deterministic: at each step the candidate with the best objective is
appended, ties going to the higher score, then the lower row; so the exploration and its logged
propensities (:func:`serving.rerank.explore`) stay exact.

**Relevance** (:func:`relevance`): ``scores`` min-max scaled to ``[0, 1]`` over the allowed
candidates (NaN = 0), so that ``lam`` means the same for a ranker's click probabilities
(~0.03) and for retrieval scores.

**Calibrated** (:func:`calibrated_list`; Steck 2018, "Calibrated recommendations"): the list
``L`` maximising ``(1 - lam) * sum_{i in L} relevance_i - lam * KL(p || q~(L))``, ``p`` the
target category distribution (the user's), ``q(L)`` the list's (each item weighs the same),
``q~ = (1 - alpha) q + alpha p`` (:func:`pipelines.core.beyond_accuracy.calibration_kl`).
``lam = 0``: the score order; ``lam = 1``: the closest proportions, best scores within them.

**MMR** (:func:`mmr_list`; Carbonell & Goldstein 1998): the next item maximises
``lam * relevance_i - (1 - lam) * max_{j in L} sim(i, j)``, ``sim`` = 1 for the same category,
0 otherwise, or the cosine of item vectors when ``vectors`` ``(C, d)`` are given.
``lam = 1``: the score order; lower ``lam``: more diverse lists.

**The online target** (:func:`online_target`): the service has no user's category
distribution online; its user features hold the top category of the user's last 28 days and
that category's share (``user_top_category``, ``user_top_category_share``). ``p`` puts that
share on the top category and spreads the rest like the candidates' own distribution over the
other categories; for a user without history (no top category) ``p`` is the candidates' own
distribution: the top :data:`TARGET_TOP` candidates by score, each weighted by its score
(clipped at 0).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from pipelines.core.beyond_accuracy import CALIBRATION_ALPHA

TARGET_TOP = 50
"""Candidates (best scores) whose score-weighted categories make the online target ``p``."""


def _order(scores: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
    """Allowed rows by descending score (NaN last), ties by row (as ``exploit_list``)."""
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    order = np.lexsort((np.arange(len(s)), -s))
    return order if allowed is None else order[np.asarray(allowed, bool)[order]]


def relevance(scores: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``(len(rows),)`` scores of ``rows`` min-max scaled to ``[0, 1]`` over them (NaN and
    ``-inf`` = 0; all equal = 0)."""
    s = np.asarray(scores, dtype=np.float64)[rows]
    finite = np.isfinite(s)
    if not finite.any():
        return np.zeros(len(rows))
    lo, hi = s[finite].min(), s[finite].max()
    out = (s - lo) / (hi - lo) if hi > lo else np.zeros(len(rows))
    return np.where(finite, out, 0.0)


def calibrated_list(
    scores: np.ndarray,
    categories: np.ndarray,
    k: int,
    target: Mapping[str, float],
    lam: float,
    allowed: np.ndarray | None = None,
    alpha: float = CALIBRATION_ALPHA,
) -> np.ndarray:
    """Rows of the greedy calibrated list of ``k`` (module docstring). ``scores``,
    ``categories``: ``(C,)``; ``target``: ``{category: share}`` (``p``, summing to 1)."""
    order = _order(scores, allowed)
    rel = relevance(scores, order)
    cats = np.asarray(categories).astype(str)[order]
    labels = np.array(sorted(set(cats) | {str(g) for g in target}))
    code = np.searchsorted(labels, cats)
    p = np.array([float(target.get(str(g), 0.0)) for g in labels])
    counts = np.zeros(len(labels))
    taken = np.zeros(len(order), bool)
    chosen: list[int] = []
    for _ in range(min(k, len(order))):
        kl = _kl_plus_one(p, counts, alpha)
        obj = (1.0 - lam) * rel - lam * kl[code]
        obj[taken] = -np.inf
        best = int(np.argmax(obj))  # first of the ties: higher score, then lower row
        taken[best] = True
        counts[code[best]] += 1
        chosen.append(int(order[best]))
    return np.asarray(chosen, dtype=np.int64)


def _kl_plus_one(p: np.ndarray, counts: np.ndarray, alpha: float) -> np.ndarray:
    """``(G,)``: :func:`~pipelines.core.beyond_accuracy.calibration_kl` of ``p`` and the list
    of category ``counts`` ``(G,)`` with one more item of category ``g``, for each ``g``."""
    q = (counts[None, :] + np.eye(len(p))) / (counts.sum() + 1.0)  # (G, G): row g
    q_s = (1.0 - alpha) * q + alpha * p[None, :]
    m = p > 0
    return (p[m][None, :] * np.log(p[m][None, :] / q_s[:, m])).sum(axis=1)


def mmr_list(
    scores: np.ndarray,
    categories: np.ndarray,
    k: int,
    lam: float,
    allowed: np.ndarray | None = None,
    vectors: np.ndarray | None = None,
) -> np.ndarray:
    """Rows of the greedy MMR list of ``k`` (module docstring). ``scores``, ``categories``:
    ``(C,)``; ``vectors``: ``(C, d)`` item embeddings (cosine similarity) or None (same
    category = 1)."""
    order = _order(scores, allowed)
    rel = relevance(scores, order)
    if vectors is not None:
        v = np.asarray(vectors, dtype=np.float64)[order]
        unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    else:
        cats = np.asarray(categories).astype(str)[order]
    max_sim = np.zeros(len(order))
    taken = np.zeros(len(order), bool)
    chosen: list[int] = []
    for m in range(min(k, len(order))):
        obj = lam * rel - (1.0 - lam) * max_sim if m else rel.copy()
        obj[taken] = -np.inf
        best = int(np.argmax(obj))
        taken[best] = True
        chosen.append(int(order[best]))
        sim = unit @ unit[best] if vectors is not None else (cats == cats[best]).astype(float)
        max_sim = np.maximum(max_sim, sim)
    return np.asarray(chosen, dtype=np.int64)


def candidate_distribution(
    scores: np.ndarray, categories: np.ndarray, allowed: np.ndarray | None = None
) -> dict[str, float]:
    """``{category: share}`` of the :data:`TARGET_TOP` best allowed candidates, each weighted by
    its score clipped at 0 (all zero: equal weights)."""
    top = _order(scores, allowed)[:TARGET_TOP]
    w = np.clip(np.nan_to_num(np.asarray(scores, dtype=np.float64)[top]), 0.0, None)
    w = w if w.sum() > 0 else np.ones(len(top))
    out: dict[str, float] = {}
    for c, x in zip(np.asarray(categories).astype(str)[top], w, strict=True):
        out[c] = out.get(c, 0.0) + float(x)
    total = sum(out.values())
    return {c: x / total for c, x in out.items()} if total > 0 else {}


def online_target(
    scores: np.ndarray,
    categories: np.ndarray,
    allowed: np.ndarray | None = None,
    user: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """The target ``p`` of one request (module docstring): ``user``'s hydrated features
    (``user_top_category``, ``user_top_category_share``; None or missing: no history) mixed
    with :func:`candidate_distribution`."""
    cand = candidate_distribution(scores, categories, allowed)
    top = str((user or {}).get("user_top_category") or "unknown")
    share = float(np.clip(np.nan_to_num(float((user or {}).get("user_top_category_share") or 0.0)),
                          0.0, 1.0))  # fmt: skip
    if top == "unknown" or share <= 0.0:
        return cand
    rest = {c: x for c, x in cand.items() if c != top}
    total = sum(rest.values())
    if total <= 0:
        return {top: 1.0}
    out = {c: (1.0 - share) * x / total for c, x in rest.items()}
    out[top] = share
    return out
