"""Baselines every report shows beside the models: most popular, item-based and user-based CF.

Memory-based CF follows the reference chapter (section 12.1):

* user-based: ``r_ui = mean_u + sum_{v in N(u)} sim(u,v) (r_vi - mean_v) / sum_{v in N(u)} |sim(u,v)|``
* item-based: ``r_ui = sum_{j in N(i)} sim(i,j) r_uj / sum_{j in N(i)} |sim(i,j)|`` (the
  defaults of :class:`ItemKNN`; its settings for top-N ranking on implicit data: shrinkage,
  the history's neighbours voting, plain sums, a popularity prior)

``N(.)`` is the top-``k`` most similar users/items (largest similarity, self excluded, zero
similarities dropped), kept as a sparse ``scipy`` CSR neighbour matrix so memory is
``O(n * k)``; similarities are computed in dense row blocks of bounded size.

Convention (the platform's data is implicit feedback): the matrix is treated as **complete, with
0 for unobserved cells**. So ``mean_u`` is the mean over all items, Pearson is the correlation of
whole rows/columns (for binary data: the phi coefficient), and cosine uses whole vectors. On a
binary matrix the "mean over observed entries" convention would make every centred value zero.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm import tqdm

from models.base import Retriever, register

log = logging.getLogger(__name__)

SIMILARITIES = ("cosine", "pearson")
#: dense similarity cells computed at once (bounds memory to ~32 MB)
_BLOCK_CELLS = 1 << 22


def window_item_weights(
    items: np.ndarray,
    timestamps: np.ndarray,
    end: np.datetime64,
    window_days: int,
    n_items: int,
) -> np.ndarray:
    """Events per item in ``[end - window_days, end)``: ``(N,)`` item indices and timestamps →
    float32 ``(I,)``, the ``item_weights`` for :meth:`MostPopular.fit`."""
    ts = np.asarray(timestamps).astype("datetime64[ns]")
    end = np.datetime64(end, "ns")
    start = end - np.timedelta64(int(window_days), "D")
    keep = (ts >= start) & (ts < end)
    return np.bincount(np.asarray(items)[keep], minlength=n_items).astype(np.float32)


def _as_csr(m: sp.spmatrix) -> sp.csr_matrix:
    out = sp.csr_matrix(m, dtype=np.float32)
    out.sum_duplicates()
    out.eliminate_zeros()
    return out


def _csr_state(prefix: str, m: sp.csr_matrix) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}_indptr": torch.from_numpy(m.indptr.astype(np.int64)),
        f"{prefix}_indices": torch.from_numpy(m.indices.astype(np.int64)),
        f"{prefix}_values": torch.from_numpy(m.data.astype(np.float32)),
    }


def _csr_from_state(
    state: dict[str, torch.Tensor], prefix: str, shape: tuple[int, int]
) -> sp.csr_matrix:
    try:
        indptr = state[f"{prefix}_indptr"].numpy()
        indices = state[f"{prefix}_indices"].numpy()
        values = state[f"{prefix}_values"].numpy()
    except KeyError as exc:
        raise ValueError(f"weights: missing tensor {exc.args[0]!r}") from exc
    if len(indptr) != shape[0] + 1 or len(indices) != len(values) or indptr[-1] != len(values):
        raise ValueError(f"weights: tensors {prefix}_* do not form a {shape} CSR matrix")
    if len(indices) and (indices.min() < 0 or indices.max() >= shape[1]):
        raise ValueError(f"weights: {prefix}_indices out of range for shape {shape}")
    return sp.csr_matrix((values, indices, indptr), shape=shape)


def topk_similarity(
    m: sp.csr_matrix,
    k: int,
    similarity: str = "cosine",
    progress: bool = False,
    columns: np.ndarray | None = None,
    shrinkage: float = 0.0,
) -> sp.csr_matrix:
    """Top-``k`` neighbours between the **columns** of ``m`` ``(R, C)``: CSR ``(C, C)`` whose row
    ``c`` holds ``sim(c, d)`` for ``c``'s ``k`` most similar columns ``d != c`` (nonzero only).
    ``columns``: only these rows are computed (the others stay empty; their neighbours are
    still searched among all columns) — a forward evaluation needs its sampled users only.

    ``shrinkage`` ``lambda >= 0`` (0: none) shrinks every similarity before the top-``k``:
    ``sim = dot(x_c, x_d) / (|x_c| |x_d| + lambda)`` (``x`` the column, centred for Pearson), so
    on binary data ``co / (sqrt(n_c n_d) + lambda)`` with ``co`` the rows the two share: a pair
    that co-occurs once between rare columns no longer scores a perfect 1."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity={similarity!r}: expected one of {SIMILARITIES}")
    if not shrinkage >= 0:
        raise ValueError(f"shrinkage must be >= 0, got {shrinkage}")
    m = _as_csr(m)
    n_rows, n = m.shape
    csc = m.tocsc()
    sq = np.asarray(m.multiply(m).sum(0)).ravel().astype(np.float64)
    wanted = np.arange(n) if columns is None else np.unique(np.asarray(columns, dtype=np.int64))
    if similarity == "cosine" and (m.nnz == 0 or m.data.min() >= 0):
        return _topk_cosine_sparse(csc, sq, k, progress, wanted, shrinkage)
    if similarity == "cosine":
        mean = np.zeros(n)
        std = np.sqrt(sq)
    else:
        mean = np.asarray(m.sum(0)).ravel() / max(n_rows, 1)
        std = np.sqrt(np.maximum(sq / max(n_rows, 1) - mean**2, 0.0))
    inv = np.where(std > 1e-12, 1.0 / np.where(std > 1e-12, std, 1.0), 0.0)
    k = max(0, min(k, n - 1))
    block = max(1, _BLOCK_CELLS // max(n, 1))
    rows_out, cols_out, vals_out = [], [], []
    for start in tqdm(
        range(0, len(wanted), block), desc=f"{similarity} top-{k}", disable=not progress
    ):
        cols = wanted[start : start + block]
        dots = (csc[:, cols].T @ csc).toarray().astype(np.float64)  # (b, n)
        if similarity == "cosine":
            sims = dots * inv[cols, None] * inv[None, :]
        else:
            cov = dots / max(n_rows, 1) - mean[cols, None] * mean[None, :]
            sims = cov * inv[cols, None] * inv[None, :]
        if shrinkage:
            # |x_c| |x_d| in sums (not means): std * sqrt(rows) for Pearson
            scale = np.sqrt(sq) if similarity == "cosine" else std * np.sqrt(max(n_rows, 1))
            den = scale[cols, None] * scale[None, :]
            sims = sims * den / (den + shrinkage)
        local = np.arange(len(cols))
        sims[local, cols] = -np.inf  # never one's own neighbour
        if k == 0:
            continue
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(sims, top, axis=1)
        keep = np.isfinite(vals) & (vals != 0)
        rows_out.append(np.broadcast_to(cols[:, None], top.shape)[keep])
        cols_out.append(top[keep])
        vals_out.append(vals[keep])
    return _square_csr(rows_out, cols_out, vals_out, n)


_SPARSE_BLOCK = 1024
"""Columns per block of :func:`_topk_cosine_sparse` (its co-occurrence rows stay sparse)."""


def _topk_cosine_sparse(
    csc: sp.csc_matrix,
    sq: np.ndarray,
    k: int,
    progress: bool,
    wanted: np.ndarray,
    shrinkage: float = 0.0,
) -> sp.csr_matrix:
    """:func:`topk_similarity`'s cosine for non-negative ``csc`` ``(R, C)`` (``sq``: column
    sums of squares ``(C,)``) without dense rows: two columns that never co-occur have
    similarity 0, which the result leaves out anyway, so each block's co-occurrence product
    stays sparse and each row keeps its ``k`` largest nonzero similarities (ties by the lower
    column). The same values as the dense path (same products, same order of operations); at
    100k columns a block costs its co-occurrences, not ``block x C`` cells. Rows of ``wanted``
    (sorted column indices) only; ``shrinkage``: :func:`topk_similarity`'s."""
    n = csc.shape[1]
    norm = np.sqrt(sq)
    inv = np.where(norm > 1e-12, 1.0 / np.where(norm > 1e-12, norm, 1.0), 0.0)
    k = max(0, min(k, n - 1))
    rows_out, cols_out, vals_out = [], [], []
    starts = range(0, len(wanted), _SPARSE_BLOCK) if k else range(0)
    for start in tqdm(starts, desc=f"cosine top-{k} (sparse)", disable=not progress):
        block = wanted[start : start + _SPARSE_BLOCK]
        prod = (csc[:, block].T @ csc).tocsr()  # (b, C) co-occurrence dot products
        rows = block[np.repeat(np.arange(len(block)), np.diff(prod.indptr))]
        cols = prod.indices.astype(np.int64)
        if shrinkage:
            vals = prod.data.astype(np.float64) / (norm[rows] * norm[cols] + shrinkage)
        else:
            vals = prod.data.astype(np.float64) * inv[rows] * inv[cols]
        keep = (cols != rows) & np.isfinite(vals) & (vals != 0)
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
        order = np.lexsort((cols, -vals, rows))  # per row: largest first, ties by column
        rows, cols, vals = rows[order], cols[order], vals[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
        top = rank < k
        rows_out.append(rows[top])
        cols_out.append(cols[top])
        vals_out.append(vals[top])
    return _square_csr(rows_out, cols_out, vals_out, n)


def _square_csr(
    rows: list[np.ndarray], cols: list[np.ndarray], vals: list[np.ndarray], n: int
) -> sp.csr_matrix:
    """The ``(n, n)`` float32 CSR (indices sorted) of the blocks' ``(row, col, value)`` pieces."""
    if rows:
        r, c, v = np.concatenate(rows), np.concatenate(cols), np.concatenate(vals)
    else:
        r = c = np.zeros(0, dtype=np.int64)
        v = np.zeros(0)
    out = sp.csr_matrix((v.astype(np.float32), (r, c)), shape=(n, n))
    out.sort_indices()
    return out


def _abs_row_sums(s: sp.csr_matrix) -> np.ndarray:
    return np.asarray(abs(s).sum(1)).ravel().astype(np.float32)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0).astype(np.float32)


@register
class MostPopular(Retriever):
    """Everyone gets the same ranking: items by popularity (training users per item, or the
    ``item_weights`` given to :meth:`fit`, e.g. events in the last ``window_days``)."""

    name = "popular"

    def __init__(self, window_days: int | None = None, n_users: int = 0, n_items: int = 0) -> None:
        self.window_days = window_days
        self.n_users = int(n_users)
        self.n_items = int(n_items)
        self.popularity = np.zeros(self.n_items, dtype=np.float32)

    def fit(
        self, interactions: sp.csr_matrix, item_weights: np.ndarray | None = None, **kwargs: Any
    ) -> MostPopular:
        """``item_weights`` ``(I,)``: popularity to use (e.g. from :func:`window_item_weights`);
        default: number of users with a nonzero in each column."""
        m = _as_csr(interactions)
        self.n_users, self.n_items = m.shape
        if item_weights is None:
            pop = np.asarray((m != 0).sum(0)).ravel()
        else:
            pop = np.asarray(item_weights, dtype=np.float32).ravel()
            if pop.shape != (self.n_items,):
                raise ValueError(f"item_weights has shape {pop.shape}, expected ({self.n_items},)")
        self.popularity = pop.astype(np.float32)
        log.info(
            "MostPopular fit: %d items, top item weight %.1f", self.n_items, pop.max(initial=0)
        )
        return self

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.popularity[np.asarray(items, dtype=np.int64)].astype(np.float32)

    def score_all(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.popularity, (len(users), self.n_items)).astype(np.float32)

    def config(self) -> dict[str, Any]:
        return {"window_days": self.window_days, "n_users": self.n_users, "n_items": self.n_items}

    @classmethod
    def from_config(cls, cfg: dict[str, Any], device: str | None = None) -> MostPopular:
        return cls(**cfg)

    def state(self) -> dict[str, torch.Tensor]:
        return {"popularity": torch.from_numpy(self.popularity)}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        pop = state.get("popularity")
        if pop is None or tuple(pop.shape) != (self.n_items,):
            raise ValueError(
                f"weights: tensor 'popularity' missing or not of shape ({self.n_items},)"
            )
        self.popularity = pop.numpy().astype(np.float32)


class _KNN(Retriever):
    """Shared parts of the neighbourhood models: config, the training matrix, persistence."""

    def __init__(
        self,
        k: int = 50,
        similarity: str = "cosine",
        n_users: int = 0,
        n_items: int = 0,
    ) -> None:
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity={similarity!r}: expected one of {SIMILARITIES}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = int(k)
        self.similarity = similarity
        self.n_users = int(n_users)
        self.n_items = int(n_items)
        self.train = sp.csr_matrix((self.n_users, self.n_items), dtype=np.float32)
        n = self._n_neighbours_space()
        self.neighbours = sp.csr_matrix((n, n), dtype=np.float32)
        self.norm = np.zeros(n, dtype=np.float32)

    def _n_neighbours_space(self) -> int:
        raise NotImplementedError

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        uniq, inv = np.unique(users, return_inverse=True)
        full = self.score_all(uniq)
        return full[inv, items].astype(np.float32)

    def config(self) -> dict[str, Any]:
        return {
            "k": self.k,
            "similarity": self.similarity,
            "n_users": self.n_users,
            "n_items": self.n_items,
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any], device: str | None = None) -> _KNN:
        return cls(**cfg)

    def state(self) -> dict[str, torch.Tensor]:
        return {
            **_csr_state("train", self.train),
            **_csr_state("neighbours", self.neighbours),
            "norm": torch.from_numpy(self.norm),
        }

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        n = self._n_neighbours_space()
        self.train = _csr_from_state(state, "train", (self.n_users, self.n_items))
        self.neighbours = _csr_from_state(state, "neighbours", (n, n))
        norm = state.get("norm")
        if norm is None or tuple(norm.shape) != (n,):
            raise ValueError(f"weights: tensor 'norm' missing or not of shape ({n},)")
        self.norm = norm.numpy().astype(np.float32)
        self._after_load()

    def _after_load(self) -> None:
        pass


