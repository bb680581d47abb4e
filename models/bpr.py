"""Matrix factorization trained with the BPR loss (Rendle et al. 2009; chapter section 11.2:
"BPR loss assumes observed > unobserved"), in PyTorch.

Score ``x_ui = p_u . q_i + b_i`` (``P`` ``(U, F)`` user factors, ``Q`` ``(I, F)`` item factors,
``b`` ``(I,)`` item biases). Every nonzero of the ``(U, I)`` interaction matrix is a positive
``(u, i+)``; each epoch visits every positive once, in a seeded random order, and pairs it with
one item ``i-`` drawn uniformly among the items ``u`` has no interaction with (:func:`sample_negatives`).
Per triple the loss is

    ``-log sigmoid(x_ui+ - x_ui-) + lambda (|p_u|^2 + |q_i+|^2 + |q_i-|^2 + b_i+^2 + b_i-^2)``

(L2 on the rows the triple touches, as in the paper's SGD). ``optimizer="adam"`` takes Adam steps
on the batch's mean loss; ``optimizer="sgd"`` takes plain SGD steps on the batch's summed loss,
so each triple moves its rows by ``lr`` times its own gradient, the paper's per-sample update.

Embeddings: users ``[p_u, 1]``, items ``[q_i, b_i]`` (``F + 1`` columns), whose inner product is
exactly the score, so a FAISS inner-product index ranks items as :meth:`BPR.score_all` does.

Shapes: ``U`` users, ``I`` items, ``F`` factors, ``P`` positives, ``B`` batch. Deterministic under
``seed`` on CPU for a given thread count (initial factors from a private ``torch.Generator``,
order and negatives from a private ``numpy`` generator: global RNG state does not matter).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from models.base import Retriever, pick_device, register
from pipelines.core.progress import progress as progress_bar

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")
#: redraws of a negative that hit one of the user's positives before it is kept anyway
_NEGATIVE_TRIES = 20


def positive_pairs(interactions: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The positives of a ``(U, I)`` matrix (every cell > 0): ``(users, items, keys)``, each
    int64 ``(P,)``; ``keys = user * I + item``, sorted, for :func:`sample_negatives`.
    ``ValueError`` when there is none."""
    m = sp.csr_matrix(interactions, dtype=np.float32)
    m.sum_duplicates()
    coo = m.tocoo()
    keep = coo.data > 0
    users, items = coo.row[keep].astype(np.int64), coo.col[keep].astype(np.int64)
    if len(users) == 0:
        raise ValueError("fit: the interaction matrix has no positive cell")
    return users, items, np.sort(users * m.shape[1] + items)


def sample_negatives(
    users: np.ndarray, n_items: int, keys: np.ndarray, rng: np.random.Generator, n: int = 1
) -> np.ndarray:
    """``n`` items per user of ``users`` ``(N,)``, uniform over the items the user has no
    positive for (``keys``: sorted ``user * n_items + item`` of the positives): int64 ``(N, n)``.

    Draws uniformly and redraws the hits up to ``_NEGATIVE_TRIES`` times (a user who has every
    item may keep a positive)."""
    neg = rng.integers(0, n_items, size=(len(users), n), dtype=np.int64)
    for _ in range(_NEGATIVE_TRIES):
        cand = users[:, None] * n_items + neg
        pos = np.minimum(np.searchsorted(keys, cand), len(keys) - 1)
        hit = keys[pos] == cand
        if not hit.any():
            break
        neg[hit] = rng.integers(0, n_items, size=int(hit.sum()), dtype=np.int64)
    return neg


