"""Offline ranking metrics and the evaluation protocol.

Definitions follow the reference chapter (section 16.1). Conventions, stated once:

* ``recs`` is an int array ``(U_eval, K)`` of item indices, best first, padded with ``-1`` when a
  model returned fewer than ``K`` items. Padding is never relevant; Precision@K still divides by
  ``K`` (a short list is penalised, not rewarded).
* ``relevance`` gives each row of ``recs`` its graded relevance: a ``scipy.sparse`` matrix
  ``(U_eval, I)`` (row ``r`` belongs to ``recs[r]``) or a sequence/mapping ``row -> {item: grade}``.
  An item is *relevant* when its grade is ``> 0``; NDCG uses the grade itself.
* Rows with no relevant item are **skipped** by every per-user metric (recall and NDCG are
  undefined for them, and counting them as zeros would reward nothing but test-set sparsity);
  ``n_users`` in :func:`evaluate_model` reports how many rows were averaged. When no row has a
  relevant item the metric is ``nan``.
* Duplicate items inside one list count once (the first occurrence); later copies are misses.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

if TYPE_CHECKING:
    from models.base import Retriever

log = logging.getLogger(__name__)

Relevance = (
    sp.spmatrix | sp.sparray | Sequence[Mapping[int, float]] | Mapping[int, Mapping[int, float]]
)


# --- inputs -----------------------------------------------------------------------------------
def _relevance_csr(relevance: Relevance, recs: np.ndarray) -> sp.csr_matrix:
    """Normalise ``relevance`` to a CSR ``(U_eval, n)`` holding only grades ``> 0``."""
    n_rows = len(recs)
    if sp.issparse(relevance):
        m = sp.csr_matrix(relevance, dtype=np.float64)
        if m.shape[0] != n_rows:
            raise ValueError(f"relevance has {m.shape[0]} rows, recs has {n_rows}")
    else:
        if isinstance(relevance, Mapping):
            dicts = [relevance.get(r, {}) for r in range(n_rows)]
        else:
            if len(relevance) != n_rows:
                raise ValueError(f"relevance has {len(relevance)} rows, recs has {n_rows}")
            dicts = list(relevance)
        rows = np.repeat(np.arange(n_rows), [len(d) for d in dicts])
        cols = np.fromiter((int(i) for d in dicts for i in d), dtype=np.int64, count=len(rows))
        vals = np.fromiter((float(g) for d in dicts for g in d.values()), np.float64, len(rows))
        n_cols = int(max(cols.max(initial=-1), np.asarray(recs).max(initial=-1)) + 1)
        m = sp.csr_matrix((vals, (rows, cols)), shape=(n_rows, n_cols))
    m = m.multiply(m > 0).tocsr()
    m.eliminate_zeros()
    return m


def _gains(recs: np.ndarray, rel: sp.csr_matrix, k: int) -> np.ndarray:
    """Grade of each of the first ``k`` recommended items (0 for misses, padding, duplicates):
    float ``(U_eval, k)``."""
    recs = np.asarray(recs)
    if recs.ndim != 2:
        raise ValueError(f"recs must be 2-D (U_eval, K), got shape {recs.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    top = recs[:, :k].astype(np.int64)
    n, w = top.shape
    valid = (top >= 0) & (top < rel.shape[1])
    # later copies of an item inside one list are misses
    order = np.argsort(top, axis=1, kind="stable")
    srt = np.take_along_axis(top, order, axis=1)
    dup_sorted = np.zeros_like(srt, dtype=bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    dup = np.zeros_like(dup_sorted)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    valid &= ~dup
    g = np.zeros((n, k), dtype=np.float64)
    r, c = np.nonzero(valid)
    if len(r):
        g[r, c] = np.asarray(rel[r, top[r, c]]).ravel()
    return g


def _mean_over_users_with_relevance(values: np.ndarray, rel: sp.csr_matrix) -> float:
    keep = np.diff(rel.indptr) > 0
    return float(values[keep].mean()) if keep.any() else float("nan")


def _n_relevant(rel: sp.csr_matrix) -> np.ndarray:
    return np.diff(rel.indptr).astype(np.float64)


# --- ranking metrics ----------------------------------------------------------------------------
def precision_at_k(recs: np.ndarray, relevance: Relevance, k: int) -> float:
    """Mean over users of ``|relevant in top-k| / k``."""
    rel = _relevance_csr(relevance, recs)
    hits = (_gains(recs, rel, k) > 0).sum(1)
    return _mean_over_users_with_relevance(hits / k, rel)


def recall_at_k(recs: np.ndarray, relevance: Relevance, k: int) -> float:
    """Mean over users of ``|relevant in top-k| / |all relevant|``."""
    rel = _relevance_csr(relevance, recs)
    hits = (_gains(recs, rel, k) > 0).sum(1)
    return _mean_over_users_with_relevance(hits / np.maximum(_n_relevant(rel), 1), rel)


def map_at_k(recs: np.ndarray, relevance: Relevance, k: int) -> float:
    """``1/|U| sum_u 1/min(m_u, k) sum_{j<=k} P@j * rel(j)`` (the chapter's form)."""
    rel = _relevance_csr(relevance, recs)
    hit = (_gains(recs, rel, k) > 0).astype(np.float64)
    p_at_j = np.cumsum(hit, axis=1) / np.arange(1, k + 1)
    m = np.clip(_n_relevant(rel), 1, k)
    return _mean_over_users_with_relevance((p_at_j * hit).sum(1) / m, rel)


def ndcg_at_k(recs: np.ndarray, relevance: Relevance, k: int) -> float:
    """``DCG@k / IDCG@k`` with gain ``2^rel - 1`` and discount ``log2(i + 1)`` (``i`` from 1),
    the mean over users with a relevant item (:func:`ndcg_rows`)."""
    rel = _relevance_csr(relevance, recs)
    return _mean_over_users_with_relevance(ndcg_rows(recs, rel, k), rel)


def ndcg_rows(recs: np.ndarray, relevance: Relevance, k: int) -> np.ndarray:
    """NDCG@k of each user ``(U_eval,)`` float64 (0 for a user without a relevant item).

    IDCG@k is the DCG of the user's own relevant grades sorted best first (at most ``k`` of them).
    """
    rel = _relevance_csr(relevance, recs)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = ((2.0 ** _gains(recs, rel, k) - 1.0) * disc).sum(1)
    idcg = np.zeros(rel.shape[0])
    for r in range(rel.shape[0]):
        best = np.sort(rel.data[rel.indptr[r] : rel.indptr[r + 1]])[::-1][:k]
        idcg[r] = ((2.0**best - 1.0) * disc[: len(best)]).sum()
    return dcg / np.where(idcg > 0, idcg, 1.0)


def hit_rate_at_k(recs: np.ndarray, relevance: Relevance, k: int) -> float:
    """Share of users with at least one relevant item in the top-k."""
    rel = _relevance_csr(relevance, recs)
    hit = (_gains(recs, rel, k) > 0).any(1).astype(np.float64)
    return _mean_over_users_with_relevance(hit, rel)


def mrr(recs: np.ndarray, relevance: Relevance, k: int | None = None) -> float:
    """Mean reciprocal rank of the first relevant item in the top-k (0 when none; ``k``
    defaults to the whole list)."""
    recs = np.asarray(recs)
    k = recs.shape[1] if k is None else k
    rel = _relevance_csr(relevance, recs)
    hit = _gains(recs, rel, k) > 0
    first = np.where(hit.any(1), hit.argmax(1) + 1, np.inf)
    return _mean_over_users_with_relevance(1.0 / first, rel)


# --- classification metrics -----------------------------------------------------------------------
def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney): P(score of a positive > score of a negative),
    ties counted as 1/2. ``nan`` when all labels are the same."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg = np.sort(s[~y])
    below = np.searchsorted(neg, s[y], side="left")  # negatives strictly below each positive
    tied = np.searchsorted(neg, s[y], side="right") - below
    return float((below.sum() + 0.5 * tied.sum()) / (n_pos * n_neg))