#: where an item's neighbours come from (:class:`ItemKNN` ``neighbours_of``)
NEIGHBOURS_OF = ("candidate", "history")
#: what an item's score is divided by (:class:`ItemKNN` ``normalize``)
NORMALIZE = ("neighbours", "rated", "none")
#: :class:`ItemKNN` settings added after models were first saved, for configs that lack them:
#: the reference chapter's formula
ITEMKNN_LEGACY: dict[str, Any] = {
    "shrinkage": 0.0,
    "neighbours_of": "candidate",
    "normalize": "neighbours",
    "popularity_weight": 0.0,
}


@register
class ItemKNN(_KNN):
    """Item-based CF. With the defaults (``ITEMKNN_LEGACY``) the reference chapter's formula for
    rating prediction: ``r_ui = sum_{j in N(i)} sim(i,j) r_uj / sum_{j in N(i)} |sim(i,j)|``,
    ``N(i)`` the ``k`` items most similar to the candidate ``i``.

    For top-N ranking on implicit data (Deshpande & Karypis 2004) four settings change it:

    - ``shrinkage`` ``lambda``: ``sim = co / (sqrt(n_i n_j) + lambda)`` (:func:`topk_similarity`).
    - ``neighbours_of``: ``"candidate"`` (``N(i)``, above) or ``"history"``: sum over the user's
      items ``j`` that have ``i`` among *their* ``k`` most similar items, ``sum_{j: i in N(j)}
      sim(j,i) r_uj`` — an item few others point to collects few votes.
    - ``normalize``: ``"neighbours"`` (divide by the ``|sim|`` of all the neighbours, above),
      ``"rated"`` (only of those the user rated: a weighted mean of the user's values) or
      ``"none"`` (the plain sum: an item similar to many of the user's items outranks one
      similar to a single item).
    - ``popularity_weight`` ``w``: ``+ w * log(1 + n_i)``, ``n_i`` the item's count (users per
      item in the training matrix, or ``fit(item_counts=)``, e.g. the last days' positives).

    Saved configs without these keys load with the legacy values: the formula above."""

    name = "itemknn"

    def __init__(
        self,
        k: int = 50,
        similarity: str = "cosine",
        n_users: int = 0,
        n_items: int = 0,
        shrinkage: float = 0.0,
        neighbours_of: str = "candidate",
        normalize: str = "neighbours",
        popularity_weight: float = 0.0,
    ) -> None:
        super().__init__(k, similarity, n_users, n_items)
        if neighbours_of not in NEIGHBOURS_OF:
            raise ValueError(f"neighbours_of={neighbours_of!r}: expected one of {NEIGHBOURS_OF}")
        if normalize not in NORMALIZE:
            raise ValueError(f"normalize={normalize!r}: expected one of {NORMALIZE}")
        if not shrinkage >= 0 or not popularity_weight >= 0:
            raise ValueError(
                f"shrinkage={shrinkage}, popularity_weight={popularity_weight}: expected >= 0"
            )
        self.shrinkage = float(shrinkage)
        self.neighbours_of = neighbours_of
        self.normalize = normalize
        self.popularity_weight = float(popularity_weight)
        self.item_counts = np.zeros(self.n_items, dtype=np.float32)
        self._after_load()

    def _n_neighbours_space(self) -> int:
        return self.n_items

    def fit(
        self,
        interactions: sp.csr_matrix,
        progress: bool = False,
        item_counts: np.ndarray | None = None,
        **kwargs: Any,
    ) -> ItemKNN:
        """``item_counts`` ``(I,)``: the popularity prior's counts (default: users per item)."""
        self.train = _as_csr(interactions)
        self.n_users, self.n_items = self.train.shape
        self.neighbours = topk_similarity(
            self.train, self.k, self.similarity, progress, shrinkage=self.shrinkage
        )
        self._after_load()
        self.norm = _abs_row_sums(self.votes)
        if item_counts is None:
            counts = np.asarray((self.train != 0).sum(0)).ravel()
        else:
            counts = np.asarray(item_counts, dtype=np.float64).ravel()
            if counts.shape != (self.n_items,) or not np.all(counts >= 0):
                raise ValueError(f"item_counts: expected ({self.n_items},) non-negative counts")
        self.item_counts = counts.astype(np.float32)
        log.info(
            "ItemKNN fit: %d items, %s top-%d (shrinkage %g), %d neighbour links",
            self.n_items, self.similarity, self.k, self.shrinkage, self.neighbours.nnz,
        )  # fmt: skip
        return self

    def _after_load(self) -> None:
        """``votes`` ``(I, I)`` CSR, ``V[i, j]``: what the user's value on ``j`` adds to item
        ``i``'s score: ``sim(i, j)`` for ``j in N(i)`` (``candidate``) or ``sim(j, i)`` for
        ``i in N(j)`` (``history``)."""
        if self.neighbours_of == "candidate":
            self.votes = self.neighbours
        else:
            self.votes = self.neighbours.T.tocsr()

    def score_all(self, users: np.ndarray) -> np.ndarray:
        rows = self.train[np.asarray(users, dtype=np.int64)]
        num = (rows @ self.votes.T).toarray()  # (B, I): sum_j r_uj V[i, j]
        if self.normalize == "neighbours":
            out = _safe_div(num, self.norm[None, :])
        elif self.normalize == "rated":
            rated = (rows != 0).astype(np.float32)
            out = _safe_div(num, (rated @ abs(self.votes).T).toarray())
        else:
            out = num.astype(np.float32)
        if self.popularity_weight:
            out = out + self._prior()[None, :]
        return out.astype(np.float32)

    def _prior(self) -> np.ndarray:
        """``(I,)`` float32: ``popularity_weight * log(1 + item_counts)``."""
        return (self.popularity_weight * np.log1p(self.item_counts.astype(np.float64))).astype(
            np.float32
        )

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "shrinkage": self.shrinkage,
            "neighbours_of": self.neighbours_of,
            "normalize": self.normalize,
            "popularity_weight": self.popularity_weight,
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any], device: str | None = None) -> ItemKNN:
        return cls(**{**ITEMKNN_LEGACY, **cfg})  # configs saved before a key: old behaviour

    def state(self) -> dict[str, torch.Tensor]:
        return {**super().state(), "item_counts": torch.from_numpy(self.item_counts)}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state(state)
        counts = state.get("item_counts")
        if counts is None and self.popularity_weight:
            raise ValueError("weights: missing tensor 'item_counts' (popularity_weight > 0)")
        if counts is None:  # saved before the prior: none is needed at weight 0
            counts = torch.zeros(self.n_items)
        if tuple(counts.shape) != (self.n_items,):
            raise ValueError(f"weights: tensor 'item_counts' not of shape ({self.n_items},)")
        self.item_counts = counts.numpy().astype(np.float32)


