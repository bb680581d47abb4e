"""Neural collaborative filtering (NCF, He et al. 2017; the chapter's listing, section 13.1), in
PyTorch: a GMF tower and an MLP tower fused by a final layer (NeuMF).

- **GMF tower**: its own user and item embeddings ``(U, F)``, ``(I, F)``; their elementwise
  product ``g_ui = p_u * q_i`` ``(F,)`` (matrix factorization with a learned weight per factor).
- **MLP tower** (the chapter's listing): its own embeddings ``(U, D)``, ``(I, D)``, concatenated
  ``[p'_u || q'_i]`` ``(2D,)`` → ``Linear + ReLU`` per entry of ``layers`` (default 128, 64, 32) →
  ``m_ui`` ``(layers[-1],)``.
- **Fusion**: ``logit_ui = w . [g_ui || m_ui] + c``, one ``Linear(F + layers[-1], 1)``; the
  click probability is ``sigmoid(logit_ui)``.

Training: binary cross-entropy (with logits) on every positive (each cell > 0 of the ``(U, I)``
matrix) against ``n_negatives`` (default 4, the chapter's 1:4) items drawn per positive and per
epoch, uniformly among the items the user has no interaction with
(:func:`models.bpr.sample_negatives`); positives and negatives shuffled together, Adam on
``batch_size`` examples a step (``weight_decay``: L2 on every weight).

Scores (``score``, ``score_all``, what ``recommend`` ranks) are the logits: the sigmoid is
monotone, and in float32 it rounds large logits to exactly 1.0, which would tie the best items.
``score_all`` never builds the ``(B, I, 2D)`` concatenation: the first MLP layer is split into
its user and item halves (``W [a || b] = W_u a + W_i b``), each computed once per user and per
item, and the GMF part of the fusion is one ``(B, F) @ (F, I)`` product; pairs are scored in
chunks of ``_CHUNK_PAIRS``. Same numbers as the training forward pass up to float rounding.

**No embeddings.** NCF's score is not an inner product of a user vector and an item vector (the
MLP tower mixes them non-linearly), so, as the :class:`models.base.Retriever` contract says for
such models, :meth:`NCF.user_embeddings` / :meth:`NCF.item_embeddings` are ``None``: no FAISS
index is built over it, and it retrieves by ``score_all`` over the whole catalog (the GMF vectors
alone would rank differently from the model's scores).

Shapes: ``U`` users, ``I`` items, ``F`` = ``factors``, ``D`` = ``embed_dim``, ``B`` users,
``N`` pairs. Deterministic under ``seed`` on CPU for a given thread count (weights initialised
under a forked, seeded torch RNG; order and negatives from a private ``numpy`` generator).
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
from models.bpr import positive_pairs, sample_negatives
from pipelines.core.progress import progress as progress_bar

log = logging.getLogger(__name__)

#: (user, item) pairs scored at once by ``score_all`` (bounds the ``(pairs, layers[0])``
#: activations to ~32 MB at 128 units)
_CHUNK_PAIRS = 1 << 16


class NeuMF(nn.Module):
    """GMF + MLP towers fused by a final linear layer; ``forward`` → logits ``(N,)``."""

    def __init__(
        self, n_users: int, n_items: int, factors: int, embed_dim: int, layers: Sequence[int]
    ) -> None:
        super().__init__()
        self.user_gmf = nn.Embedding(n_users, factors)
        self.item_gmf = nn.Embedding(n_items, factors)
        self.user_mlp = nn.Embedding(n_users, embed_dim)
        self.item_mlp = nn.Embedding(n_items, embed_dim)
        mlp: list[nn.Module] = []
        width = 2 * embed_dim
        for hidden in layers:
            mlp.extend([nn.Linear(width, hidden), nn.ReLU()])
            width = hidden
        self.mlp = nn.Sequential(*mlp)
        self.out = nn.Linear(factors + width, 1)
        for emb in (self.user_gmf, self.item_gmf, self.user_mlp, self.item_mlp):
            nn.init.normal_(emb.weight, std=0.01)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``users``, ``items`` int64 ``(N,)`` → logits ``(N,)`` (the chapter's concatenation)."""
        g = self.user_gmf(users) * self.item_gmf(items)  # (N, F)
        m = self.mlp(torch.cat([self.user_mlp(users), self.item_mlp(items)], dim=-1))
        return self.out(torch.cat([g, m], dim=-1)).squeeze(-1)

    def first_layer_halves(
        self, users: torch.Tensor, items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first MLP layer's pre-activation split by side: ``(len(users), H)`` (with the
        bias) and ``(len(items), H)``, so that pair ``(u, i)`` gets ``a[u] + b[i]``."""
        first = self.mlp[0]
        d = self.user_mlp.embedding_dim
        a = self.user_mlp(users) @ first.weight[:, :d].T + first.bias
        b = self.item_mlp(items) @ first.weight[:, d:].T
        return a, b

    def head(self, gmf: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from the GMF term ``w_g . g`` ``(...)`` and the first MLP layer's
        pre-activation ``(..., H)``: the rest of the MLP tower and the fusion layer."""
        m = self.mlp[1:](hidden)
        width = m.shape[-1]
        w_m = self.out.weight[0, -width:]
        return gmf + m @ w_m + self.out.bias[0]


