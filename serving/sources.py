"""Candidate sources of the retrieve stage, and their merge into one candidate list.

Each source offers up to its quota (``ServingConfig.source_quotas``) of item ids for one user,
best first, with its own scores; the seen and excluded items (``drop``) are never offered:

- ``two_tower``: the bundle's FAISS index searched with the user's two-tower vector (known users)
  or the user-tower vector (users outside the vocabulary, ``new_users = "user_tower"``).
- ``mf``: the bundle's matrix factorization (:class:`MFSource`), exact inner product over every
  item it knows (recall 1 by construction; the catalog is scored in one ``(I, F)`` product).
- ``covisit``: item-to-item neighbours (:class:`CovisitSource`) of the items the user engaged
  with: cosine similarity of the items' user columns, summed over the user's items — those of
  the training window and, with ``online_sequence``, those of the user's online sequence read
  from Redis (items engaged with since the bundle was trained too), the most recent weighted
  most (:func:`recency_history`).
- ``trending``: the item table's trending order (context categories first).
- ``bpr``, ``ncf``, ``gru4rec``, ``sasrec``, ``bert4rec``, ``dssm`` (:data:`MODEL_SOURCES`): that
  retriever's artifact trained through the bundle's logical date (:class:`ModelSource`), its
  ``score_all`` over every item it knows, for the users it knows (sequential models: the state
  after the user's training sequence).
- ``catalog``: a sample of the whole item table, weighted towards the least shown items
  (:func:`catalog_sample`), drawn from a generator seeded by the user and the bundle: it keeps
  the catalog open (the other sources all favour the same popular items) while the candidate set
  stays a function of the request, so the logged propensities remain exact.

:func:`merge` interleaves the lists by quota — list ``s`` puts its ``r``-th item at key
``(r + 1) / quota_s`` and the keys are sorted (ties by source order), a duplicate kept at its
first place — so a source with twice the quota offers twice as many of the top candidates.
The merged list's retrieval score is ``1 / (1 + merged rank)``: sources' raw scores are not on
one scale; the ranker (when the bundle has one) replaces them, and the retrieval order stays
what serves when it has none.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

MODEL_SOURCES = ("bpr", "ncf", "gru4rec", "sasrec", "bert4rec", "dssm")
"""Retrievers that serve as candidate sources under their own name (:class:`ModelSource`) when
an artifact of theirs was trained through the bundle's logical date (``recloop train --model M
--date D``, or the daily DAG's ``train_extra`` with ``RECLOOP_TRAIN_EXTRA``)."""
SEQUENTIAL_SOURCES = ("gru4rec", "sasrec", "bert4rec")
"""Model sources that can follow the user's online sequence (``ModelSource.offer``'s ``recent``)."""
SOURCES = ("two_tower", "mf", "covisit", "trending", "catalog", *MODEL_SOURCES)
EXPLORE_ONLY = ("catalog",)
"""Sources whose candidates only the explore slot may show (``serving.pipeline``): a ranker
trained on what was shown extrapolates to never-shown items."""


@dataclass
class SourceList:
    """One source's offer: ``ids`` (best first) and their ``scores`` ``(n,)`` float64."""

    name: str
    ids: list[str]
    scores: np.ndarray


@dataclass
class Merged:
    """The merged candidates: ``ids`` (``C``), ``scores`` ``(C,)`` = ``1 / (1 + rank)``,
    ``sources`` (the source each was first offered by) and ``source_scores`` ``(C,)`` (that
    source's own score)."""

    ids: list[str]
    scores: np.ndarray
    sources: list[str]
    source_scores: np.ndarray


