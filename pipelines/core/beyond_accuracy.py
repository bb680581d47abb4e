"""Beyond-accuracy metrics of recommendation lists: diversity, calibration, coverage, novelty.

Conventions of :mod:`pipelines.core.metrics`: ``recs`` is an int array ``(U, K)`` of item rows,
best first, padded with ``-1`` (padding is ignored everywhere); items are rows of the per-item
arrays (``categories`` ``(I,)``, ``vectors`` ``(I, d)``, ``item_counts`` ``(I,)``).

- **Intra-list diversity** (:func:`intra_list_diversity`): per list, the mean over its unordered
  pairs of items of their dissimilarity, ``1 - cosine(v_i, v_j)`` of item vectors or
  ``1[category_i != category_j]``; the mean over lists with at least two items. In ``[0, 1]``
  for categories (``[0, 2]`` for vectors): 0 = every pair alike.
- **Calibration** (Steck 2018, "Calibrated recommendations"): ``KL(p || q~)`` with ``p`` the
  user's category distribution (from their history), ``q`` the list's (each item weighs the
  same) and ``q~ = (1 - alpha) q + alpha p`` (``alpha`` :data:`CALIBRATION_ALPHA`, so that a
  category of ``p`` the list misses costs a finite amount); natural log (nats), 0 = the list
  has the user's proportions. :func:`calibration_kl` is one pair, :func:`mean_calibration_kl`
  the mean over users.
- **Catalog coverage** (:func:`coverage`): distinct recommended items / catalog size.
- **Novelty** (:func:`novelty`): mean over recommended items of ``-log2 share(i)`` (bits), the
  item's share of the interactions, add-one smoothed over the catalog
  (``(c_i + 1) / (sum c + I)``): higher = less popular items. The same definition as
  :func:`pipelines.report.catalog.catalog_health`'s ``novelty``.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pipelines.core.metrics import catalog_coverage

CALIBRATION_ALPHA = 0.01
"""Smoothing of the list's distribution toward the user's, ``q~ = (1 - a) q + a p`` (Steck)."""


def _lists(recs: np.ndarray) -> list[np.ndarray]:
    """The non-padding items of each row of ``recs``."""
    recs = np.atleast_2d(np.asarray(recs, dtype=np.int64))
    return [row[row >= 0] for row in recs]


def intra_list_diversity(
    recs: np.ndarray, categories: np.ndarray | None = None, vectors: np.ndarray | None = None
) -> float:
    """Mean pairwise dissimilarity within each list, averaged over lists of >= 2 items (``nan``
    when there are none). ``vectors`` ``(I, d)``: ``1 - cosine``; else ``categories`` ``(I,)``:
    ``1[different category]``."""
    if vectors is None and categories is None:
        raise ValueError("intra_list_diversity needs categories or vectors")
    unit = None
    if vectors is not None:
        v = np.asarray(vectors, dtype=np.float64)
        unit = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    cats = None if categories is None else np.asarray(categories)
    values = []
    for items in _lists(recs):
        n = len(items)
        if n < 2:
            continue
        if unit is not None:
            dis = 1.0 - unit[items] @ unit[items].T
        else:
            c = cats[items]  # type: ignore[index]
            dis = (c[:, None] != c[None, :]).astype(np.float64)
        values.append(float(dis[np.triu_indices(n, 1)].mean()))
    return float(np.mean(values)) if values else float("nan")


def category_distribution(
    categories: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """``(G,)`` shares of ``labels`` (``(G,)`` distinct) among ``categories`` ``(n,)``, each
    weighted by ``weights`` (``(n,)``, default 1); categories outside ``labels`` are dropped;
    all zeros when nothing is left."""
    cats = np.asarray(categories)
    w = np.ones(len(cats)) if weights is None else np.asarray(weights, dtype=np.float64)
    index = {str(g): j for j, g in enumerate(labels)}
    out = np.zeros(len(labels))
    for c, x in zip(cats, w, strict=True):
        j = index.get(str(c))
        if j is not None:
            out[j] += x
    total = out.sum()
    return out / total if total > 0 else out


def calibration_kl(p: np.ndarray, q: np.ndarray, alpha: float = CALIBRATION_ALPHA) -> float:
    """``KL(p || (1 - alpha) q + alpha p)`` in nats of two ``(G,)`` distributions over the same
    categories (terms with ``p = 0`` are 0)."""
    p = np.asarray(p, dtype=np.float64)
    q_s = (1.0 - alpha) * np.asarray(q, dtype=np.float64) + alpha * p
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / q_s[m])))


def mean_calibration_kl(
    recs: np.ndarray,
    categories: np.ndarray,
    user_dist: np.ndarray,
    labels: np.ndarray,
    alpha: float = CALIBRATION_ALPHA,
) -> float:
    """Mean over the rows of ``recs`` with at least one item of :func:`calibration_kl` between
    ``user_dist[r]`` (``(U, G)`` over ``labels``) and row ``r``'s category distribution
    (``categories`` ``(I,)`` the items'); ``nan`` when no row has an item."""
    values = [
        calibration_kl(user_dist[r], category_distribution(categories[items], labels), alpha)
        for r, items in enumerate(_lists(recs))
        if len(items)
    ]
    return float(np.mean(values)) if values else float("nan")


def coverage(recs: np.ndarray, n_items: int) -> float:
    """Distinct recommended items / ``n_items`` (the catalog's size)."""
    return catalog_coverage(recs, n_items)


def novelty(recs: np.ndarray, item_counts: np.ndarray) -> float:
    """Mean ``-log2((c_i + 1) / (sum c + I))`` (bits) over the recommended items, ``item_counts``
    ``(I,)`` the catalog's interactions per item; ``nan`` when nothing is recommended."""
    counts = np.asarray(item_counts, dtype=np.float64)
    items = np.concatenate(_lists(recs)) if len(recs) else np.zeros(0, np.int64)
    if len(items) == 0:
        return float("nan")
    share = (counts[items] + 1.0) / (counts.sum() + len(counts))
    return float(np.mean(-np.log2(share)))


def user_distributions(
    history: Mapping[str, Mapping[str, float]],
    users: list[str],
    labels: np.ndarray,
    fallback: np.ndarray,
) -> np.ndarray:
    """``(len(users), G)`` category distributions over ``labels``: each user's ``history``
    ``{user: {category: count}}`` normalized, ``fallback`` ``(G,)`` (e.g. the catalog's
    popularity distribution) for users without one."""
    out = np.tile(np.asarray(fallback, dtype=np.float64), (len(users), 1))
    for r, u in enumerate(users):
        h = history.get(u)
        if h:
            d = category_distribution(np.asarray(list(h)), labels, np.asarray(list(h.values())))
            if d.sum() > 0:
                out[r] = d
    return out