@register
class UserKNN(_KNN):
    """User-based CF with mean-centring:
    ``r_ui = mean_u + sum_{v in N(u)} sim(u,v) (r_vi - mean_v) / sum_{v in N(u)} |sim(u,v)|``."""

    name = "userknn"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.user_mean = np.zeros(self.n_users, dtype=np.float32)
        self.neighbour_mean = np.zeros(self.n_users, dtype=np.float32)

    def _n_neighbours_space(self) -> int:
        return self.n_users

    def fit(
        self,
        interactions: sp.csr_matrix,
        progress: bool = False,
        users: np.ndarray | None = None,
        **kwargs: Any,
    ) -> UserKNN:
        """``users``: find neighbours for these rows only (the others score their mean alone) —
        a forward evaluation of a sample of users at a million users."""
        self.train = _as_csr(interactions)
        self.n_users, self.n_items = self.train.shape
        self.neighbours = topk_similarity(
            self.train.T.tocsr(), self.k, self.similarity, progress, columns=users
        )
        self.norm = _abs_row_sums(self.neighbours)
        self._after_load()
        log.info(
            "UserKNN fit: %d users, %s top-%d, %d neighbour links",
            self.n_users, self.similarity, self.k, self.neighbours.nnz,
        )  # fmt: skip
        return self

    def _after_load(self) -> None:
        # mean over all items (the complete-matrix convention), and sum_v sim(u,v) mean_v
        self.user_mean = (np.asarray(self.train.sum(1)).ravel() / max(self.n_items, 1)).astype(
            np.float32
        )
        self.neighbour_mean = (self.neighbours @ self.user_mean).astype(np.float32)

    def score_all(self, users: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        sims = self.neighbours[users]  # (B, U)
        num = (sims @ self.train).toarray() - self.neighbour_mean[users, None]
        return self.user_mean[users, None] + _safe_div(num, self.norm[users, None])
