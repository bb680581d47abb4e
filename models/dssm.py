"""DSSM (Huang et al. 2013; the chapter's section 14): a two-tower retriever over hashed text.

**Inputs.** Each item's title is word-hashed into letter-trigram buckets
(:func:`pipelines.data.titles.trigram_bags`, ``n_buckets`` of them), its counts scaled to unit L2
norm: the item's text bag ``x_i`` ``(V,)``, ``V`` = ``n_buckets``. A user's text bag is the mean
of the bags of their history (the last ``max_history`` distinct items of their time-ordered
sequence when ``sequences`` are given, else every item of their row of the matrix): a bag of
their history's trigrams. Optional categorical side attributes (integer codes, ``-1`` unknown:
a user's demographics, an item's category) are one more token each, weight 1, in index ranges
after the text buckets; so a tower's input is a sparse vector of width ``V + sum(group sizes)``.

**Towers** (one per side, no shared weights): the first dense layer over the sparse input is an
``EmbeddingBag`` (sum of the input's rows weighted by its values, plus a bias), then ``tanh`` and
``Linear`` per further entry of ``hidden``, and a last ``Linear`` to ``dim``; the output is
L2-normalised, so ``u . v`` is the cosine similarity.

**Training.** Every positive ``(u, i)`` (cell > 0) against ``n_negatives`` items drawn uniformly
among the items the user has no positive for: ``softmax`` over ``cos(u, v) / temperature`` of the
positive and its negatives (``1 / temperature`` is DSSM's smoothing factor ``gamma``), cross
entropy on the positive, Adam. The user side of a training example leaves the positive out of
the history bag (the mean over the other history items; demographics only when it was the only
one), so the towers learn to predict an item from the *other* items' text, not to recognise it.
``popularity_weight`` > 0 adds ``popularity_weight * log(1 + positives of i)`` to every training
logit (the towers learn taste over popularity) and ``temperature * popularity_weight * log(1 +
n_i)`` to the scores (the embeddings gain one coordinate for it, as the two-tower's do).

**New items.** An item needs text, not interactions: one in the matrix with no positive (a
column of zeros) gets its vector from its title (and category) like any other, and
:meth:`DSSM.encode_items` encodes titles the model never saw.

**Stored state**: both towers' weights and the two sparse input matrices (users ``(U, Vu)``, items
``(I, Vi)``, CSR as ``indptr`` / ``indices`` / ``values`` tensors), so a loaded model scores without
the texts; :meth:`DSSM.user_embeddings` ``(U, D)`` and :meth:`DSSM.item_embeddings` ``(I, D)``
(``D`` = ``dim``, ``+1`` with the prior) rank like the scores (FAISS can index them).

Shapes: ``U`` users, ``I`` items, ``B`` batch, ``n`` negatives. Deterministic under ``seed`` on CPU
for a given thread count (weights initialised under a forked, seeded torch RNG; order and
negatives from a private ``numpy`` generator); CUDA when present.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from models.base import Retriever, pick_device, register
from models.baselines import _csr_from_state, _csr_state  # CSR <-> tensors, as KNN saves
from models.bpr import positive_pairs, sample_negatives
from pipelines.core.progress import progress as progress_bar
from pipelines.data.titles import trigram_bags

log = logging.getLogger(__name__)

#: rows encoded at once when the embeddings are computed
_ENCODE_ROWS = 4096


class BagTower(nn.Module):
    """Sparse input ``(B, n_inputs)`` → unit vector ``(B, dim)``: ``EmbeddingBag`` (the first
    dense layer) + bias, then ``tanh`` / ``Linear`` per further layer."""

    def __init__(self, n_inputs: int, hidden: Sequence[int], dim: int) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(n_inputs, hidden[0], mode="sum")
        nn.init.normal_(self.bag.weight, std=0.5)
        self.bias = nn.Parameter(torch.zeros(hidden[0]))
        layers: list[nn.Module] = []
        width = hidden[0]
        for h in [*hidden[1:], dim]:
            layers.extend([nn.Tanh(), nn.Linear(width, h)])
            width = h
        self.mlp = nn.Sequential(*layers)

    def bag_sum(self, rows: sp.csr_matrix) -> torch.Tensor:
        """The first layer without its bias: CSR ``(B, n_inputs)`` → ``(B, hidden[0])``."""
        dev = self.bias.device
        indices = torch.from_numpy(rows.indices.astype(np.int64)).to(dev)
        offsets = torch.from_numpy(rows.indptr[:-1].astype(np.int64)).to(dev)
        weights = torch.from_numpy(rows.data.astype(np.float32)).to(dev)
        return self.bag(indices, offsets, per_sample_weights=weights)

    def head(self, first: torch.Tensor) -> torch.Tensor:
        """First-layer sums ``(B, hidden[0])`` → unit vectors ``(B, dim)``."""
        return F.normalize(self.mlp(first + self.bias), dim=-1)

    def forward(self, rows: sp.csr_matrix) -> torch.Tensor:
        """``rows``: CSR ``(B, n_inputs)`` → ``(B, dim)`` float32, unit L2 norm."""
        return self.head(self.bag_sum(rows))


def one_hot_groups(codes: np.ndarray | None, n: int, sizes: Sequence[int]) -> sp.csr_matrix:
    """Integer codes ``(n, A)`` (or ``(n,)``; ``-1`` unknown) → CSR ``(n, sum(sizes))`` with a 1 at
    ``offset[a] + code`` per known code; an empty ``(n, 0)`` matrix without codes."""
    width = int(sum(sizes))
    if codes is None or width == 0:
        return sp.csr_matrix((n, width), dtype=np.float32)
    codes = np.asarray(codes, dtype=np.int64).reshape(n, -1)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    rows, cols = np.nonzero(codes >= 0)
    idx = offsets[cols] + codes[rows, cols]
    data = np.ones(len(rows), dtype=np.float32)
    return sp.csr_matrix((data, (rows, idx)), shape=(n, width))


def group_sizes(codes: np.ndarray | None, n: int) -> list[int]:
    """Cardinality of each column of ``codes`` (``max + 1``, at least 1); ``[]`` without codes.
    ``ValueError`` for a wrong row count or non-integer codes."""
    if codes is None:
        return []
    arr = np.asarray(codes)
    if arr.shape[0] != n or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"group codes must be integers with {n} rows, got {arr.dtype} {arr.shape}")
    arr = arr.reshape(n, -1)
    return [int(max(arr[:, a].max(initial=-1), 0)) + 1 for a in range(arr.shape[1])]


def text_bags(texts: Sequence[str], n_buckets: int) -> sp.csr_matrix:
    """Trigram bags of ``texts`` with every non-empty row scaled to unit L2 norm: ``(N, V)``."""
    bags = trigram_bags(texts, n_buckets)
    norms = np.sqrt(np.asarray(bags.multiply(bags).sum(axis=1)).ravel())
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    return sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ bags, dtype=np.float32)


def history_matrix(
    interactions: sp.csr_matrix,
    sequences: tuple[np.ndarray, np.ndarray] | None,
    max_history: int,
) -> sp.csr_matrix:
    """Binary ``(U, I)``: each user's history. With ``sequences`` (``indptr (U + 1,)``, ``items``,
    oldest first) the last ``max_history`` distinct items of each sequence; without, every
    positive of the user's row (``max_history`` cannot pick the recent ones without times)."""
    n_users, n_items = interactions.shape
    if sequences is None:
        hist = sp.csr_matrix(interactions, dtype=np.float32, copy=True)
        hist.data = (hist.data > 0).astype(np.float32)
        hist.eliminate_zeros()
        return hist
    indptr, items = sequences
    if len(indptr) != n_users + 1:
        raise ValueError(f"sequences cover {len(indptr) - 1} users, the matrix {n_users}")
    rows, cols = [], []
    for u in range(n_users):
        seq = items[indptr[u] : indptr[u + 1]][::-1]
        _, first = np.unique(seq, return_index=True)
        recent = seq[np.sort(first)][:max_history]
        rows.append(np.full(len(recent), u, dtype=np.int64))
        cols.append(recent.astype(np.int64))
    r, c = np.concatenate(rows), np.concatenate(cols)
    data = np.ones(len(r), dtype=np.float32)
    return sp.csr_matrix((data, (r, c)), shape=(n_users, n_items))