def merge(lists: list[SourceList], quotas: dict[str, int], n: int) -> Merged:
    """Interleave ``lists`` by ``quotas`` (see the module docstring); at most ``n`` ids.

    The keys ``(r + 1) / q`` of every offered item are sorted at once (``np.lexsort``: ties by
    source order, then rank); one pass over that order keeps each item's first place."""
    keys, srcs, ranks, ids, raws = [], [], [], [], []
    for s, lst in enumerate(lists):
        q = max(int(quotas.get(lst.name, len(lst.ids))), 1)
        m = min(len(lst.ids), q)
        r = np.arange(m)
        keys.append((r + 1) / q)
        srcs.append(np.full(m, s))
        ranks.append(r)
        ids.extend(lst.ids[:m])
        raws.append(np.asarray(lst.scores, dtype=np.float64)[:m])
        if len(raws[-1]) != m:  # the gather below would shift the later sources' scores
            raise ValueError(f"source {lst.name}: {len(lst.ids)} ids but {len(lst.scores)} scores")
    if not ids:
        return Merged([], np.zeros(0), [], np.zeros(0))
    src, rank = np.concatenate(srcs), np.concatenate(ranks)
    taken: set[str] = set()
    kept: list[int] = []
    for i in np.lexsort((rank, src, np.concatenate(keys))).tolist():
        if ids[i] not in taken:
            taken.add(ids[i])
            kept.append(i)
            if len(kept) == n:
                break
    at = np.asarray(kept, dtype=np.int64)
    names = [lst.name for lst in lists]
    scores = 1.0 / (1.0 + np.arange(len(kept), dtype=np.float64))
    sources = [names[s] for s in src[at].tolist()]
    return Merged([ids[i] for i in kept], scores, sources, np.concatenate(raws)[at])


CATALOG_ROUNDS = 4
"""Batches of with-replacement draws :func:`catalog_sample` tries before it finishes the sample
with ``Generator.choice`` over the items not yet drawn (concentrated weights, ``n`` close to
``I``)."""


def catalog_cumulative(impressions: np.ndarray) -> np.ndarray:
    """Cumulative normalised catalog weights ``(I,)`` float64 (last = 1) of the weights ``1 / (1 +
    impressions)`` (``impressions`` ``(I,)``, e.g. the item table's 28-day counts, negatives as 0);
    computed once per item table (:class:`serving.bundle.ItemTable`), read by
    :func:`catalog_sample`. Uniform when the weights do not sum to a positive finite number."""
    w = 1.0 / (1.0 + np.maximum(np.asarray(impressions, dtype=np.float64), 0.0))
    cum = np.cumsum(w)
    if len(cum) and not (np.isfinite(cum[-1]) and cum[-1] > 0):
        cum = np.arange(1, len(cum) + 1, dtype=np.float64)
    return cum / cum[-1] if len(cum) else cum


def catalog_sample(
    ids: np.ndarray, cum: np.ndarray, key: str, n: int, drop: set[str]
) -> SourceList:
    """Up to ``n`` of ``ids`` ``(I,)`` drawn without replacement with the weights of ``cum``
    (:func:`catalog_cumulative`: ``1 / (1 + impressions)``), ``drop`` removed, by a generator
    seeded from ``key`` (user id and bundle): the same request context gets the same sample.
    Scores: the draw order (``1 / (1 + r)``).

    Draws with replacement (``searchsorted`` of uniforms in ``cum``, ``O(log I)`` each) and keeps
    each item's first draw: the first occurrences of a with-replacement stream are exactly a
    sequential draw without replacement (each new item ∝ its weight among those not yet drawn).
    After :data:`CATALOG_ROUNDS` batches the rest is drawn exactly by ``choice`` over the items
    not yet drawn, which continues the same process (given the prefix, the next item is ∝ weight
    among the rest whatever the repeats were)."""
    if n <= 0 or len(ids) == 0:
        return SourceList("catalog", [], np.zeros(0))
    seed = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    rng = np.random.default_rng(seed)
    taken: set[int] = set()
    out: list[str] = []
    for _ in range(CATALOG_ROUNDS):
        draws = np.searchsorted(cum, rng.random(2 * (n - len(out)) + 16), side="right")
        for j in draws.tolist():
            if j not in taken:
                taken.add(j)
                if (item := str(ids[j])) not in drop:
                    out.append(item)
                    if len(out) == n:
                        break
        if len(out) == n:
            break
    if len(out) < n:
        out += _catalog_rest(ids, cum, rng, taken, n - len(out), drop)
    return SourceList("catalog", out, 1.0 / (1.0 + np.arange(len(out), dtype=np.float64)))


def _catalog_rest(
    ids: np.ndarray,
    cum: np.ndarray,
    rng: np.random.Generator,
    taken: set[int],
    k: int,
    drop: set[str],
) -> list[str]:
    """Up to ``k`` more items of :func:`catalog_sample`: ``choice`` without replacement over the
    items not in ``taken``, weights from ``cum``, ``drop`` removed (the exact, ``O(I)`` path)."""
    p = np.diff(cum, prepend=0.0)
    p[np.fromiter(taken, dtype=np.int64, count=len(taken))] = 0.0
    m = min(k + len(drop), int(np.count_nonzero(p)))
    if m <= 0:
        return []
    rows = rng.choice(len(ids), size=m, replace=False, p=p / p.sum())
    return [str(ids[j]) for j in rows if str(ids[j]) not in drop][:k]