def auc_within_groups(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    """AUC over the (positive, negative) pairs that share a group only (e.g. a slate position):
    each group's :func:`auc` weighted by its pairs (positives × negatives). Scores logged by a
    ranker that put its favourites at the top positions correlate with position, and clicks do
    too (position bias): within a position both are examined alike, so this is the AUC of
    relevance alone. ``nan`` when no group has both labels."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    g = np.asarray(groups).ravel()
    if not (y.shape == s.shape == g.shape):
        raise ValueError(f"labels {y.shape}, scores {s.shape}, groups {g.shape} differ in shape")
    num = pairs = 0.0
    for value in np.unique(g):
        m = g == value
        n = float(y[m].sum()) * float((~y[m]).sum())
        if n > 0:
            num += auc(y[m], s[m]) * n
            pairs += n
    return num / pairs if pairs > 0 else float("nan")


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy, probabilities clipped to ``[eps, 1 - eps]``."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    if y.shape != p.shape:
        raise ValueError(f"labels {y.shape} and probs {p.shape} differ in shape")
    if len(y) == 0:
        return float("nan")
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


# --- beyond accuracy ---------------------------------------------------------------------------------
def catalog_coverage(recs: np.ndarray, n_items: int) -> float:
    """Share of the catalog that appears in at least one list."""
    items = np.unique(np.asarray(recs))
    return float((items >= 0).sum() / n_items)


def _item_probability(item_counts: np.ndarray, n_users: int) -> np.ndarray:
    """``p(i) = max(count_i, 1) / n_users``: the share of users who interacted with ``i``
    (an item nobody interacted with is treated as seen once, so its information is finite)."""
    counts = np.maximum(np.asarray(item_counts, dtype=np.float64), 1.0)
    return np.minimum(counts / max(n_users, 1), 1.0)


def novelty(recs: np.ndarray, item_counts: np.ndarray, n_users: int) -> float:
    """Mean self-information ``-log2 p(i)`` (bits) of the recommended items (padding ignored);
    ``item_counts[i]`` = training users who interacted with ``i``."""
    recs = np.asarray(recs)
    items = recs[recs >= 0]
    if len(items) == 0:
        return float("nan")
    return float(-np.log2(_item_probability(item_counts, n_users)[items]).mean())


def mean_popularity(recs: np.ndarray, item_counts: np.ndarray, n_users: int) -> float:
    """Popularity bias: mean ``p(i)`` (share of training users) of the recommended items."""
    recs = np.asarray(recs)
    items = recs[recs >= 0]
    if len(items) == 0:
        return float("nan")
    return float(_item_probability(item_counts, n_users)[items].mean())


# --- protocol -----------------------------------------------------------------------------------
def user_auc(scores: np.ndarray, positives: np.ndarray, candidates: np.ndarray) -> float:
    """AUC of one user's scores: positives vs the other candidates (boolean masks over items)."""
    return auc(positives[candidates], scores[candidates])


def unseen_relevance(train_csr: sp.csr_matrix, test_csr: sp.csr_matrix) -> sp.csr_matrix:
    """The relevant test entries ``(min(U_test, U_train), I)`` graded: ``test_csr``'s positive
    values minus the (user, item) pairs already in ``train_csr`` (those are never candidates).
    Rows beyond the training matrix (users a model never saw) are cut off."""
    train = sp.csr_matrix(train_csr)
    test = sp.csr_matrix(test_csr)
    if test.shape[1] != train.shape[1]:
        raise ValueError(f"test has {test.shape[1]} items, train has {train.shape[1]}")
    test = test[: min(test.shape[0], train.shape[0])]
    seen = (train[: test.shape[0]] != 0).astype(np.float32)
    relevant = test.multiply(test > 0).tocsr()
    relevant = (relevant - relevant.multiply(seen)).tocsr()
    relevant.eliminate_zeros()
    return relevant


def sample_test_users(
    train_csr: sp.csr_matrix, test_csr: sp.csr_matrix, max_users: int, seed: int = 0
) -> tuple[np.ndarray, int]:
    """``(users, n_test_users)``: the rows :func:`evaluate_model` scores by default (a relevant
    test item not seen in training), at most ``max_users`` of them — a seeded uniform sample,
    sorted — so every model of a comparison is scored on the same users."""
    relevant = unseen_relevance(train_csr, test_csr)
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    if len(users) > max_users:
        pick = np.random.default_rng(seed).choice(len(users), max_users, replace=False)
        return np.sort(users[pick]), len(users)
    return users, len(users)


def evaluate_model(
    model: Retriever,
    train_csr: sp.csr_matrix,
    test_csr: sp.csr_matrix,
    k: int = 10,
    users: np.ndarray | None = None,
    recall_ks: Sequence[int] = (100,),
    with_auc: bool = True,
) -> dict[str, float]:
    """Rank every item for each test user, training items excluded, and score the lists.

    Protocol: the model was trained on ``train_csr`` (history up to day D), ``test_csr`` holds
    what happened after (graded values; > 0 = relevant). For each user the candidates are all
    items not in their training row, so test items already seen in training are dropped from the
    relevance too. ``users`` defaults to every row with a test item; rows beyond the training
    matrix (users the model never saw) are skipped. Returns ``precision@k``, ``recall@k``,
    ``map@k``, ``ndcg@k``, ``hit_rate@k``, ``mrr@k``, ``recall@R`` for ``R`` in ``recall_ks``,
    ``auc`` (mean per-user AUC over all candidates), ``coverage@k``, ``novelty@k``,
    ``mean_popularity@k`` and ``n_users``.
    """
    train = sp.csr_matrix(train_csr)
    n_users, n_items = train.shape
    relevant = unseen_relevance(train, test_csr)
    if users is None:
        users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    users = np.asarray(users, dtype=np.int64)
    users = users[(users >= 0) & (users < relevant.shape[0])]
    rel = relevant[users]
    depth = max([k, *recall_ks])
    recs, _ = model.recommend(users, depth, exclude=train)
    out: dict[str, float] = {
        f"precision@{k}": precision_at_k(recs, rel, k),
        f"recall@{k}": recall_at_k(recs, rel, k),
        f"map@{k}": map_at_k(recs, rel, k),
        f"ndcg@{k}": ndcg_at_k(recs, rel, k),
        f"hit_rate@{k}": hit_rate_at_k(recs, rel, k),
        f"mrr@{k}": mrr(recs, rel, k),
    }
    for r in recall_ks:
        out[f"recall@{r}"] = recall_at_k(recs, rel, r)
    if with_auc:
        out["auc"] = _mean_user_auc(model, users, train, rel)
    item_counts = np.asarray((train != 0).sum(0)).ravel()
    top = recs[:, :k]
    out[f"coverage@{k}"] = catalog_coverage(top, n_items)
    out[f"novelty@{k}"] = novelty(top, item_counts, n_users)
    out[f"mean_popularity@{k}"] = mean_popularity(top, item_counts, n_users)
    out["n_users"] = float(len(users))
    log.info(
        "evaluated %s on %d users: %s",
        getattr(model, "name", type(model).__name__),
        len(users),
        ", ".join(f"{key}={val:.4f}" for key, val in out.items()),
    )
    return out


def _mean_user_auc(
    model: Retriever, users: np.ndarray, train: sp.csr_matrix, rel: sp.csr_matrix
) -> float:
    """Mean over ``users`` of :func:`user_auc` (positives: ``rel``'s row, negatives: the other
    items not in ``train``'s row), computed block by block without sorting: each positive is
    compared with its row's negatives (strictly below + half the ties, as :func:`auc`). At 100k
    items this costs ~positives x items comparisons instead of one sort per user."""
    values = []
    for start in range(0, len(users), 512):
        batch = users[start : start + 512]
        scores = np.asarray(model.score_all(batch))
        b = len(batch)
        seen = train[batch]
        pos = rel[start : start + b].tocsr()
        neg = np.ones(scores.shape, dtype=bool)
        neg[np.repeat(np.arange(b), np.diff(seen.indptr)), seen.indices] = False
        pos_rows = np.repeat(np.arange(b), np.diff(pos.indptr))
        neg[pos_rows, pos.indices] = False
        n_neg = neg.sum(1)
        wins = np.zeros(b)
        for lo in range(0, len(pos_rows), 256):  # bounded (256, I) temporaries
            r, i = pos_rows[lo : lo + 256], pos.indices[lo : lo + 256]
            s, mask = scores[r], neg[r]
            p = scores[r, i][:, None]
            below = ((s < p) & mask).sum(1) + 0.5 * ((s == p) & mask).sum(1)
            wins += np.bincount(r, weights=below, minlength=b)
        n_pos = np.diff(pos.indptr)
        ok = (n_pos > 0) & (n_neg > 0)
        values.append(wins[ok] / (n_pos[ok] * n_neg[ok].astype(np.float64)))
    vals = np.concatenate(values) if values else np.zeros(0)
    return float(vals.mean()) if len(vals) else float("nan")


def compare_models(
    models: Mapping[str, Retriever],
    train_csr: sp.csr_matrix,
    test_csr: sp.csr_matrix,
    k: int = 10,
    users: np.ndarray | None = None,
    recall_ks: Sequence[int] = (100,),
    with_auc: bool = True,
) -> pd.DataFrame:
    """:func:`evaluate_model` for each named model: one row per model, one column per metric."""
    rows = {
        name: evaluate_model(m, train_csr, test_csr, k, users, recall_ks, with_auc)
        for name, m in models.items()
    }
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "model"
    return df