@register
class DSSM(Retriever):
    """Word-hashed text towers, cosine, sampled softmax; see the module docstring."""

    name = "dssm"

    def __init__(
        self,
        n_buckets: int = 1 << 14,
        hidden: Sequence[int] = (256,),
        dim: int = 64,
        n_negatives: int = 4,
        temperature: float = 0.1,
        epochs: int = 20,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        max_history: int = 50,
        popularity_weight: float = 0.0,
        seed: int = 0,
        device: str | None = None,
        n_users: int = 0,
        n_items: int = 0,
        user_group_sizes: Sequence[int] = (),
        item_group_sizes: Sequence[int] = (),
    ) -> None:
        hidden = [int(h) for h in hidden]
        if (
            n_buckets < 1 or not hidden or min(hidden) < 1 or dim < 1 or n_negatives < 1
            or temperature <= 0 or epochs < 0 or batch_size < 1 or lr <= 0 or weight_decay < 0
            or max_history < 1 or popularity_weight < 0
        ):  # fmt: skip
            raise ValueError(
                f"bad DSSM hyper-parameters: n_buckets={n_buckets} hidden={hidden} dim={dim} "
                f"n_negatives={n_negatives} temperature={temperature} epochs={epochs} "
                f"batch_size={batch_size} lr={lr} weight_decay={weight_decay} "
                f"max_history={max_history} popularity_weight={popularity_weight}"
            )
        self.n_buckets, self.hidden, self.dim = int(n_buckets), hidden, int(dim)
        self.n_negatives, self.temperature = int(n_negatives), float(temperature)
        self.epochs, self.batch_size, self.lr = int(epochs), int(batch_size), float(lr)
        self.weight_decay, self.max_history = float(weight_decay), int(max_history)
        self.popularity_weight, self.seed = float(popularity_weight), int(seed)
        self.device = pick_device(device)
        self.n_users, self.n_items = int(n_users), int(n_items)
        self.user_group_sizes = [int(s) for s in user_group_sizes]
        self.item_group_sizes = [int(s) for s in item_group_sizes]
        #: mean cross entropy per positive of each epoch
        self.loss_history: list[float] = []
        self.user_inputs = sp.csr_matrix((self.n_users, self._width("user")), dtype=np.float32)
        self.item_inputs = sp.csr_matrix((self.n_items, self._width("item")), dtype=np.float32)
        self.item_prior = np.zeros(self.n_items, dtype=np.float32)  # score units
        self._build()

    def _width(self, side: str) -> int:
        sizes = self.user_group_sizes if side == "user" else self.item_group_sizes
        return self.n_buckets + int(sum(sizes))

    def _build(self) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.user_tower = BagTower(self._width("user"), self.hidden, self.dim)
            self.item_tower = BagTower(self._width("item"), self.hidden, self.dim)
        self.user_tower.to(self.device).eval()
        self.item_tower.to(self.device).eval()
        self._user_vecs: np.ndarray | None = None
        self._item_vecs: np.ndarray | None = None

    # --- training ----------------------------------------------------------------------------
    def fit(
        self,
        interactions: sp.csr_matrix,
        item_text: Sequence[str] | None = None,
        user_groups: np.ndarray | None = None,
        item_groups: np.ndarray | None = None,
        sequences: tuple[np.ndarray, np.ndarray] | None = None,
        progress: bool = True,
        **kwargs: Any,
    ) -> DSSM:
        """Train on a ``(U, I)`` matrix (every cell > 0 a positive) with ``item_text`` (``I``
        titles; none: the items have only their ``item_groups``), optional side codes
        ``user_groups`` ``(U, A)`` / ``item_groups`` ``(I,)`` or ``(I, A)`` (``-1`` unknown) and
        the users' time-ordered ``sequences`` (``(indptr, items)``, for the recent history)."""
        users, items, keys = positive_pairs(interactions)
        self.n_users, self.n_items = interactions.shape
        texts = [""] * self.n_items if item_text is None else list(item_text)
        if len(texts) != self.n_items:
            raise ValueError(f"{len(texts)} item texts for {self.n_items} items")
        self.user_group_sizes = group_sizes(user_groups, self.n_users)
        self.item_group_sizes = group_sizes(item_groups, self.n_items)
        text = text_bags(texts, self.n_buckets)
        hist = history_matrix(interactions, sequences, self.max_history)
        self.item_inputs = sp.hstack(
            [text, one_hot_groups(item_groups, self.n_items, self.item_group_sizes)], format="csr"
        )
        user_side = one_hot_groups(user_groups, self.n_users, self.user_group_sizes)
        hist_text = sp.csr_matrix(hist @ text)  # (U, V) sum of the history's bags
        counts = np.asarray(hist.sum(axis=1)).ravel()
        mean = sp.diags(1.0 / np.maximum(counts, 1)).astype(np.float32) @ hist_text
        self.user_inputs = sp.hstack([mean, user_side], format="csr", dtype=np.float32)
        pop = np.log1p(np.bincount(items, minlength=self.n_items)).astype(np.float32)
        self.item_prior = (self.temperature * self.popularity_weight * pop).astype(np.float32)
        self._build()
        self.user_tower.train()
        self.item_tower.train()
        params = [*self.user_tower.parameters(), *self.item_tower.parameters()]
        opt = torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        rng = np.random.default_rng(self.seed)
        batches = _TrainingBatches(hist, counts, text, user_side)
        log.info(
            "DSSM fit: %d users x %d items, %d positives x (1 + %d negatives), %d buckets, "
            "towers %s -> %d, %d epochs on %s",
            self.n_users, self.n_items, len(users), self.n_negatives, self.n_buckets,
            self.hidden, self.dim, self.epochs, self.device,
        )  # fmt: skip
        start = time.perf_counter()
        self.loss_history = []
        for _ in progress_bar(range(self.epochs), desc="DSSM", unit="epoch", enabled=progress):
            order = rng.permutation(len(users))
            neg = sample_negatives(users[order], self.n_items, keys, rng, self.n_negatives)
            self.loss_history.append(self._epoch(users[order], items[order], neg, batches, opt))
        self.user_tower.eval()
        self.item_tower.eval()
        log.info(
            "DSSM fit done in %.2fs, loss %s",
            time.perf_counter() - start,
            " -> ".join(f"{x:.4f}" for x in self.loss_history[:: max(1, self.epochs // 4)]),
        )
        return self

    def _epoch(
        self,
        users: np.ndarray,
        items: np.ndarray,
        neg: np.ndarray,
        batches: _TrainingBatches,
        opt: torch.optim.Optimizer,
    ) -> float:
        """Adam steps over the positives ``(P,)`` and their negatives ``(P, n)`` in
        ``batch_size`` slices; returns the mean cross entropy."""
        prior = torch.from_numpy(self.item_prior / self.temperature).to(self.device)
        target = torch.zeros(self.batch_size, dtype=torch.int64, device=self.device)
        total = 0.0
        for s in range(0, len(users), self.batch_size):
            u, i, n = (
                users[s : s + self.batch_size],
                items[s : s + self.batch_size],
                neg[s : s + self.batch_size],
            )
            cand = np.concatenate([i[:, None], n], axis=1)  # (B, 1 + n), the positive first
            u_vec = self._train_users(batches, u, i)  # (B, d)
            v_vec = self.item_tower(self.item_inputs[cand.ravel()]).view(len(u), cand.shape[1], -1)
            idx = torch.from_numpy(cand).to(self.device)
            logits = torch.einsum("bd,bkd->bk", u_vec, v_vec) / self.temperature + prior[idx]
            loss = F.cross_entropy(logits, target[: len(u)], reduction="sum")
            opt.zero_grad(set_to_none=True)
            (loss / len(u)).backward()
            opt.step()
            total += float(loss.detach())
        return total / max(len(users), 1)

    def _train_users(
        self, batches: _TrainingBatches, users: np.ndarray, items: np.ndarray
    ) -> torch.Tensor:
        """User vectors ``(B, d)`` of training examples: the first layer is linear, so the
        projection of the mean history bag is the mean of the history items' projections,
        computed once per distinct history item of the batch (a sparse ``(B, H) @ (H, h)``)
        instead of over every user's summed bag."""
        weights, sub, side = batches.user_rows(users, items)
        tower = self.user_tower
        coo = weights.tocoo()
        a = torch.sparse_coo_tensor(
            torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64)),
            torch.from_numpy(coo.data.astype(np.float32)),
            size=coo.shape,
            device=self.device,
            check_invariants=False,  # built from a valid scipy matrix
        )
        text = torch.sparse.mm(a, tower.bag_sum(batches.text[sub]))  # (B, h)
        return tower.head(text + tower.bag_sum(side))

    # --- vectors and scores ------------------------------------------------------------------
    @torch.no_grad()
    def _encode(self, tower: BagTower, rows: sp.csr_matrix) -> np.ndarray:
        out = [
            tower(rows[s : s + _ENCODE_ROWS]).float().cpu().numpy()
            for s in range(0, rows.shape[0], _ENCODE_ROWS)
        ]
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)

    def _vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Unit user vectors ``(U, dim)`` and item vectors ``(I, dim)``, computed once."""
        if self._user_vecs is None or self._item_vecs is None:
            self._user_vecs = self._encode(self.user_tower, self.user_inputs)
            self._item_vecs = self._encode(self.item_tower, self.item_inputs)
        return self._user_vecs, self._item_vecs

    def encode_items(
        self, texts: Sequence[str], item_groups: np.ndarray | None = None
    ) -> np.ndarray:
        """Unit vectors ``(N, dim)`` of new items from their titles (and side codes of the
        training's columns, ``-1`` unknown): what scores a brand-new item against
        :meth:`user_embeddings` (``u . v`` is the cosine; add the prior term, 0 for no positives)."""
        rows = sp.hstack(
            [
                text_bags(list(texts), self.n_buckets),
                one_hot_groups(item_groups, len(texts), self.item_group_sizes),
            ],
            format="csr",
        )
        return self._encode(self.item_tower, rows)

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Cosine (+ the prior) per pair: ``(N,)`` float32."""
        u_vec, i_vec = self._vectors()
        users, items = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
        dots = np.einsum("nd,nd->n", u_vec[users], i_vec[items])
        return (dots + self.item_prior[items]).astype(np.float32)

    def score_all(self, users: np.ndarray) -> np.ndarray:
        """Every item for each user: ``(B,)`` → float32 ``(B, I)``."""
        u_vec, i_vec = self._vectors()
        full = u_vec[np.asarray(users, dtype=np.int64)] @ i_vec.T
        return (full + self.item_prior[None, :]).astype(np.float32)

    def user_embeddings(self) -> np.ndarray:
        """``(U, dim)`` unit vectors (``dim + 1`` with the prior: a last coordinate of 1)."""
        u_vec, _ = self._vectors()
        if self.popularity_weight == 0:
            return u_vec.copy()
        return np.hstack([u_vec, np.ones((len(u_vec), 1), np.float32)])

    def item_embeddings(self) -> np.ndarray:
        """``(I, dim)`` unit vectors (``dim + 1`` with the prior: its value last)."""
        _, i_vec = self._vectors()
        if self.popularity_weight == 0:
            return i_vec.copy()
        return np.hstack([i_vec, self.item_prior[:, None]])

    # --- persistence -------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "n_buckets": self.n_buckets,
            "hidden": list(self.hidden),
            "dim": self.dim,
            "n_negatives": self.n_negatives,
            "temperature": self.temperature,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "max_history": self.max_history,
            "popularity_weight": self.popularity_weight,
            "seed": self.seed,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "user_group_sizes": list(self.user_group_sizes),
            "item_group_sizes": list(self.item_group_sizes),
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any], device: str | None = None) -> DSSM:
        return cls(**cfg, device=device)

    def state(self) -> dict[str, torch.Tensor]:
        out = {f"user_tower.{k}": v for k, v in self.user_tower.state_dict().items()}
        out.update({f"item_tower.{k}": v for k, v in self.item_tower.state_dict().items()})
        out.update(_csr_state("user_inputs", self.user_inputs))
        out.update(_csr_state("item_inputs", self.item_inputs))
        out["item_prior"] = torch.from_numpy(self.item_prior)
        return out

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        user_inputs = _csr_from_state(state, "user_inputs", (self.n_users, self._width("user")))
        item_inputs = _csr_from_state(state, "item_inputs", (self.n_items, self._width("item")))
        prior = state.get("item_prior")
        if prior is None or tuple(prior.shape) != (self.n_items,):
            raise ValueError(f"DSSM item_prior missing or not of shape ({self.n_items},)")
        self._build()
        for prefix, tower in (("user_tower.", self.user_tower), ("item_tower.", self.item_tower)):
            sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            try:
                tower.load_state_dict(sub, strict=True)
            except RuntimeError as exc:
                raise ValueError(f"DSSM weights do not fit the config: {exc}") from exc
        self.user_inputs, self.item_inputs = user_inputs, item_inputs
        self.item_prior = prior.numpy().astype(np.float32)