def top_excluding(
    scores: np.ndarray, ids: np.ndarray, n: int, drop: set[str]
) -> tuple[list[str], np.ndarray]:
    """The ``n`` best of ``scores`` ``(I,)`` over ``ids`` ``(I,)`` str, ``drop`` removed."""
    m = min(n + len(drop), len(scores))
    if m <= 0:
        return [], np.zeros(0)
    top = np.argpartition(-scores, m - 1)[:m] if m < len(scores) else np.arange(len(scores))
    top = top[np.argsort(-scores[top], kind="stable")]
    if drop:
        top = top[~np.isin(ids[top], list(drop))]
    top = top[:n]
    return np.asarray(ids[top], dtype=str).tolist(), np.asarray(scores[top], dtype=np.float64)


@dataclass
class MFSource:
    """A bundle's matrix factorization, ready to score: ``user_vecs`` ``(U, F)`` and
    ``item_vecs`` ``(I, F)`` float32 (inner product = the model's score, popularity prior
    included), with their vocabularies."""

    users: object  # pipelines.core.vocab.Vocab
    item_ids: np.ndarray  # (I,) str
    user_vecs: np.ndarray
    item_vecs: np.ndarray

    @classmethod
    def from_model(cls, model: object, users: object, items: object) -> MFSource:
        return cls(
            users,
            np.asarray(items.ids, dtype=str),  # type: ignore[attr-defined]
            np.ascontiguousarray(model.user_embeddings(), dtype=np.float32),  # type: ignore[attr-defined]
            np.ascontiguousarray(model.item_embeddings(), dtype=np.float32),  # type: ignore[attr-defined]
        )

    def knows(self, user_id: str) -> bool:
        return int(self.users.encode([user_id])[0]) >= 0  # type: ignore[attr-defined]

    def offer(self, user_id: str, n: int, drop: set[str]) -> SourceList:
        row = int(self.users.encode([user_id])[0])  # type: ignore[attr-defined]
        if row < 0 or n <= 0:
            return SourceList("mf", [], np.zeros(0))
        scores = self.item_vecs @ self.user_vecs[row]
        ids, s = top_excluding(scores, self.item_ids, n, drop)
        return SourceList("mf", ids, s)


@dataclass
class ModelSource:
    """Any :class:`models.base.Retriever` as a candidate source named ``name``: ``model`` scores
    every item of ``item_ids`` ``(I,)`` for a user of ``users`` (``score_all``, one row)."""

    name: str
    model: object
    users: object  # pipelines.core.vocab.Vocab
    item_ids: np.ndarray  # (I,) str
    _col: dict[str, int] | None = field(default=None, init=False, repr=False)
    _item_vecs: np.ndarray | None = field(default=None, init=False, repr=False)

    def knows(self, user_id: str) -> bool:
        return int(self.users.encode([user_id])[0]) >= 0  # type: ignore[attr-defined]

    def offer(
        self, user_id: str, n: int, drop: set[str], recent: list[str] | None = None
    ) -> SourceList:
        """The top ``n`` for the user; a sequential model (:data:`SEQUENTIAL_SOURCES`) given the
        user's ``recent`` item ids (oldest first) scores from its state after those items
        (``encode``, with the user's attribute vectors when the model has them and knows the
        user), so it also serves users it was not trained on."""
        model: Any = self.model
        if n <= 0:
            return SourceList(self.name, [], np.zeros(0))
        cols = self._columns(recent) if recent and self.name in SEQUENTIAL_SOURCES else []
        if cols:
            if self._item_vecs is None:  # (I, D), read from the model once
                self._item_vecs = np.asarray(model.item_embeddings(), dtype=np.float32)
            row = int(self.users.encode([user_id])[0])  # type: ignore[attr-defined]
            users = [row] if row >= 0 and getattr(model, "user_group_sizes", ()) else None
            state = model.encode([cols], users=users) if users else model.encode([cols])
            scores = (self._item_vecs @ state[0]).astype(np.float64)
        else:
            row = int(self.users.encode([user_id])[0])  # type: ignore[attr-defined]
            if row < 0:
                return SourceList(self.name, [], np.zeros(0))
            scores = np.asarray(model.score_all(np.array([row]))[0], dtype=np.float64)
        ids, s = top_excluding(scores, self.item_ids, n, drop)
        return SourceList(self.name, ids, s)

    def _columns(self, item_ids: list[str]) -> list[int]:
        """The model's item columns of ``item_ids`` (unknown ids left out), in order."""
        if self._col is None:
            self._col = {str(i): j for j, i in enumerate(self.item_ids)}
        return [self._col[i] for i in item_ids if i in self._col]