@register
class NCF(Retriever):
    """NeuMF (GMF + MLP) trained with BCE and sampled negatives; see the module docstring."""

    name = "ncf"

    def __init__(
        self,
        factors: int = 32,
        embed_dim: int = 64,
        layers: Sequence[int] = (128, 64, 32),
        n_negatives: int = 4,
        epochs: int = 20,
        batch_size: int = 1024,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
        device: str | None = None,
        n_users: int = 0,
        n_items: int = 0,
    ) -> None:
        layers = [int(h) for h in layers]
        if (
            factors < 1
            or embed_dim < 1
            or not layers
            or min(layers) < 1
            or n_negatives < 1
            or epochs < 0
            or batch_size < 1
            or lr <= 0
            or weight_decay < 0
        ):
            raise ValueError(
                f"bad NCF hyper-parameters: factors={factors} embed_dim={embed_dim} "
                f"layers={layers} n_negatives={n_negatives} epochs={epochs} "
                f"batch_size={batch_size} lr={lr} weight_decay={weight_decay}"
            )
        self.factors = int(factors)
        self.embed_dim = int(embed_dim)
        self.layers = layers
        self.n_negatives = int(n_negatives)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.seed = int(seed)
        self.device = pick_device(device)
        self.n_users = int(n_users)
        self.n_items = int(n_items)
        #: mean BCE per example of each epoch
        self.loss_history: list[float] = []
        self.net = self._build()

    def _build(self) -> NeuMF:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = NeuMF(self.n_users, self.n_items, self.factors, self.embed_dim, self.layers)
        return net.to(self.device).eval()

    # --- training ----------------------------------------------------------------------------
    def training_examples(
        self,
        users: np.ndarray,
        items: np.ndarray,
        keys: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One epoch's examples, shuffled: ``(users, items, labels)``, each ``(P * (1 + n))``
        (``n`` = ``n_negatives``): every positive ``(P,)`` with label 1 and ``n`` sampled
        negatives of its user with label 0."""
        neg = sample_negatives(users, self.n_items, keys, rng, self.n_negatives)
        n = self.n_negatives
        ex_u = np.concatenate([users, np.repeat(users, n)])
        ex_i = np.concatenate([items, neg.ravel()])
        labels = np.concatenate([np.ones(len(users)), np.zeros(len(users) * n)])
        order = rng.permutation(len(ex_u))
        return ex_u[order], ex_i[order], labels[order].astype(np.float32)

    def fit(self, interactions: sp.csr_matrix, progress: bool = True, **kwargs: Any) -> NCF:
        """Train on a ``(U, I)`` matrix; every cell > 0 is a positive (values are not weights)."""
        users, items, keys = positive_pairs(interactions)
        self.n_users, self.n_items = interactions.shape
        self.net = self._build().train()
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        rng = np.random.default_rng(self.seed)
        log.info(
            "NCF fit: %d users x %d items, %d positives x (1 + %d negatives), GMF %d + MLP %d %s, "
            "%d epochs on %s",
            self.n_users, self.n_items, len(users), self.n_negatives, self.factors,
            self.embed_dim, self.layers, self.epochs, self.device,
        )  # fmt: skip
        start = time.perf_counter()
        self.loss_history = []
        for _ in progress_bar(range(self.epochs), desc="NCF", unit="epoch", enabled=progress):
            examples = self.training_examples(users, items, keys, rng)
            self.loss_history.append(self._epoch(examples, opt))
        self.net.eval()
        log.info(
            "NCF fit done in %.2fs, loss %s",
            time.perf_counter() - start,
            " -> ".join(f"{x:.4f}" for x in self.loss_history[:: max(1, self.epochs // 4)]),
        )
        return self

    def _epoch(
        self, examples: tuple[np.ndarray, np.ndarray, np.ndarray], opt: torch.optim.Optimizer
    ) -> float:
        """Adam steps over ``examples`` in ``batch_size`` slices; returns the mean BCE."""
        dev = self.device
        ex_u, ex_i, labels = (torch.from_numpy(a).to(dev) for a in examples)
        total = 0.0
        for s in range(0, len(ex_u), self.batch_size):
            sl = slice(s, s + self.batch_size)
            logits = self.net(ex_u[sl], ex_i[sl])
            loss = F.binary_cross_entropy_with_logits(logits, labels[sl], reduction="sum")
            opt.zero_grad(set_to_none=True)
            (loss / len(logits)).backward()
            opt.step()
            total += float(loss.detach())
        return total / max(len(ex_u), 1)

    # --- scoring -----------------------------------------------------------------------------
    def _index(self, ids: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.device)

    def _gmf_weight(self) -> torch.Tensor:
        return self.net.out.weight[0, : self.factors]

    @torch.no_grad()
    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Logits per pair: ``(N,)`` float32 (module docstring)."""
        net = self.net
        u, i = self._index(users), self._index(items)
        out = torch.empty(len(u), device=self.device)
        for s in range(0, len(u), _CHUNK_PAIRS):
            uu, ii = u[s : s + _CHUNK_PAIRS], i[s : s + _CHUNK_PAIRS]
            gmf = (net.user_gmf(uu) * self._gmf_weight() * net.item_gmf(ii)).sum(-1)
            a, b = net.first_layer_halves(uu, ii)
            out[s : s + len(uu)] = net.head(gmf, a + b)
        return out.float().cpu().numpy()

    @torch.no_grad()
    def score_all(self, users: np.ndarray) -> np.ndarray:
        """Logits of every item for each user: ``(B,)`` → float32 ``(B, I)``."""
        net = self.net
        u = self._index(users)
        all_items = torch.arange(self.n_items, device=self.device)
        item_gmf = net.item_gmf(all_items)  # (I, F)
        out = torch.empty(len(u), self.n_items, device=self.device)
        step = max(1, _CHUNK_PAIRS // max(self.n_items, 1))
        for s in range(0, len(u), step):
            uu = u[s : s + step]
            gmf = (net.user_gmf(uu) * self._gmf_weight()) @ item_gmf.T  # (b, I)
            a, b = net.first_layer_halves(uu, all_items)
            out[s : s + len(uu)] = net.head(gmf, a[:, None, :] + b[None, :, :])
        return out.float().cpu().numpy()

    # --- persistence -------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "embed_dim": self.embed_dim,
            "layers": list(self.layers),
            "n_negatives": self.n_negatives,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
            "n_users": self.n_users,
            "n_items": self.n_items,
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any], device: str | None = None) -> NCF:
        return cls(**cfg, device=device)

    def state(self) -> dict[str, torch.Tensor]:
        return dict(self.net.state_dict())

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        try:
            self.net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"NCF weights do not fit the config: {exc}") from exc
        self.net.eval()