class _TrainingBatches:
    """The user side of training examples, leaving each example's positive out of the history.

    ``hist`` ``(U, I)`` binary histories, ``counts`` ``(U,)`` their lengths, ``text`` ``(I, V)`` item bags, ``user_side`` ``(U, G)``
    one-hot side attributes."""

    def __init__(
        self,
        hist: sp.csr_matrix,
        counts: np.ndarray,
        text: sp.csr_matrix,
        user_side: sp.csr_matrix,
    ) -> None:
        self.hist, self.counts = hist, counts
        self.text, self.user_side = text, user_side

    def user_rows(
        self, users: np.ndarray, items: np.ndarray
    ) -> tuple[sp.csr_matrix, np.ndarray, sp.csr_matrix]:
        """The user side of examples ``(users[b], items[b])``: ``(weights (B, H), sub (H,),
        side)``, ``weights[b, k]`` = ``1 / (n - 1)`` for every history item ``sub[k]`` of the
        user other than ``items[b]`` (``n`` the history's length; ``1 / n`` when ``items[b]`` is
        not in it), so ``weights @ text[sub]`` is the mean bag of the other history items;
        ``side`` ``(B, V + G)`` the user's side tokens (in the tower's input columns)."""
        b = len(users)
        in_hist = np.asarray(self.hist[users, items]).ravel().astype(np.float32)  # (B,)
        own = sp.csr_matrix((in_hist, (np.arange(b), items)), shape=(b, self.hist.shape[1]))
        rest = sp.csr_matrix(self.hist[users] - own)
        rest.eliminate_zeros()
        scale = 1.0 / np.maximum(self.counts[users] - in_hist, 1.0)
        rest = sp.csr_matrix(sp.diags(scale.astype(np.float32)) @ rest, dtype=np.float32)
        sub = np.unique(rest.indices).astype(np.int64)
        side = sp.hstack(
            [sp.csr_matrix((b, self.text.shape[1]), dtype=np.float32), self.user_side[users]],
            format="csr",
        )
        return sp.csr_matrix(rest[:, sub]), sub, side