@dataclass
class CovisitSource:
    """Item-to-item neighbours from a training matrix: ``neighbours`` ``(I, K)`` int32 item
    columns (-1 pads) and their cosine ``sims`` ``(I, K)`` float32, over ``item_ids``."""

    item_ids: np.ndarray  # (I,) str
    neighbours: np.ndarray
    sims: np.ndarray

    @classmethod
    def from_matrix(cls, seen: sp.csr_matrix, item_ids: np.ndarray, k: int = 50) -> CovisitSource:
        """Neighbours of every item in ``seen`` ``(U, I)`` (binary use): cosine of the items'
        user columns, the item itself left out, the ``k`` largest kept."""
        x = (seen > 0).astype(np.float32).tocsc()
        norms = np.sqrt(np.asarray(x.power(2).sum(axis=0)).ravel())
        norms[norms == 0] = 1.0
        co = (x.T @ x).toarray()
        co /= norms[:, None] * norms[None, :]
        np.fill_diagonal(co, 0.0)
        n = co.shape[0]
        k = min(k, max(n - 1, 1))
        nb = np.argpartition(-co, k - 1, axis=1)[:, :k] if n > k else np.tile(np.arange(n), (n, 1))
        sims = np.take_along_axis(co, nb, 1)
        nb = np.where(sims > 0, nb, -1).astype(np.int32)
        return cls(np.asarray(item_ids, dtype=str), nb, sims.astype(np.float32))

    def offer(
        self, history: np.ndarray, n: int, drop: set[str], weights: np.ndarray | None = None
    ) -> SourceList:
        """Neighbours of the user's items (``history``: item columns) by summed similarity, each
        history item's similarities times its weight (``weights`` ``(H,)``; None: all 1)."""
        if len(history) == 0 or n <= 0:
            return SourceList("covisit", [], np.zeros(0))
        nb = self.neighbours[history].ravel()
        sims = self.sims[history]
        if weights is not None:
            sims = sims * np.asarray(weights, dtype=np.float32)[:, None]
        sims = sims.ravel()
        keep = nb >= 0
        scores = np.bincount(nb[keep], sims[keep], minlength=len(self.item_ids))
        scores[history] = 0.0
        live = np.flatnonzero(scores > 0)
        ids, s = top_excluding(scores[live], self.item_ids[live], n, drop)
        return SourceList("covisit", ids, s)


def recency_history(
    trained: np.ndarray, recent: np.ndarray, half_life: float, boost: float
) -> tuple[np.ndarray, np.ndarray]:
    """The ``covisit`` history of a user: the item columns of their training history
    ``trained`` (weight 1) and of their online sequence ``recent`` (oldest first; the ``r``-th
    newest weighs ``1 + boost * 0.5 ** (r / half_life)``, so the last item weighs ``1 + boost``);
    an item in both takes its sequence weight. Returns ``(columns (H,) int64, weights (H,)
    float32)``, columns unique."""
    recent = np.asarray(recent, dtype=np.int64)
    m = len(recent)
    w_recent = 1.0 + boost * 0.5 ** (np.arange(m - 1, -1, -1, dtype=np.float64) / half_life)
    cols = np.concatenate([np.asarray(trained, dtype=np.int64), recent])
    weights = np.concatenate([np.ones(len(trained)), w_recent])
    best: dict[int, float] = {}
    for c, w in zip(cols.tolist(), weights.tolist(), strict=True):
        best[c] = max(w, best.get(c, 0.0))
    out = np.fromiter(best.keys(), dtype=np.int64, count=len(best))
    return out, np.fromiter(best.values(), dtype=np.float32, count=len(best))