@register
class BPR(Retriever):
    """MF with the BPR loss over sampled ``(u, i+, i-)`` triples; see the module docstring."""

    name = "bpr"

    def __init__(
        self,
        factors: int = 64,
        lr: float = 0.01,
        regularization: float = 1e-4,
        epochs: int = 30,
        batch_size: int = 1024,
        optimizer: str = "adam",
        seed: int = 0,
        device: str | None = None,
        n_users: int = 0,
        n_items: int = 0,
    ) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={optimizer!r}: expected one of {OPTIMIZERS}")
        if factors < 1 or lr <= 0 or regularization < 0 or epochs < 0 or batch_size < 1:
            raise ValueError(
                f"bad BPR hyper-parameters: factors={factors} lr={lr} "
                f"regularization={regularization} epochs={epochs} batch_size={batch_size}"
            )
        self.factors = int(factors)
        self.lr = float(lr)
        self.regularization = float(regularization)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.optimizer = optimizer
        self.seed = int(seed)
        self.device = pick_device(device)
        self.n_users = int(n_users)
        self.n_items = int(n_items)
        self.user_factors = torch.zeros(self.n_users, self.factors, device=self.device)
        self.item_factors = torch.zeros(self.n_items, self.factors, device=self.device)
        self.item_bias = torch.zeros(self.n_items, device=self.device)
        #: mean ``-log sigmoid(x_ui+ - x_ui-)`` of each epoch (without the L2 term)
        self.loss_history: list[float] = []

    # --- training ----------------------------------------------------------------------------
    def fit(self, interactions: sp.csr_matrix, progress: bool = True, **kwargs: Any) -> BPR:
        """Train on a ``(U, I)`` matrix; every cell > 0 is a positive (values are not weights)."""
        users, items, keys = positive_pairs(interactions)
        self.n_users, self.n_items = interactions.shape
        gen = torch.Generator().manual_seed(self.seed)
        scale = 0.1 / np.sqrt(self.factors)
        dev = self.device
        p = (torch.randn(self.n_users, self.factors, generator=gen) * scale).to(dev)
        q = (torch.randn(self.n_items, self.factors, generator=gen) * scale).to(dev)
        b = torch.zeros(self.n_items, device=dev)
        params = [t.requires_grad_() for t in (p, q, b)]
        if self.optimizer == "adam":
            opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=self.lr)
        else:
            opt = torch.optim.SGD(params, lr=self.lr)
        rng = np.random.default_rng(self.seed)
        log.info(
            "BPR fit: %d users x %d items, %d positives, %d factors, %d epochs of %s on %s",
            self.n_users, self.n_items, len(users), self.factors, self.epochs, self.optimizer, dev,
        )  # fmt: skip
        start = time.perf_counter()
        self.loss_history = []
        for _ in progress_bar(range(self.epochs), desc="BPR", unit="epoch", enabled=progress):
            self.loss_history.append(self._epoch(users, items, keys, (p, q, b), opt, rng))
        self.user_factors, self.item_factors, self.item_bias = (t.detach() for t in (p, q, b))
        log.info(
            "BPR fit done in %.2fs, loss %s",
            time.perf_counter() - start,
            " -> ".join(f"{x:.4f}" for x in self.loss_history[:: max(1, self.epochs // 4)]),
        )
        return self

    def _epoch(
        self,
        users: np.ndarray,
        items: np.ndarray,
        keys: np.ndarray,
        params: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        opt: torch.optim.Optimizer,
        rng: np.random.Generator,
    ) -> float:
        """One pass over the positives ``(P,)`` in a random order, one sampled negative each;
        returns the mean BPR term."""
        p, q, b = params
        order = rng.permutation(len(users))
        u_all, pos_all = users[order], items[order]
        neg_all = sample_negatives(u_all, self.n_items, keys, rng)[:, 0]
        dev = self.device
        total = 0.0
        for s in range(0, len(order), self.batch_size):
            u, i, j = (
                torch.from_numpy(a[s : s + self.batch_size]).to(dev)
                for a in (u_all, pos_all, neg_all)
            )
            pu, qi, qj = p[u], q[i], q[j]
            diff = (pu * (qi - qj)).sum(1) + b[i] - b[j]
            bpr = F.softplus(-diff)  # -log sigmoid(diff)
            l2 = (pu * pu).sum(1) + (qi * qi).sum(1) + (qj * qj).sum(1) + b[i] ** 2 + b[j] ** 2
            loss = bpr + self.regularization * l2
            loss = loss.mean() if self.optimizer == "adam" else loss.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(bpr.detach().sum())
        return total / max(len(order), 1)

    # --- scoring -----------------------------------------------------------------------------
    def _index(self, ids: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.device)

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """``x_ui = p_u . q_i + b_i`` per pair: ``(N,)`` float32."""
        u, i = self._index(users), self._index(items)
        s = (self.user_factors[u] * self.item_factors[i]).sum(1) + self.item_bias[i]
        return s.float().cpu().numpy()

    def score_all(self, users: np.ndarray) -> np.ndarray:
        """``(B,)`` → float32 ``(B, I)``."""
        u = self._index(users)
        s = self.user_factors[u] @ self.item_factors.T + self.item_bias[None, :]
        return s.float().cpu().numpy()

    def user_embeddings(self) -> np.ndarray:
        """``(U, F + 1)`` = ``[p_u, 1]``."""
        ones = torch.ones(self.n_users, 1, device=self.device)
        return torch.cat([self.user_factors, ones], dim=1).float().cpu().numpy()

    def item_embeddings(self) -> np.ndarray:
        """``(I, F + 1)`` = ``[q_i, b_i]``: the inner product with a user's is the score."""
        y = torch.cat([self.item_factors, self.item_bias[:, None]], dim=1)
        return y.float().cpu().numpy()

    # --- persistence -------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "factors": self.factors,
            "lr": self.lr,
            "regularization": self.regularization,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "seed": self.seed,
            "n_users": self.n_users,
            "n_items": self.n_items,
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any], device: str | None = None) -> BPR:
        return cls(**cfg, device=device)

    def state(self) -> dict[str, torch.Tensor]:
        return {
            "user_factors": self.user_factors,
            "item_factors": self.item_factors,
            "item_bias": self.item_bias,
        }

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        expected = {
            "user_factors": (self.n_users, self.factors),
            "item_factors": (self.n_items, self.factors),
            "item_bias": (self.n_items,),
        }
        for key, shape in expected.items():
            if key not in state:
                raise ValueError(f"BPR weights: missing tensor {key!r}")
            if tuple(state[key].shape) != shape:
                raise ValueError(
                    f"BPR weights: tensor {key!r} has shape {tuple(state[key].shape)}, "
                    f"config says {shape}"
                )
        for key in expected:
            setattr(self, key, state[key].to(self.device, torch.float32))
