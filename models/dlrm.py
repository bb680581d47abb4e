"""DLRM ranker: click probability of (user, item) feature rows, with swappable interactions.

Shapes: ``B`` batch of (user, item) rows, ``Nd`` dense features, ``F`` sparse (categorical)
features, ``D`` = ``dim`` embedding dimension. Blocks (torchrec ``models/dlrm.py`` shape):

- :class:`DenseNormalizer` ``(B, Nd)`` raw → ``(B, Nd)``: non-finite values (NaN, ±inf) are
  replaced by the saved per-feature default (training median), counts go through
  ``sign(x) * log1p(|x|)`` (per feature, ``log_features``), then ``(x - mean) / std`` with the
  training statistics, clipped to ±``NORM_CLIP``. The defaults and statistics are buffers saved
  with the weights, so serving feeds raw features.
- :class:`DenseArch` (bottom MLP) ``(B, Nd)`` → ``(B, D)``.
- :class:`SparseArch` ``(B, F)`` int64 bucket indices → ``(B, F, D)``: one embedding table per
  categorical feature. Row 0 of every table is the out-of-vocabulary / missing bucket.
- interaction arch, chosen by one argument (``interaction=``):

  * ``dot`` (DLRM, default) :class:`DotInteraction`: the dense vector and the ``F`` embeddings are
    ``F + 1`` vectors; all pairwise dot products (strict upper triangle, ``(F + 1) F / 2`` =
    ``C(F + 1, 2)`` of them) concatenated with the dense vector → ``(B, D + (F + 1) F / 2)``.
  * ``cross`` (DCN) :class:`CrossInteraction`: ``x0`` = the ``F + 1`` vectors flattened,
    ``(B, (F + 1) D)``; ``cross_layers`` layers ``x_{l+1} = x0 (x_l^T w_l) + b_l + x_l``.
  * ``fm`` (DeepFM) :class:`FMInteraction`: the flattened vectors (the deep part's input) plus the
    FM second-order term ``sum_{i<j} <v_i, v_j> = ½(‖Σ v_i‖² − Σ ‖v_i‖²)`` (O(kN)), which is also
    added straight to the logit → ``(B, (F + 1) D + 1)``. It has no first-order term.
  * ``deepfm`` (DeepFM as the chapter, §13.3): ``fm`` plus the first-order term
    (:class:`FirstOrder`, :class:`DeepFMNet`): ``logit = w0 + Σ_i w_i x_i + Σ_{i<j} <v_i, v_j>
    + DNN(x)`` with ``w_i`` one weight per normalized dense feature and per category bucket and
    ``w0`` the over arch's output bias. ``fm`` is kept as it was, so saved ``fm`` models load.
  * ``linear``: no interactions at all: :class:`LogisticNet`, logistic regression on the same
    normalized dense features and one weight per category bucket (one-hot / hashed) — the
    baseline, sharing every encoding detail with the DLRM.

- :class:`OverArch` (top MLP) ``(B, out_dim)`` → ``(B,)`` logit.

The loss lives outside the model (:func:`bce_loss`: BCE with logits, optional per-example weights).

Categorical values are keyed by their text (``str(value)``; integral floats as integers). At fit
a vocabulary is built per feature (values seen at least ``min_count`` times, most frequent first):
index ``1 + position``, index 0 = unseen / missing. A feature with more than ``max_vocab``
distinct values (or named in ``hash_features``) is hashed instead: index ``1 + h(text) % buckets``
with pandas' fixed-key SipHash (the same in every process), 0 = missing. Vocabularies live in the
JSON config; weights and normalization buffers in ``weights.pt``: nothing is ever unpickled.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from models.base import Ranker, pick_device, register
from pipelines.core import distributed as ddp

log = logging.getLogger(__name__)

INTERACTIONS = ("dot", "cross", "fm", "deepfm", "linear")
INFERENCE_MODES = ("eager", "script", "trace")
NORM_CLIP = 10.0
"""Normalized dense values are clipped to ±this many standard deviations."""
COUNT_PATTERN = re.compile(r"(count|_(impressions|clicks|purchases|ratings)_\d+d$|price)")
"""Dense features whose name matches get ``log1p`` when ``log_features`` is left to ``None``."""


# --- blocks -------------------------------------------------------------------------------------


def _mlp(sizes: Sequence[int], last_activation: bool) -> nn.Sequential:
    """Linear layers ``sizes[0] → sizes[1] → ...`` with ReLU between (and after, if asked)."""
    layers: list[nn.Module] = []
    for j in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[j], sizes[j + 1]))
        if j < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DenseNormalizer(nn.Module):
    """Raw dense features ``(B, Nd)`` → finite normalized ``(B, Nd)``.

    Buffers (saved with the weights): ``fill`` (Nd,) raw default for non-finite inputs (training
    median), ``log_mask`` (Nd,) bool (apply ``sign(x) log1p(|x|)``), ``mean`` / ``std`` (Nd,)
    statistics of the transformed training values.
    """

    def __init__(self, n_dense: int) -> None:
        super().__init__()
        self.register_buffer("fill", torch.zeros(n_dense))
        self.register_buffer("log_mask", torch.zeros(n_dense, dtype=torch.bool))
        self.register_buffer("mean", torch.zeros(n_dense))
        self.register_buffer("std", torch.ones(n_dense))
        self.clip = NORM_CLIP

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.where(torch.isfinite(x), x, self.fill)
        x = torch.where(self.log_mask, torch.sign(x) * torch.log1p(torch.abs(x)), x)
        return ((x - self.mean) / self.std).clamp(-self.clip, self.clip)


class DenseArch(nn.Module):
    """Bottom MLP: normalized dense ``(B, Nd)`` → ``(B, D)`` (ReLU after every layer).

    With ``Nd = 0`` the first layer has no inputs and the output is a learned constant.
    """

    def __init__(self, n_dense: int, hidden: Sequence[int], dim: int) -> None:
        super().__init__()
        self.mlp = _mlp([n_dense, *hidden, dim], last_activation=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class SparseArch(nn.Module):
    """One embedding table per categorical feature: indices ``(B, F)`` → ``(B, F, D)``.

    ``table_sizes[f]`` rows for feature ``f`` (row 0 = out-of-vocabulary / missing).
    """

    def __init__(self, table_sizes: Sequence[int], dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.tables = nn.ModuleList([nn.Embedding(int(n), dim) for n in table_sizes])
        for table in self.tables:
            nn.init.normal_(table.weight, std=0.05)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out: list[torch.Tensor] = []
        for f, table in enumerate(self.tables):
            out.append(table(idx[:, f]))
        if len(out) == 0:
            return torch.zeros(idx.shape[0], 0, self.dim, device=idx.device)
        return torch.stack(out, dim=1)


class DotInteraction(nn.Module):
    """DLRM: dense ``(B, D)`` + sparse ``(B, F, D)`` → ``(B, D + (F+1)F/2)``.

    The ``F + 1`` vectors' pairwise dot products (strict upper triangle of the Gram matrix),
    concatenated after the dense vector.
    """

    def __init__(self, n_sparse: int, dim: int) -> None:
        super().__init__()
        n = n_sparse + 1
        rows, cols = torch.triu_indices(n, n, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.out_dim = dim + n * (n - 1) // 2

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        v = torch.cat([dense.unsqueeze(1), sparse], dim=1)  # (B, F+1, D)
        gram = torch.bmm(v, v.transpose(1, 2))  # (B, F+1, F+1)
        return torch.cat([dense, gram[:, self.rows, self.cols]], dim=1)


class CrossInteraction(nn.Module):
    """DCN cross network over ``x0 = [dense, e_1..e_F]`` flattened, ``(B, (F+1) D)``.

    ``x_{l+1} = x0 * (x_l . w_l) + b_l + x_l`` for ``n_layers`` layers (``x0 x_l^T w_l`` computed
    as a scalar per row, O(d)); output ``(B, (F+1) D)``.
    """

    def __init__(self, n_sparse: int, dim: int, n_layers: int) -> None:
        super().__init__()
        width = (n_sparse + 1) * dim
        self.n_layers = n_layers
        self.w = nn.Parameter(torch.randn(n_layers, width) * (1.0 / width) ** 0.5)
        self.b = nn.Parameter(torch.zeros(n_layers, width))
        self.out_dim = width

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x0 = torch.cat([dense.unsqueeze(1), sparse], dim=1).flatten(1)  # (B, (F+1) D)
        x = x0
        for layer in range(self.n_layers):
            x = x0 * (x @ self.w[layer]).unsqueeze(1) + self.b[layer] + x
        return x


def fm_second_order(v: torch.Tensor) -> torch.Tensor:
    """FM term ``sum_{i<j} <v_i, v_j>`` of ``v`` ``(B, N, D)`` → ``(B,)`` in O(N D):
    ``½ (‖Σ_i v_i‖² − Σ_i ‖v_i‖²)``."""
    s = v.sum(dim=1)
    return 0.5 * (s.pow(2).sum(dim=1) - v.pow(2).sum(dim=(1, 2)))


def fm_second_order_explicit(v: torch.Tensor) -> torch.Tensor:
    """The same sum by the O(N² D) pairwise loop (the test's reference)."""
    n = v.shape[1]
    out = torch.zeros(v.shape[0], dtype=v.dtype)
    for i in range(n):
        for j in range(i + 1, n):
            out = out + (v[:, i] * v[:, j]).sum(dim=1)
    return out


class FMInteraction(nn.Module):
    """DeepFM: ``[dense, e_1..e_F]`` → ``(B, (F+1) D + 1)``: flattened vectors, then FM term.

    The FM term is the last column; :class:`DLRMNet` also adds it to the logit directly.
    """

    def __init__(self, n_sparse: int, dim: int) -> None:
        super().__init__()
        self.out_dim = (n_sparse + 1) * dim + 1

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        v = torch.cat([dense.unsqueeze(1), sparse], dim=1)  # (B, F+1, D)
        return torch.cat([v.flatten(1), fm_second_order(v).unsqueeze(1)], dim=1)


class OverArch(nn.Module):
    """Top MLP: ``(B, in_dim)`` → logit ``(B,)``."""

    def __init__(self, in_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        self.mlp = _mlp([in_dim, *hidden, 1], last_activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).squeeze(1)

    def set_output_bias(self, value: float) -> None:
        last = self.mlp[-1]
        assert isinstance(last, nn.Linear)
        nn.init.constant_(last.bias, value)


def make_interaction(kind: str, n_sparse: int, dim: int, cross_layers: int = 3) -> nn.Module:
    """The interaction arch named ``kind`` (``dot``, ``cross``, ``fm`` or ``deepfm``); has
    ``out_dim``."""
    if kind == "dot":
        return DotInteraction(n_sparse, dim)
    if kind == "cross":
        return CrossInteraction(n_sparse, dim, cross_layers)
    if kind in ("fm", "deepfm"):
        return FMInteraction(n_sparse, dim)
    raise ValueError(f"unknown interaction {kind!r}: expected one of {INTERACTIONS}")


class DLRMNet(nn.Module):
    """Raw dense ``(B, Nd)`` float32 + sparse indices ``(B, F)`` int64 → logits ``(B,)``."""

    def __init__(
        self,
        n_dense: int,
        table_sizes: Sequence[int],
        dim: int,
        bottom_mlp: Sequence[int],
        top_mlp: Sequence[int],
        interaction: str = "dot",
        cross_layers: int = 3,
    ) -> None:
        super().__init__()
        self.normalizer = DenseNormalizer(n_dense)
        self.dense_arch = DenseArch(n_dense, bottom_mlp, dim)
        self.sparse_arch = SparseArch(table_sizes, dim)
        self.interaction_arch = make_interaction(interaction, len(table_sizes), dim, cross_layers)
        self.over_arch = OverArch(int(self.interaction_arch.out_dim), top_mlp)
        self.fm_direct = interaction in ("fm", "deepfm")

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        d = self.dense_arch(self.normalizer(dense))
        e = self.sparse_arch(sparse)
        z = self.interaction_arch(d, e)
        logit = self.over_arch(z)
        if self.fm_direct:
            logit = logit + z[:, -1]
        return logit

    def set_output_bias(self, value: float) -> None:
        self.over_arch.set_output_bias(value)


class FirstOrder(nn.Module):
    """First-order (linear) term ``Σ_i w_i x_i``: ``w · x`` over normalized dense ``x``
    ``(B, Nd)`` plus one weight per category bucket ``Σ_f w_f[idx_f]`` over indices ``(B, F)``
    → ``(B,)``. No bias (the caller's output bias is ``w0``); every weight starts at zero."""

    def __init__(self, n_dense: int, table_sizes: Sequence[int]) -> None:
        super().__init__()
        self.dense = nn.Linear(n_dense, 1, bias=False)
        nn.init.zeros_(self.dense.weight)
        self.sparse_arch = SparseArch(table_sizes, 1)
        for table in self.sparse_arch.tables:
            nn.init.zeros_(table.weight)

    def forward(self, x: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.dense(x).squeeze(1) + self.sparse_arch(sparse).sum(dim=(1, 2))


class DeepFMNet(DLRMNet):
    """DeepFM (chapter §13.3): the ``fm`` :class:`DLRMNet` plus :class:`FirstOrder`:
    ``logit = w0 + Σ_i w_i x_i + Σ_{i<j} <v_i, v_j> + DNN`` → ``(B,)``. The FM vectors are the
    bottom MLP's output and the ``F`` embeddings, shared with the DNN (the over arch)."""

    def __init__(
        self,
        n_dense: int,
        table_sizes: Sequence[int],
        dim: int,
        bottom_mlp: Sequence[int],
        top_mlp: Sequence[int],
    ) -> None:
        super().__init__(n_dense, table_sizes, dim, bottom_mlp, top_mlp, "deepfm")
        self.first_order = FirstOrder(n_dense, table_sizes)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x = self.normalizer(dense)
        e = self.sparse_arch(sparse)
        z = self.interaction_arch(self.dense_arch(x), e)
        return self.over_arch(z) + z[:, -1] + self.first_order(x, sparse)


class LogisticNet(nn.Module):
    """Logistic regression: ``w · normalize(dense) + Σ_f w_f[idx_f] + b`` → logits ``(B,)``.

    The per-bucket weights ``w_f`` are one-hot (or hashed one-hot) weights.
    """

    def __init__(self, n_dense: int, table_sizes: Sequence[int]) -> None:
        super().__init__()
        self.normalizer = DenseNormalizer(n_dense)
        self.linear = nn.Linear(n_dense, 1)
        self.sparse_arch = SparseArch(table_sizes, 1)
        for table in self.sparse_arch.tables:
            nn.init.zeros_(table.weight)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x = self.normalizer(dense)
        return self.linear(x).squeeze(1) + self.sparse_arch(sparse).sum(dim=(1, 2))

    def set_output_bias(self, value: float) -> None:
        nn.init.constant_(self.linear.bias, value)


def bce_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Binary cross-entropy with logits, ``(B,)`` each; with ``weights`` the weighted mean
    ``Σ w l / Σ w``."""
    loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    if weights is None:
        return loss.mean()
    return (loss * weights).sum() / weights.sum().clamp_min(1e-12)


# --- categorical encoding -------------------------------------------------------------------------


def category_keys(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Column → ``(keys object (N,), missing bool (N,))``: the text of each value; floats that
    are whole numbers as integers (``3.0`` → ``"3"``); missing values (None/NaN) flagged."""
    missing = col.isna().to_numpy()
    if pd.api.types.is_float_dtype(col):
        x = col.to_numpy(dtype=np.float64, na_value=np.nan)
        ok = np.isfinite(x)
        if ok.any() and np.all(x[ok] == np.round(x[ok])):
            col = pd.Series(np.where(ok, x, 0).astype(np.int64), index=col.index)
    keys = col.astype(str).to_numpy(dtype=object)
    return keys, missing


def hash_bucket(keys: np.ndarray, buckets: int) -> np.ndarray:
    """Stable bucket in ``[1, buckets]`` of each text key (pandas' fixed-key SipHash)."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    h = pd.util.hash_array(np.asarray(keys, dtype=object), categorize=False)
    return (h % np.uint64(buckets)).astype(np.int64) + 1


def build_sparse_spec(
    col: pd.Series, name: str, max_vocab: int, hash_buckets: int, min_count: int = 1
) -> dict[str, Any]:
    """Vocabulary (``kind="vocab"``, ``values``) or hashing (``kind="hash"``, ``buckets``)."""
    keys, missing = category_keys(col)
    counts = pd.Series(keys[~missing]).value_counts()
    counts = counts[counts >= min_count]
    if len(counts) > max_vocab:
        log.info("%s: %d distinct values > max_vocab %d: hashed", name, len(counts), max_vocab)
        return {"name": name, "kind": "hash", "buckets": int(hash_buckets)}
    order = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return {"name": name, "kind": "vocab", "values": [str(k) for k, _ in order]}


def table_size(spec: dict[str, Any]) -> int:
    """Rows of the embedding table for ``spec`` (the OOV/missing row 0 included)."""
    return 1 + (len(spec["values"]) if spec["kind"] == "vocab" else int(spec["buckets"]))


# --- calibration ----------------------------------------------------------------------------------


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40, 40)))


def _logloss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()) if len(y) else float("nan")


def platt_fit(z: np.ndarray, y: np.ndarray, iters: int = 50) -> tuple[float, float]:
    """``(a, b)`` minimizing the logloss of ``sigmoid(a z + b)`` on logits ``z`` ``(N,)`` and
    labels ``y`` ``(N,)`` 0/1 (Newton steps from ``(1, 0)``, a tiny ridge for stability);
    ``a`` is floored at 1e-3 so the calibrated scores keep the order of ``z``. ``(1, 0)`` when
    ``y`` holds a single class."""
    if len(y) == 0 or y.min() == y.max():
        return 1.0, 0.0
    x = np.stack([z, np.ones_like(z)], axis=1)
    w = np.array([1.0, 0.0])
    for _ in range(iters):
        p = _sigmoid(x @ w)
        grad = x.T @ (p - y) + 1e-6 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w = w - step
        if np.abs(step).max() < 1e-8:
            break
    return max(float(w[0]), 1e-3), float(w[1])


# --- the ranker -----------------------------------------------------------------------------------


@register
class DLRMRanker(Ranker):
    """DLRM (or DCN / DeepFM / logistic) click model over a DataFrame of feature rows.

    Implements :class:`models.base.Ranker`. Every variant is this one class, chosen by
    ``interaction`` (module docstring); ``interaction="linear"`` is the logistic-regression
    baseline (``pipelines.ranking.train.fit_logistic_regression``, the ``ranker_lr`` model). All
    save under the registry name ``"dlrm"``. Subclasses change only the network
    (:meth:`_make_net`, :attr:`interactions`): ``models.wide_deep.WideDeepRanker``.

    ``fit(frame, label="label", weight=None)`` / ``predict_proba(frame) -> (N,)``. The frame holds
    the raw columns named by ``dense_features`` (numbers; counts, prices, rates...) and
    ``sparse_features`` (categories or ids). ``feature_service`` records which feature-store
    service (name and version, e.g. ``"ranker_v1"``) produced them, so serving asks for the same.
    After each encode ``last_report`` says how many values were non-finite (replaced by the saved
    default), missing categoricals and out-of-vocabulary values, per feature.
    """

    name = "dlrm"
    #: the ``interaction`` values this class accepts
    interactions: tuple[str, ...] = INTERACTIONS

    def __init__(
        self,
        dense_features: Sequence[str] = (),
        sparse_features: Sequence[str] = (),
        interaction: str = "dot",
        dim: int = 16,
        bottom_mlp: Sequence[int] = (64,),
        top_mlp: Sequence[int] = (64, 32),
        cross_layers: int = 3,
        log_features: Sequence[str] | None = None,
        max_vocab: int = 100_000,
        hash_buckets: int = 65_536,
        hash_features: Sequence[str] = (),
        min_count: int = 1,
        epochs: int = 4,
        batch_size: int = 2048,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
        feature_service: str = "",
        inference: str = "trace",
        sparse_specs: list[dict[str, Any]] | None = None,
        label: str = "label",
        history: list[dict[str, float]] | None = None,
        fit_report: dict[str, Any] | None = None,
        patience: int | None = None,
        calibration: dict[str, Any] | None = None,
        device: str | None = None,
    ) -> None:
        if interaction not in self.interactions:
            raise ValueError(
                f"unknown interaction {interaction!r}: expected one of {self.interactions}"
            )
        if inference not in INFERENCE_MODES:
            raise ValueError(f"unknown inference {inference!r}: expected one of {INFERENCE_MODES}")
        dup = set(dense_features) & set(sparse_features)
        if dup:
            raise ValueError(f"features both dense and sparse: {sorted(dup)}")
        if not dense_features and not sparse_features:
            raise ValueError("the ranker needs at least one dense or sparse feature")
        self.dense_features = [str(c) for c in dense_features]
        self.sparse_features = [str(c) for c in sparse_features]
        self.interaction = interaction
        self.dim = int(dim)
        self.bottom_mlp = [int(h) for h in bottom_mlp]
        self.top_mlp = [int(h) for h in top_mlp]
        self.cross_layers = int(cross_layers)
        self.log_features = None if log_features is None else [str(c) for c in log_features]
        self.max_vocab = int(max_vocab)
        self.hash_buckets = int(hash_buckets)
        self.hash_features = [str(c) for c in hash_features]
        self.min_count = int(min_count)
        self.epochs = int(epochs)
        self.batch_size = int(batch_size)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.seed = int(seed)
        self.feature_service = str(feature_service)
        self.inference = inference
        self.sparse_specs = sparse_specs
        self.label = label
        self.history = history or []
        self.fit_report = fit_report or {}
        self.patience = None if patience is None else int(patience)
        self.calibration = calibration
        self.device = pick_device(device)
        self.last_report: dict[str, Any] = {}
        self.net: nn.Module | None = None
        self._scorer: Any = None
        self._indexes: list[pd.Index | None] = []
        self._vocab_codes: dict[int, dict[str, int]] = {}  # encode_sparse_text's, built lazily
        if sparse_specs is not None:
            self._build_net()

    # --- features ---------------------------------------------------------------------------
    @property
    def feature_columns(self) -> list[str]:
        """Every raw column the model reads, dense first."""
        return [*self.dense_features, *self.sparse_features]

    @property
    def fitted(self) -> bool:
        return self.net is not None

    def _check_columns(self, frame: pd.DataFrame) -> None:
        missing = [c for c in self.feature_columns if c not in frame.columns]
        if missing:
            raise ValueError(
                f"frame lacks feature columns {missing} (model {self.feature_service or 'dlrm'} "
                f"reads {self.feature_columns}; frame has {list(frame.columns)})"
            )

    def _dense_raw(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw dense values ``(N, Nd)`` float32 (text that is not a number → NaN)."""
        out = np.empty((len(frame), len(self.dense_features)), dtype=np.float32)
        for j, name in enumerate(self.dense_features):
            col = frame[name]
            if pd.api.types.is_bool_dtype(col):
                col = col.astype("float64")
            elif not pd.api.types.is_numeric_dtype(col):
                col = pd.to_numeric(col.astype(object), errors="coerce")
            with np.errstate(over="ignore"):
                out[:, j] = col.to_numpy(dtype=np.float64, na_value=np.nan)
        return out

    def encode_sparse(
        self, frame: pd.DataFrame, report: dict[str, Any] | None = None
    ) -> np.ndarray:
        """Bucket indices ``(N, F)`` int64 of the sparse columns (0 = OOV/missing).

        ``frame`` needs the sparse feature columns (``sparse_specs`` names); missing / OOV counts
        per column go into ``report["missing"]`` / ``report["oov"]`` when a report is given.
        """
        assert self.sparse_specs is not None
        report = report if report is not None else {"missing": {}, "oov": {}}
        out = np.zeros((len(frame), len(self.sparse_specs)), dtype=np.int64)
        for j, spec in enumerate(self.sparse_specs):
            out[:, j] = self.encode_sparse_column(j, frame[spec["name"]], report)
        return out

    def encode_sparse_column(
        self, j: int, col: pd.Series, report: dict[str, Any] | None = None
    ) -> np.ndarray:
        """Bucket indices ``(N,)`` int64 of sparse feature ``j`` (``sparse_specs[j]``) for the
        values ``col`` (0 = OOV/missing); counts into ``report`` as :meth:`encode_sparse`."""
        assert self.sparse_specs is not None
        spec = self.sparse_specs[j]
        keys, missing = category_keys(col)
        if spec["kind"] == "vocab":
            index = self._indexes[j]
            assert index is not None
            idx = index.get_indexer(keys) + 1
            oov = int(((idx == 0) & ~missing).sum())
        else:
            idx = hash_bucket(keys, int(spec["buckets"]))
            oov = 0
        idx[missing] = 0
        if report is not None and missing.any():
            report["missing"][spec["name"]] = int(missing.sum())
        if report is not None and oov:
            report["oov"][spec["name"]] = oov
        return np.asarray(idx, dtype=np.int64)

    def encode_sparse_text(self, j: int, values: Sequence[str]) -> np.ndarray:
        """Bucket indices ``(N,)`` int64 of sparse feature ``j`` for text ``values`` (every one a
        ``str``): equal to :meth:`encode_sparse_column` on them (no value is missing, the text
        is the key) without building a Series: a vocabulary's position by one dict lookup a
        value (the dict built once per feature), a hash bucket by :func:`hash_bucket`. What a
        server pays per request for categories it has not seen before (new item ids)."""
        assert self.sparse_specs is not None
        spec = self.sparse_specs[j]
        keys = [str(v) for v in values]
        if spec["kind"] != "vocab":
            return hash_bucket(np.asarray(keys, dtype=object), int(spec["buckets"]))
        codes = self._vocab_codes.get(j)
        if codes is None:
            codes = self._vocab_codes[j] = {str(v): i + 1 for i, v in enumerate(spec["values"])}
        get = codes.get
        return np.fromiter((get(k, 0) for k in keys), dtype=np.int64, count=len(keys))

    def encode(self, frame: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw frame → ``(dense float32 (N, Nd) raw values, sparse int64 (N, F))`` tensors.

        Dense values stay raw (the network normalizes them); non-finite ones are counted in
        ``last_report["nonfinite"]`` and replaced by the saved defaults inside the network.
        Raises ``ValueError`` naming the feature columns the frame lacks.
        """
        if not self.fitted:
            raise ValueError("the ranker is not fitted: call fit() or load a saved model")
        self._check_columns(frame)
        report: dict[str, Any] = {"rows": len(frame), "nonfinite": {}, "missing": {}, "oov": {}}
        dense = self._dense_raw(frame)
        bad = ~np.isfinite(dense)
        for j in np.flatnonzero(bad.any(axis=0)):
            report["nonfinite"][self.dense_features[j]] = int(bad[:, j].sum())
        sparse = self.encode_sparse(frame, report)
        self.last_report = report
        if report["nonfinite"] or report["oov"]:
            log.info(
                "ranker input (%d rows): non-finite dense values replaced by defaults %s, "
                "out-of-vocabulary categories %s, missing categories %s",
                len(frame), report["nonfinite"], report["oov"], report["missing"],
            )  # fmt: skip
        return torch.from_numpy(dense), torch.from_numpy(sparse)

    def _fit_encoders(self, frame: pd.DataFrame) -> None:
        """Vocabularies / hashing per sparse feature, the log1p choice per dense feature."""
        if self.log_features is None:
            self.log_features = [c for c in self.dense_features if COUNT_PATTERN.search(c)]
        unknown = set(self.log_features) - set(self.dense_features)
        if unknown:
            raise ValueError(f"log_features {sorted(unknown)} are not dense features")
        self.sparse_specs = []
        for name in self.sparse_features:
            if name in self.hash_features:
                spec = {"name": name, "kind": "hash", "buckets": self.hash_buckets}
            else:
                spec = build_sparse_spec(
                    frame[name], name, self.max_vocab, self.hash_buckets, self.min_count
                )
            self.sparse_specs.append(spec)

    def _build_net(self) -> None:
        assert self.sparse_specs is not None
        sizes = [table_size(s) for s in self.sparse_specs]
        self.net = self._make_net(len(self.dense_features), sizes)
        self.net.to(self.device)
        self._indexes = [
            pd.Index(s["values"], dtype=object) if s["kind"] == "vocab" else None
            for s in self.sparse_specs
        ]
        self._vocab_codes = {}
        self._scorer = None

    def _make_net(self, n_dense: int, table_sizes: list[int]) -> nn.Module:
        """The untrained network for ``interaction``: raw dense ``(B, Nd)`` + indices ``(B, F)``
        → logits ``(B,)``, with a ``normalizer`` and ``set_output_bias``."""
        if self.interaction == "linear":
            return LogisticNet(n_dense, table_sizes)
        if self.interaction == "deepfm":
            return DeepFMNet(n_dense, table_sizes, self.dim, self.bottom_mlp, self.top_mlp)
        return DLRMNet(
            n_dense, table_sizes, self.dim, self.bottom_mlp, self.top_mlp, self.interaction,
            self.cross_layers,
        )  # fmt: skip

    def _fit_normalizer(self, dense: np.ndarray) -> None:
        """Per-feature default (median), log mask, mean and std of the transformed values."""
        assert self.net is not None and self.log_features is not None
        nd = dense.shape[1]
        fill = np.zeros(nd)
        mean = np.zeros(nd)
        std = np.ones(nd)
        mask = np.array([c in self.log_features for c in self.dense_features], dtype=bool)
        for j in range(nd):
            x = dense[:, j].astype(np.float64)
            ok = np.isfinite(x)
            fill[j] = float(np.median(x[ok])) if ok.any() else 0.0
            x = np.where(ok, x, fill[j])
            if mask[j]:
                x = np.sign(x) * np.log1p(np.abs(x))
            mean[j] = float(x.mean()) if len(x) else 0.0
            sd = float(x.std()) if len(x) else 1.0
            std[j] = sd if sd > 1e-6 else 1.0
        norm = self.net.normalizer
        dev = self.device
        norm.fill.copy_(torch.as_tensor(fill, dtype=torch.float32, device=dev))
        norm.log_mask.copy_(torch.as_tensor(mask, device=dev))
        norm.mean.copy_(torch.as_tensor(mean, dtype=torch.float32, device=dev))
        norm.std.copy_(torch.as_tensor(std, dtype=torch.float32, device=dev))

    # --- training ---------------------------------------------------------------------------
    def fit(  # type: ignore[override]
        self,
        frame: pd.DataFrame,
        label: str = "label",
        weight: str | None = None,
        valid_frame: pd.DataFrame | None = None,
        progress: bool = True,
    ) -> DLRMRanker:
        """Train on ``frame`` (one row per example; ``label`` 0/1; optional ``weight`` column of
        per-example loss weights). With ``valid_frame`` the epoch with the best validation
        logloss is kept (and with ``patience`` training stops once that many epochs passed
        without a better one). Deterministic under ``seed`` on CPU. Any previous
        :attr:`calibration` is dropped. Returns ``self``."""
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(
                "DLRMRanker.fit takes a DataFrame of feature rows with a label column, not "
                f"{type(frame).__name__} (the ranker is not trained on an interaction matrix)"
            )
        if label not in frame.columns:
            raise ValueError(f"frame has no label column {label!r}")
        y = pd.to_numeric(frame[label], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isin(y, (0.0, 1.0)))
        if len(bad):
            raise ValueError(
                f"label {label!r} of row {int(bad[0])} is {frame[label].iloc[bad[0]]!r}"
            )
        w = None
        if weight is not None:
            w = frame[weight].to_numpy(dtype=np.float64)
            badw = np.flatnonzero(~np.isfinite(w) | (w < 0))
            if len(badw):
                raise ValueError(f"weight {weight!r} of row {int(badw[0])} is {w[badw[0]]!r}")
        self._check_columns(frame)
        self.label = label
        self.calibration = None
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self._fit_encoders(frame)
            self._build_net()
            dense, sparse = self.encode(frame)
            self.fit_report = dict(self.last_report)
            self._fit_normalizer(dense.numpy())
            base = float(np.average(y, weights=w)) if len(y) else 0.5
            base = min(max(base, 1e-4), 1 - 1e-4)
            self.net.set_output_bias(float(np.log(base / (1 - base))))
            self._train(dense, sparse, y, w, valid_frame, progress)
        log.info(
            "ranker (%s) trained on %d rows in %.1fs: %s",
            self.interaction, len(frame), time.perf_counter() - t0,
            self.history[-1] if self.history else {},
        )  # fmt: skip
        return self

    def _train(
        self,
        dense: torch.Tensor,
        sparse: torch.Tensor,
        y: np.ndarray,
        w: np.ndarray | None,
        valid_frame: pd.DataFrame | None,
        progress: bool,
    ) -> None:
        from pipelines.core.progress import progress as progress_bar

        assert self.net is not None
        dev = self.device
        dense, sparse = dense.to(dev), sparse.to(dev)
        labels = torch.as_tensor(y, dtype=torch.float32, device=dev)
        weights = None if w is None else torch.as_tensor(w, dtype=torch.float32, device=dev)
        n = len(labels)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        step_net = ddp.wrap(self.net)  # DDP: gradients averaged across ranks
        gen = torch.Generator().manual_seed(self.seed)
        valid_y = None
        if valid_frame is not None:
            valid_y = valid_frame[self.label].to_numpy(dtype=np.float64)
        best: tuple[float, dict[str, torch.Tensor]] | None = None
        best_epoch = 0
        self.history = []
        for epoch in progress_bar(
            range(self.epochs), desc=f"dlrm-{self.interaction}", unit="epoch", enabled=progress
        ):
            self.net.train()
            perm = torch.randperm(n, generator=gen).to(dev)
            total, seen = 0.0, 0
            t0 = time.perf_counter()
            for s in range(0, n - ddp.world_size() + 1, self.batch_size):  # no empty DDP shard
                b = ddp.shard(perm[s : s + self.batch_size])  # DDP: this rank's rows of the batch
                logits = step_net(dense[b], sparse[b])
                loss = bce_loss(logits, labels[b], None if weights is None else weights[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(b)
                seen += len(b)
            row = {
                "epoch": epoch,
                "train_loss": ddp.mean(total / max(seen, 1)),
                "examples_per_s": seen / max(time.perf_counter() - t0, 1e-9),
            }
            self._scorer = None
            if valid_frame is not None and valid_y is not None:
                vl = _logloss(valid_y, self.predict_proba(valid_frame).astype(np.float64))
                vl = ddp.agree(vl)  # every rank stops at rank 0's best epoch
                row["valid_logloss"] = vl
                if best is None or vl < best[0]:
                    best = (vl, {k: v.detach().clone() for k, v in self.net.state_dict().items()})
                    best_epoch = epoch
            self.history.append(row)
            log.debug("epoch %d: %s", epoch, row)
            if (
                self.patience is not None
                and best is not None
                and epoch - best_epoch > self.patience
            ):
                log.info("early stop after epoch %d (best %d)", epoch, best_epoch)
                break
        if best is not None:
            self.net.load_state_dict(best[1])
        self.net.eval()
        self._scorer = None

    # --- scoring ----------------------------------------------------------------------------
    def scorer(self) -> Any:
        """The network used for inference (``inference``: ``eager`` module, TorchScript
        ``script`` or ``trace``), built once and cached; ``(dense, sparse) → logits``.

        ``trace`` is the default: fastest end to end in ``benchmarks/bench_ranker.py`` (500
        candidates, one thread). ``torch.compile`` ran the network faster still but took ~37 s
        to compile on first call and recompiles per batch shape, so it is not offered here."""
        if self._scorer is None:
            assert self.net is not None
            self.net.eval()
            if self.inference == "script":
                self._scorer = torch.jit.script(self.net)
            elif self.inference == "trace":
                nd, nf = len(self.dense_features), len(self.sparse_features)
                ex = (
                    torch.zeros(2, nd, device=self.device),
                    torch.zeros(2, nf, dtype=torch.int64, device=self.device),
                )
                self._scorer = torch.jit.trace(self.net, ex, check_trace=False)
            else:
                self._scorer = self.net
        return self._scorer

    def predict_logits(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """Logits ``(N,)`` of encoded inputs (see :meth:`encode`), calibrated
        (``a * logit + b``, :meth:`calibrate`) when the ranker has a calibration."""
        fn = self.scorer()
        with torch.inference_mode():
            logits = fn(dense.to(self.device), sparse.to(self.device))
            cal = self.calibration
            if cal:
                logits = logits * float(cal["a"]) + float(cal["b"])
            return logits

    def calibrate(self, frame: pd.DataFrame, label: str | None = None) -> dict[str, float]:
        """Platt scaling on held-out rows: ``p = sigmoid(a * logit + b)`` with ``(a, b)`` the
        logloss minimum over ``frame`` (``label`` 0/1, default the training label); ``a`` is
        kept positive so the order of the scores never changes. Sets :attr:`calibration` and
        returns it: ``a``, ``b``, ``rows``, ``observed_ctr``, mean prediction and logloss
        before (``raw_*``) and after."""
        y = frame[label or self.label].to_numpy(dtype=np.float64)
        self.calibration = None
        dense, sparse = self.encode(frame)
        z = np.concatenate([
            self.predict_logits(dense[s : s + 65_536], sparse[s : s + 65_536]).cpu().numpy()
            for s in range(0, len(frame), 65_536)
        ]).astype(np.float64)  # fmt: skip
        a, b = platt_fit(z, y)
        raw, cal = _sigmoid(z), _sigmoid(a * z + b)
        self.calibration = {
            "method": "platt", "a": a, "b": b, "rows": int(len(y)),
            "observed_ctr": float(y.mean()) if len(y) else float("nan"),
            "raw_mean_pred": float(raw.mean()), "mean_pred": float(cal.mean()),
            "raw_logloss": _logloss(y, raw), "logloss": _logloss(y, cal),
        }  # fmt: skip
        return dict(self.calibration)

    def predict_proba(self, frame: pd.DataFrame, batch_size: int = 65_536) -> np.ndarray:
        """Click probability ``(N,)`` float32 of each row of ``frame`` (raw feature columns)."""
        dense, sparse = self.encode(frame)
        out = np.empty(len(frame), dtype=np.float32)
        for s in range(0, len(frame), batch_size):
            logits = self.predict_logits(dense[s : s + batch_size], sparse[s : s + batch_size])
            out[s : s + batch_size] = torch.sigmoid(logits).cpu().numpy()
        return out

    # not part of the Ranker contract: a retriever-style call fails with a pointer to the right one
    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Always ``NotImplementedError``: a ranker scores feature rows (:meth:`predict_proba`)."""
        raise NotImplementedError(
            "the DLRM ranker scores (user, item) feature rows, not id pairs: build a frame with "
            f"the columns {self.feature_columns} (e.g. from the feature store) and call "
            "predict_proba(frame)"
        )

    def score_all(self, users: np.ndarray) -> np.ndarray:
        """Always ``NotImplementedError``: a ranker re-ranks candidates (:meth:`predict_proba`)."""
        raise NotImplementedError(
            "the DLRM ranker does not score the whole catalog: it re-ranks retrieval candidates; "
            "call predict_proba(frame) on their feature rows"
        )

    # --- persistence ------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            "dense_features": self.dense_features,
            "sparse_features": self.sparse_features,
            "interaction": self.interaction,
            "dim": self.dim,
            "bottom_mlp": self.bottom_mlp,
            "top_mlp": self.top_mlp,
            "cross_layers": self.cross_layers,
            "log_features": self.log_features,
            "max_vocab": self.max_vocab,
            "hash_buckets": self.hash_buckets,
            "hash_features": self.hash_features,
            "min_count": self.min_count,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
            "feature_service": self.feature_service,
            "inference": self.inference,
            "sparse_specs": self.sparse_specs,
            "label": self.label,
            "history": self.history,
            "fit_report": self.fit_report,
            "patience": self.patience,
            "calibration": self.calibration,
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any], device: str | None = None) -> DLRMRanker:
        return cls(**cfg, device=device)

    def state(self) -> dict[str, torch.Tensor]:
        if self.net is None:
            raise ValueError("the ranker is not fitted: nothing to save")
        return {k: v.detach().cpu() for k, v in self.net.state_dict().items()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.net is None:
            raise ValueError("config has no sparse_specs: the saved ranker was never fitted")
        if not isinstance(state, dict):
            raise ValueError(
                f"ranker weights must be a dict of tensors, got {type(state).__name__}"
            )
        try:
            self.net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"ranker weights do not match its config: {exc}") from exc
        self.net.eval()
        self._scorer = None
