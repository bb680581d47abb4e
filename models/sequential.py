"""Sequential retrievers over each user's recent items (chapter section 16.3): GRU4Rec (Hidasi
et al. 2016, a GRU over the item sequence), SASRec (Kang & McAuley 2018, causal
self-attention over it) and BERT4Rec (Sun et al. 2019, bidirectional self-attention trained on
the Cloze task), in PyTorch, under the :class:`models.base.Retriever` contract.

- **Input**: per user the items of their positive events in time order (``sequences``: a CSR-like
  ``(indptr (U + 1,), items (E,))``, :func:`pipelines.retrieval.data.user_sequences`; without it,
  each row's items of the ``(U, I)`` matrix in a seeded random order: no time order known). Tokens are item
  index + 1 (0 pads); windows are left-padded to ``max_len``, the most recent item last.
- **Encoder** ``(B, L)`` tokens → ``(B, L, D)`` states: ``gru4rec``: item embedding → dropout →
  ``n_layers`` GRU layers. ``sasrec``: ``sqrt(D)`` item embedding + learned position embedding →
  dropout → ``n_layers`` pre-norm Transformer blocks (``n_heads`` heads, FFN ``2D``) under a
  causal mask that also hides padding keys (a position always sees itself) → LayerNorm.
  ``bert4rec``: the same blocks without the causal mask (every item sees the whole window) and
  one more token, ``[MASK]`` (``I + 1``).
- **Side attributes** (optional, ``fit(item_groups=, user_groups=)``: integer codes, ``-1``
  unknown): each item attribute value (the category) has a vector added to the item's embedding
  wherever the item appears, on the input and (``group_output``, default) the tied output, so a
  transition between categories is learned from every item of both; each user attribute value
  (age band, gender, country) has a vector (zero at the start) added to the user's state, a
  taste term as MF's. Models saved without them load as before (no tables, no tensors).
- **Output**: the score of item ``i`` after a sequence is ``h . e_i`` with ``h`` the last state
  (plus the user's attribute vectors) and ``e_i`` the (shared, tied) input embedding of ``i``
  (plus its attributes'). ``bert4rec`` reads ``h`` at a
  ``[MASK]`` appended after the last ``max_len - 1`` items.
- **Training**: next-item prediction at every position of windows of ``max_len + 1`` items cut
  from the end of each sequence (stride ``max_len``): softmax cross-entropy of the true next item
  against every item when ``I <= n_negatives``, else against ``n_negatives`` uniformly drawn items
  shared by the batch (sampled softmax; a draw equal to the target is masked). Adam,
  ``weight_decay`` L2. ``bert4rec`` (Cloze): windows of ``max_len`` items; each item is
  replaced by ``[MASK]`` with probability ``mask_prob`` (freshly drawn every epoch; a window
  with none masks its last item, the task it is asked at inference) and the same softmax
  predicts the masked items from both sides.
- **Recommend**: after ``fit`` every user's state ``h_u`` is computed once from their last
  ``max_len`` training items (:attr:`histories`, saved with the weights) plus their attribute
  vectors; ``score_all`` is ``h_u . E^T``, so ``user_embeddings`` ``(U, D)`` and
  ``item_embeddings`` ``(I, D)`` rank exactly as the scores (a FAISS inner-product index works).
  :meth:`SequentialRetriever.encode` scores a fresh sequence (serving's online sequence:
  :class:`serving.sources.ModelSource`).
- **Popularity prior** (``popularity_weight`` ``w``, default 0: none): every score gains the
  fixed ``w * log(1 + n_i)``, ``n_i`` the item's positives in the training matrix (counted at
  ``fit``, saved with the weights; ``fit(item_counts=)`` may give other counts), as the two-tower's
  and the DSSM's. With ``w > 0`` the user states and :meth:`~SequentialRetriever.encode` gain a
  last coordinate 1 and the item embeddings the prior, so inner products stay the scores (the
  serving path's ``encode(s) @ item_embeddings().T`` included). Configs saved before the key
  load with ``w = 0``: today's scores exactly.
- **Exposure correction** (``exposure_weight`` ``e``, default 0: none): every score loses
  ``e * log(1 + x_i)``, ``x_i`` the item's impressions in the training logs (``fit(item_exposure=)``,
  saved with the weights; none given: zeros). A next-item softmax fitted on clicks logged under a
  policy that shows item ``i`` at rate ``q_i`` learns ``log q_i + log relevance``; taking a part
  of ``log q_i`` back ranks closer to the relevance (on the simulator's popularity-logged days:
  ``benchmarks/README.md``, issue 16's seventh session). Scored as the prior (its sign aside):
  the same last coordinate, in ``score``, ``score_all`` and ``encode(s) @ item_embeddings().T``.
  Configs saved before the key load with ``e = 0``.

Shapes: ``U`` users, ``I`` items, ``D`` = ``dim``, ``L`` = ``max_len``, ``B`` batch. Deterministic
under ``seed`` on CPU for a given thread count (weights and dropout under a forked, seeded torch
RNG; window order and negatives from private generators).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from models.base import Retriever, pick_device, register
from pipelines.core.progress import progress as progress_bar

log = logging.getLogger(__name__)

#: values of config keys added after models were first saved, for configs that lack them
LEGACY_DEFAULTS: dict[str, Any] = {"popularity_weight": 0.0, "exposure_weight": 0.0}

#: below this many ``window tokens x dim`` a fit runs on one intra-op thread (small matrices:
#: on a loaded machine extra threads spin and make a 0.3 s fit take 10 s)
_SMALL_FIT = 1 << 21


class SequenceNet(nn.Module):
    """Item embedding + a GRU, causal (``sasrec``) or bidirectional (``bert4rec``) Transformer
    encoder; ``forward`` ``(B, L)`` → ``(B, L, D)``. Tokens: 0 pads, ``1..I`` items, ``I + 1``
    is ``[MASK]`` (``bert4rec`` only)."""

    def __init__(
        self, kind: str, n_items: int, dim: int, max_len: int, n_layers: int, n_heads: int,
        dropout: float, group_sizes: tuple[int, ...] = (), group_output: bool = True,
        user_group_sizes: tuple[int, ...] = (), n_users: int = 0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.kind, self.n_items, self.n_heads = kind, n_items, n_heads
        self.mask_token = n_items + 1
        self.group_output = group_output
        n_tokens = n_items + 1 + (kind == "bert4rec")
        self.item = nn.Embedding(n_tokens, dim, padding_idx=0)
        nn.init.normal_(self.item.weight[1:], std=1.0 / math.sqrt(dim))
        # side attributes: one table per attribute, row 0 = unknown (and pad / [MASK] tokens)
        self.groups = nn.ModuleList(nn.Embedding(n + 1, dim, padding_idx=0) for n in group_sizes)
        for table in self.groups:
            nn.init.normal_(table.weight[1:], std=1.0 / math.sqrt(dim))
        if group_sizes:  # token -> attribute code + 1, (n_tokens, A); absent without attributes
            self.register_buffer(
                "item_groups", torch.zeros(n_tokens, len(group_sizes), dtype=torch.int64)
            )
        # user attributes: a vector per attribute value added to the state (zero at the start)
        self.user_tables = nn.ModuleList(
            nn.Embedding(n + 1, dim, padding_idx=0) for n in user_group_sizes
        )
        for table in self.user_tables:
            nn.init.zeros_(table.weight)
        if user_group_sizes:  # user row -> attribute code + 1, (U, A_u)
            self.register_buffer(
                "user_groups", torch.zeros(n_users, len(user_group_sizes), dtype=torch.int64)
            )
        self.drop = nn.Dropout(dropout)
        if kind == "gru4rec":
            self.gru = nn.GRU(dim, dim, n_layers, batch_first=True)
        else:
            self.pos = nn.Embedding(max_len, dim)
            layer = nn.TransformerEncoderLayer(
                dim, n_heads, 2 * dim, dropout, batch_first=True, norm_first=True
            )
            self.blocks = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(...)`` tokens → ``(...,  D)``: the item's embedding plus its attributes'."""
        x = self.item(tokens)
        if len(self.groups):
            codes = self.item_groups[tokens]
            for a, table in enumerate(self.groups):
                x = x + table(codes[..., a])
        return x

    def forward(self, tokens: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """States ``(B, L, D)`` of tokens ``(B, L)``, plus the attribute vectors of ``users``
        ``(B,)`` (rows) when given and the net has user attributes."""
        h = self.encoder(self.embed(tokens), tokens)
        if users is not None and len(self.user_tables):
            codes = self.user_groups[users]
            for a, table in enumerate(self.user_tables):
                h = h + table(codes[:, a])[:, None]
        return h

    def encoder(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The GRU / Transformer over embedded tokens ``x`` ``(B, L, D)`` → ``(B, L, D)``."""
        if self.kind == "gru4rec":
            return self.gru(self.drop(x))[0]
        n, length = tokens.shape
        x = x * math.sqrt(x.shape[-1]) + self.pos.weight[-length:][None]
        mask = (tokens == 0)[:, None, :] & ~torch.eye(length, dtype=torch.bool, device=x.device)
        if self.kind == "sasrec":
            future = torch.ones(length, length, dtype=torch.bool, device=x.device).triu(1)
            mask = mask | future[None]
        mask = mask.repeat_interleave(self.n_heads, dim=0)
        return self.norm(self.blocks(self.drop(x), mask=mask))

    def item_vectors(self) -> torch.Tensor:
        """``(I, D)``: the output embeddings (tied to the inputs: with ``group_output`` the item's
        plus its attributes', else the item's alone), padding and mask rows dropped."""
        if len(self.groups) and self.group_output:
            return self.embed(torch.arange(1, self.n_items + 1, device=self.item.weight.device))
        return self.item.weight[1 : self.n_items + 1]


def sequences_from_matrix(
    interactions: sp.csr_matrix, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Each row's items with a value > 0 in a seeded random order (the matrix knows no time
    order; index order would teach "the next item has a higher index"):
    ``(indptr (U + 1,), items (E,))``."""
    m = sp.csr_matrix(interactions, dtype=np.float32)
    m.sum_duplicates()
    m.eliminate_zeros()
    m.sort_indices()
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    order = np.lexsort((np.random.default_rng(seed).random(len(rows)), rows))
    return m.indptr.astype(np.int64), m.indices[order].astype(np.int64)


def last_tokens(indptr: np.ndarray, items: np.ndarray, length: int) -> np.ndarray:
    """Tokens (item + 1) of each user's last ``length`` items, left-padded with 0: ``(U, length)``."""
    n = len(indptr) - 1
    out = np.zeros((n, length), dtype=np.int64)
    for u in range(n):
        seq = items[max(indptr[u], indptr[u + 1] - length) : indptr[u + 1]]
        if len(seq):
            out[u, length - len(seq) :] = seq + 1
    return out


def training_windows(indptr: np.ndarray, items: np.ndarray, max_len: int) -> np.ndarray:
    """Windows of ``max_len + 1`` tokens cut from the end of every sequence of at least 2 items
    (stride ``max_len``), left-padded: ``(W, max_len + 1)`` int64."""
    rows = []
    for u in range(len(indptr) - 1):
        seq = items[indptr[u] : indptr[u + 1]] + 1
        end = len(seq)
        while end >= 2:
            window = seq[max(0, end - max_len - 1) : end]
            row = np.zeros(max_len + 1, dtype=np.int64)
            row[max_len + 1 - len(window) :] = window
            rows.append(row)
            end -= max_len
    return np.stack(rows) if rows else np.zeros((0, max_len + 1), dtype=np.int64)


def window_users(indptr: np.ndarray, stride: int) -> np.ndarray:
    """The user (row) of each window :func:`training_windows` cuts with ``max_len = stride``,
    in its order: ``(W,)`` int64."""
    n = np.diff(indptr)
    counts = np.where(n >= 2, (n - 2) // stride + 1, 0)
    return np.repeat(np.arange(len(n), dtype=np.int64), counts)


def attribute_codes(
    groups: np.ndarray | None, n: int, what: str
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(n, A)`` int64 codes of categorical attributes (``-1`` unknown; ``None``: ``A = 0``) and
    the number of values of each (its largest code + 1)."""
    codes = np.zeros((n, 0), np.int64) if groups is None else np.asarray(groups, np.int64)
    codes = codes.reshape(len(codes), -1)
    if len(codes) != n:
        raise ValueError(f"{what}_groups has {len(codes)} rows for {n} {what}s")
    codes = np.where(codes < 0, -1, codes)
    return torch.from_numpy(codes.copy()), tuple(int(c.max(initial=-1)) + 1 for c in codes.T)


class SequentialRetriever(Retriever):
    """Next-item model over users' item sequences; see the module docstring."""

    name = "sequential"
    kind = "gru4rec"

    def __init__(
        self,
        dim: int = 64,
        max_len: int = 50,
        n_layers: int = 1,
        n_heads: int = 2,
        dropout: float = 0.2,
        n_negatives: int = 256,
        epochs: int = 20,
        batch_size: int = 128,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
        device: str | None = None,
        n_users: int = 0,
        n_items: int = 0,
        group_sizes: tuple[int, ...] | list[int] = (),
        group_output: bool = True,
        user_group_sizes: tuple[int, ...] | list[int] = (),
        popularity_weight: float = 0.0,
        exposure_weight: float = 0.0,
    ) -> None:
        bad = min(dim, max_len, n_layers, n_heads, n_negatives, batch_size) < 1
        if bad or epochs < 0 or not popularity_weight >= 0 or not exposure_weight >= 0:
            raise ValueError(
                f"bad {self.name} hyper-parameters: dim={dim} max_len={max_len} "
                f"n_layers={n_layers} n_heads={n_heads} epochs={epochs} "
                f"popularity_weight={popularity_weight} exposure_weight={exposure_weight}"
            )
        if self.kind != "gru4rec" and dim % n_heads:
            raise ValueError(f"{self.name}: dim={dim} is not a multiple of n_heads={n_heads}")
        if self.kind == "bert4rec" and max_len < 2:
            raise ValueError(f"{self.name}: max_len={max_len} leaves no item before [MASK]")
        self.dim, self.max_len, self.n_layers, self.n_heads = dim, max_len, n_layers, n_heads
        self.dropout, self.n_negatives, self.epochs = float(dropout), n_negatives, epochs
        self.batch_size, self.lr, self.weight_decay = batch_size, float(lr), float(weight_decay)
        self.seed = int(seed)
        self.device = pick_device(device)
        self.n_users, self.n_items = int(n_users), int(n_items)
        self.group_sizes, self.group_output = tuple(int(n) for n in group_sizes), bool(group_output)
        #: ``(I, A)`` int64 attribute codes of the items (``-1`` unknown); ``A = len(group_sizes)``
        self.item_codes = torch.full((self.n_items, len(self.group_sizes)), -1, dtype=torch.int64)
        self.user_group_sizes = tuple(int(n) for n in user_group_sizes)
        #: ``(U, A_u)`` int64 attribute codes of the users (``-1`` unknown)
        self.user_codes = torch.full((self.n_users, len(self.user_group_sizes)), -1)
        self.popularity_weight = float(popularity_weight)
        self.exposure_weight = float(exposure_weight)
        #: ``(I,)`` float32: each item's impressions in the training logs (the correction's ``x_i``)
        self.item_exposure = torch.zeros(self.n_items)
        #: ``(I,)`` float32: each item's positives in the training matrix (the prior's ``n_i``)
        self.item_counts = torch.zeros(self.n_items)
        self.net = self._new_net()
        #: ``(U, max_len)`` tokens of each user's last training items; ``(U, D)`` their states
        self.histories = torch.zeros(self.n_users, self.max_len, dtype=torch.int64)
        self.user_states = torch.zeros(self.n_users, self.dim, device=self.device)
        self.loss_history: list[float] = []

    def _new_net(self) -> SequenceNet:
        net = SequenceNet(
            self.kind, self.n_items, self.dim, self.max_len, self.n_layers, self.n_heads,
            self.dropout, self.group_sizes, self.group_output, self.user_group_sizes, self.n_users,
        )  # fmt: skip
        if self.group_sizes:
            net.item_groups[1 : self.n_items + 1] = self.item_codes + 1
        if self.user_group_sizes:
            net.user_groups[:] = self.user_codes + 1
        return net.to(self.device)

    # --- training ----------------------------------------------------------------------------
    def fit(
        self,
        interactions: sp.csr_matrix,
        sequences: tuple[np.ndarray, np.ndarray] | None = None,
        progress: bool = True,
        item_groups: np.ndarray | None = None,
        user_groups: np.ndarray | None = None,
        item_counts: np.ndarray | None = None,
        item_exposure: np.ndarray | None = None,
        **kwargs: Any,
    ) -> SequentialRetriever:
        """Train on the users' sequences (``(indptr (U + 1,), items (E,))`` in time order; default
        :func:`sequences_from_matrix`); ``interactions`` ``(U, I)`` gives the shapes.
        ``item_groups``: optional ``(I, A)`` integer codes of categorical item attributes
        (``-1`` unknown; :func:`pipelines.retrieval.data.group_codes`), each embedded and added
        to the item's embedding; ``user_groups`` ``(U, A_u)`` the same for users, added to the
        state (module docstring). ``item_counts`` ``(I,)``: the popularity prior's counts
        (default: each item's cells > 0 in ``interactions``); ``item_exposure`` ``(I,)``: the
        exposure correction's impressions per item (default: zeros, no correction)."""
        self.n_users, self.n_items = interactions.shape
        self.item_counts = self._counts(interactions, item_counts)
        exposure = np.zeros(self.n_items) if item_exposure is None else item_exposure
        self.item_exposure = self._counts(interactions, exposure, "item_exposure")
        self.item_codes, self.group_sizes = attribute_codes(item_groups, self.n_items, "item")
        self.user_codes, self.user_group_sizes = attribute_codes(user_groups, self.n_users, "user")
        if sequences is None:
            sequences = sequences_from_matrix(interactions, self.seed)
        indptr, items = sequences
        indptr, items = np.asarray(indptr, np.int64), np.asarray(items, np.int64)
        if len(indptr) != self.n_users + 1 or (len(items) and items.max() >= self.n_items):
            raise ValueError(f"sequences do not fit the {interactions.shape} interaction matrix")
        windows = self._windows(indptr, items)
        if len(windows) == 0:
            raise ValueError(f"fit: no user has a sequence of 2 items ({self.name})")
        start = time.perf_counter()
        threads = torch.get_num_threads()
        if windows.size * self.dim < _SMALL_FIT:  # tiny matrices: intra-op threads only cost
            torch.set_num_threads(1)
        try:
            users = window_users(indptr, windows.shape[1] - 1)
            self._train(windows, users, progress)
        finally:
            torch.set_num_threads(threads)
        self.histories = torch.from_numpy(last_tokens(indptr, items, self.max_len))
        self.user_states = self._states(self.histories, torch.arange(self.n_users))
        log.info(
            "%s fit: %d users x %d items, %d windows, %d epochs in %.2fs, loss %s",
            self.name, self.n_users, self.n_items, len(windows), self.epochs,
            time.perf_counter() - start,
            " -> ".join(f"{x:.4f}" for x in self.loss_history[:: max(1, self.epochs // 4)]),
        )  # fmt: skip
        return self

    def _counts(
        self, interactions: sp.csr_matrix, counts: np.ndarray | None, what: str = "item_counts"
    ) -> torch.Tensor:
        """``(I,)`` float32 counts ``what``: ``counts``, or each column's cells > 0."""
        if counts is None:
            counts = np.asarray((sp.csr_matrix(interactions) > 0).sum(axis=0)).ravel()
        counts = np.asarray(counts, dtype=np.float32).ravel()
        if counts.shape != (self.n_items,) or not (counts >= 0).all():
            raise ValueError(f"{what}: {counts.shape} non-negative counts for {self.n_items}")
        return torch.from_numpy(counts.copy())

    def _windows(self, indptr: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Next-item training windows ``(W, max_len + 1)`` (:func:`training_windows`)."""
        return training_windows(indptr, items, self.max_len)

    def _train(self, windows: np.ndarray, users: np.ndarray, progress: bool) -> None:
        """A fresh network trained ``epochs`` passes over ``windows`` ``(W, L + 1)`` of users
        (rows) ``users`` ``(W,)``."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = self._new_net()
            opt = torch.optim.Adam(
                self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay
            )
            rng = np.random.default_rng(self.seed)
            gen = torch.Generator().manual_seed(self.seed)
            self.loss_history = []
            epochs = progress_bar(
                range(self.epochs), desc=self.name, unit="epoch", enabled=progress
            )
            for _ in epochs:
                self.loss_history.append(self._epoch(windows, users, opt, rng, gen))

    def _epoch(
        self,
        windows: np.ndarray,
        users: np.ndarray,
        opt: torch.optim.Optimizer,
        rng: np.random.Generator,
        gen: torch.Generator,
    ) -> float:
        """One pass over the windows ``(W, L + 1)`` in a random order; the mean loss per target."""
        self.net.train()
        total, count = 0.0, 0
        order = rng.permutation(len(windows))
        for s in range(0, len(windows), self.batch_size):
            rows = order[s : s + self.batch_size]
            batch = torch.from_numpy(windows[rows]).to(self.device)
            h, target = self._predictions(batch, gen, torch.from_numpy(users[rows]))
            loss = self._softmax_loss(h, target, gen)
            opt.zero_grad(set_to_none=True)
            (loss / max(len(target), 1)).backward()
            opt.step()
            total, count = total + float(loss.detach()), count + len(target)
        return total / max(count, 1)

    def _predictions(
        self, batch: torch.Tensor, gen: torch.Generator, users: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next-item task on windows ``(B, L + 1)`` (of user rows ``users`` ``(B,)``): the
        states ``(T, D)`` after every real prefix and their next items ``(T,)`` (0-based)."""
        inputs, targets = batch[:, :-1], batch[:, 1:]
        keep = (targets > 0) & (inputs > 0)
        return self.net(inputs, self._on_device(users))[keep], targets[keep] - 1

    def _softmax_loss(
        self, h: torch.Tensor, target: torch.Tensor, gen: torch.Generator
    ) -> torch.Tensor:
        """Summed cross-entropy of ``target`` ``(T,)`` given states ``h`` ``(T, D)``: full softmax
        when ``I <= n_negatives``, else sampled softmax over ``n_negatives`` shared draws."""
        emb = self.net.item_vectors()
        if self.n_items <= self.n_negatives:
            return F.cross_entropy(h @ emb.T, target, reduction="sum")
        neg = torch.randint(0, self.n_items, (self.n_negatives,), generator=gen).to(self.device)
        pos_logit = (h * emb[target]).sum(1, keepdim=True)
        neg_logit = (h @ emb[neg].T).masked_fill(neg[None] == target[:, None], -1e9)
        logits = torch.cat([pos_logit, neg_logit], dim=1)
        zero = torch.zeros(len(target), dtype=torch.int64, device=self.device)
        return F.cross_entropy(logits, zero, reduction="sum")

    # --- scoring -----------------------------------------------------------------------------
    def _on_device(self, users: torch.Tensor | None) -> torch.Tensor | None:
        return None if users is None else users.to(self.device)

    @torch.no_grad()
    def _states(self, tokens: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """Last states ``(B, D)`` of left-padded token windows ``(B, max_len)`` (eval mode), with
        the attribute vectors of user rows ``users`` ``(B,)`` when given."""
        self.net.eval()
        out = [
            self.net(
                self._query(tokens[s : s + 1024]).to(self.device),
                None if users is None else self._on_device(users[s : s + 1024]),
            )[:, -1]
            for s in range(0, len(tokens), 1024)
        ]
        return torch.cat(out) if out else torch.zeros(0, self.dim, device=self.device)

    def _query(self, tokens: torch.Tensor) -> torch.Tensor:
        """The network's input ``(B, max_len)`` for history windows ``(B, max_len)``: as is."""
        return tokens

    def encode(
        self, sequences: list[list[int]] | np.ndarray, users: np.ndarray | None = None
    ) -> np.ndarray:
        """States ``(B, D)`` float32 of item sequences (oldest first; the last ``max_len`` count;
        ``(B, D + 1)``, a last 1, with the popularity prior):
        ``encode(s) @ item_embeddings().T`` scores every item after ``s``. ``users`` ``(B,)``:
        the rows whose attribute vectors to add (a model with user attributes; none: a
        sequence of an unknown user)."""
        tokens = np.zeros((len(sequences), self.max_len), dtype=np.int64)
        for r, seq in enumerate(sequences):
            seq = np.asarray(seq, dtype=np.int64)[-self.max_len :]
            if len(seq):
                tokens[r, self.max_len - len(seq) :] = seq + 1
        rows = None if users is None else torch.as_tensor(np.asarray(users, dtype=np.int64))
        return self._with_one(self._states(torch.from_numpy(tokens), rows).float().cpu().numpy())

    def _index(self, ids: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.device)

    def item_prior(self) -> np.ndarray:
        """``(I,)`` float32: ``popularity_weight * log(1 + item_counts) - exposure_weight *
        log(1 + item_exposure)`` (zeros at weights 0)."""
        prior = self.popularity_weight * np.log1p(self.item_counts.double().numpy())
        prior -= self.exposure_weight * np.log1p(self.item_exposure.double().numpy())
        return prior.astype(np.float32)

    def has_prior(self) -> bool:
        """Whether the scores carry :meth:`item_prior` (a weight is not 0)."""
        return self.popularity_weight != 0 or self.exposure_weight != 0

    def _with_one(self, states: np.ndarray) -> np.ndarray:
        """States ``(B, D)`` as is, or ``(B, D + 1)`` with a last 1 under the prior."""
        if not self.has_prior():
            return states
        return np.hstack([states, np.ones((len(states), 1), np.float32)])

    @torch.no_grad()
    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``h_u . e_i`` (+ the popularity prior of ``i``) per pair: ``(N,)`` float32."""
        h, e = self.user_states[self._index(users)], self.net.item_vectors()[self._index(items)]
        scores = (h * e).sum(1).float().cpu().numpy()
        if not self.has_prior():
            return scores
        return scores + self.item_prior()[np.asarray(items, dtype=np.int64)]

    @torch.no_grad()
    def score_all(self, users: np.ndarray) -> np.ndarray:
        """``(B,)`` → float32 ``(B, I)``: ``h_u . e_i`` (+ the popularity prior)."""
        h = self.user_states[self._index(users)]
        scores = (h @ self.net.item_vectors().T).float().cpu().numpy()
        if not self.has_prior():
            return scores
        return scores + self.item_prior()[None, :]

    def user_embeddings(self) -> np.ndarray:
        """``(U, D)``: each user's state after their last ``max_len`` training items (``(U, D +
        1)``, a last 1, with the popularity prior: inner products are :meth:`score_all`)."""
        return self._with_one(self.user_states.float().cpu().numpy())

    @torch.no_grad()
    def item_embeddings(self) -> np.ndarray:
        """``(I, D)``: the tied item embeddings (``(I, D + 1)``, the prior last, with it)."""
        items = self.net.item_vectors().float().cpu().numpy()
        if not self.has_prior():
            return items
        return np.hstack([items, self.item_prior()[:, None]])

    # --- persistence -------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "max_len": self.max_len,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "dropout": self.dropout,
            "n_negatives": self.n_negatives,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "group_sizes": list(self.group_sizes),
            "group_output": self.group_output,
            "user_group_sizes": list(self.user_group_sizes),
            "popularity_weight": self.popularity_weight,
            "exposure_weight": self.exposure_weight,
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any], device: str | None = None) -> SequentialRetriever:
        cfg = {**LEGACY_DEFAULTS, **cfg}  # configs saved before a key existed: old behaviour
        return cls(**cfg, device=device)

    def state(self) -> dict[str, torch.Tensor]:
        out = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        return {
            **out,
            "histories": self.histories,
            "user_states": self.user_states,
            "item_counts": self.item_counts,
            "item_exposure": self.item_exposure,
        }

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        expected = {
            "histories": (self.n_users, self.max_len),
            "user_states": (self.n_users, self.dim),
        }
        for key, shape in expected.items():
            if key not in state:
                raise ValueError(f"{self.name} weights: missing tensor {key!r}")
            if tuple(state[key].shape) != shape:
                raise ValueError(
                    f"{self.name} weights: tensor {key!r} has shape {tuple(state[key].shape)}, "
                    f"config says {shape}"
                )
        net = {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}
        try:
            self.net.load_state_dict(net)
        except RuntimeError as exc:
            raise ValueError(f"{self.name} weights do not fit the network ({exc})") from exc
        self.histories = state["histories"].to(torch.int64)
        self.user_states = state["user_states"].to(self.device, torch.float32)
        self.item_counts = self._saved_counts(state.get("item_counts"))
        self.item_exposure = self._saved_counts(state.get("item_exposure"), "item_exposure")
        if self.group_sizes:
            self.item_codes = self.net.item_groups[1 : self.n_items + 1].cpu() - 1
        if self.user_group_sizes:
            self.user_codes = self.net.user_groups.cpu() - 1

    def _saved_counts(self, counts: torch.Tensor | None, key: str = "item_counts") -> torch.Tensor:
        """The saved ``item_counts`` / ``item_exposure`` ``(I,)``; weights saved before the prior
        / the correction have none (zeros, allowed only at its weight 0)."""
        if counts is None:
            weight = self.popularity_weight if key == "item_counts" else self.exposure_weight
            if weight:
                raise ValueError(f"{self.name} weights: missing tensor {key!r}")
            return torch.zeros(self.n_items)
        if tuple(counts.shape) != (self.n_items,):
            raise ValueError(
                f"{self.name} weights: tensor {key!r} has shape {tuple(counts.shape)}, "
                f"config says ({self.n_items},)"
            )
        return counts.detach().cpu().float()


@register
class GRU4Rec(SequentialRetriever):
    """GRU over the item sequence (Hidasi et al. 2016); see the module docstring."""

    name = "gru4rec"
    kind = "gru4rec"


@register
class SASRec(SequentialRetriever):
    """Causal self-attention over the item sequence (Kang & McAuley 2018); see the module
    docstring."""

    name = "sasrec"
    kind = "sasrec"


@register
class BERT4Rec(SequentialRetriever):
    """Bidirectional self-attention trained on the Cloze task (Sun et al. 2019); see the module
    docstring. ``mask_prob``: the share of a window's items masked in training."""

    name = "bert4rec"
    kind = "bert4rec"

    def __init__(self, *, mask_prob: float = 0.2, **kwargs: Any) -> None:
        if not 0.0 < mask_prob < 1.0:
            raise ValueError(f"bert4rec: mask_prob={mask_prob} is not in (0, 1)")
        self.mask_prob = float(mask_prob)
        super().__init__(**kwargs)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "mask_prob": self.mask_prob}

    def _windows(self, indptr: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Cloze windows ``(W, max_len)``: the inference input's length."""
        return training_windows(indptr, items, self.max_len - 1)

    def _predictions(
        self, batch: torch.Tensor, gen: torch.Generator, users: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cloze task on windows ``(B, L)`` (of user rows ``users`` ``(B,)``): the states
        ``(T, D)`` at the masked positions and the items ``(T,)`` (0-based) they hide."""
        masked = (torch.rand(batch.shape, generator=gen) < self.mask_prob).to(self.device)
        masked &= batch > 0
        masked[:, -1] |= ~masked.any(1)  # windows are left-padded: the last token is an item
        inputs = batch.masked_fill(masked, self.net.mask_token)
        return self.net(inputs, self._on_device(users))[masked], batch[masked] - 1

    def _query(self, tokens: torch.Tensor) -> torch.Tensor:
        """The last ``max_len - 1`` items of each window ``(B, max_len)``, then ``[MASK]``."""
        mask = torch.full_like(tokens[:, :1], self.net.mask_token)
        return torch.cat([tokens[:, 1:], mask], dim=1)
