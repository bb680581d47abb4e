"""Wide & Deep ranker (Cheng et al. 2016; chapter §13.2): a wide linear model over the raw
features and cross-product features, and a deep MLP over embeddings, trained jointly.

``logit = w_wide · [x, φ(x)] + w_deep · a(x) + b``:

- wide (:class:`models.dlrm.FirstOrder`, memorization): one weight per normalized dense feature,
  per category bucket of each sparse feature, and per bucket of each cross-product feature
  ``φ(x)`` (e.g. ``AND(user_top_category=c1, item_category=c2)``);
- deep (generalization): the bottom MLP's vector of the dense features and one embedding per
  sparse feature (:class:`models.dlrm.DenseArch`, :class:`models.dlrm.SparseArch`), flattened,
  then an MLP (:class:`models.dlrm.OverArch`) → one number; its output bias is ``b``.

Shapes: ``B`` rows, ``Nd`` dense features, ``F`` sparse features, ``C`` crosses, ``D`` = ``dim``.

Crosses: pairs of sparse feature names (:data:`WIDE_CROSSES` by default, the pairs whose two
features the ranker reads). A cross is computed inside the network from the two features' bucket
indices ``a`` (in ``[0, S_a)``) and ``b`` (in ``[0, S_b)``), ``S`` = table sizes, row 0 = missing
/ out of vocabulary, so serving feeds the same ``(B, F)`` indices as every other ranker
(:func:`cross_index`):

- either index 0 → 0 (the cross's missing row);
- else ``pair = (a − 1)(S_b − 1) + (b − 1)``; when the ``(S_a − 1)(S_b − 1)`` pairs fit in
  ``cross_buckets`` each has its own row ``1 + pair`` (no collisions); otherwise
  ``1 + ((pair mod P) · M mod P) mod cross_buckets`` with ``P`` = :data:`CROSS_PRIME`
  (2³¹ − 1) and ``M`` = :data:`CROSS_MULTIPLIER` (a fixed hash, the same in every process).

Training: one BCE loss on the joint logit, both parts by the same Adam optimizer
(:meth:`models.dlrm.DLRMRanker.fit`: same batches, early stopping, IPS weights, Platt
calibration). The paper trains the wide part with FTRL + L1 and the deep part with AdaGrad; one
Adam keeps the common training path (measured in ``benchmarks/README.md``, issue 16 section).
Saved under the registry name ``"wide_deep"``; the crosses and ``cross_buckets`` are in the
JSON config.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from models.base import register
from models.dlrm import DenseArch, DenseNormalizer, DLRMRanker, FirstOrder, OverArch, SparseArch

WIDE_CROSSES: tuple[tuple[str, str], ...] = (
    ("user_top_category", "item_category"),
    ("user_age_band", "item_category"),
    ("user_gender", "item_category"),
    ("user_country", "item_category"),
    ("slot", "item_category"),
)
"""The default cross-product features (user segment × item category, and the shown slot × the
category); those whose two features the ranker does not read are left out."""
CROSS_BUCKETS = 10_000
"""Rows per cross (beyond the missing row) when its pairs do not all fit."""
CROSS_PRIME = 2_147_483_647
"""``P`` = 2³¹ − 1 of the cross hash (:func:`cross_index`)."""
CROSS_MULTIPLIER = 48_271
"""``M`` of the cross hash (the MINSTD multiplier); ``pair mod P · M`` stays below 2⁶³."""


def cross_table_size(size_a: int, size_b: int, buckets: int) -> int:
    """Rows of a cross's weight table (its missing row included) for tables of ``size_a`` and
    ``size_b`` rows: ``1 + (size_a − 1)(size_b − 1)`` when that fits in ``buckets``, else
    ``1 + buckets``."""
    return 1 + min((size_a - 1) * (size_b - 1), buckets)


def cross_index(
    a: torch.Tensor,
    b: torch.Tensor,
    size_b: torch.Tensor,
    exact: torch.Tensor,
    buckets: int,
    prime: int = CROSS_PRIME,
    multiplier: int = CROSS_MULTIPLIER,
) -> torch.Tensor:
    """Cross bucket of index pairs (module docstring): ``a``, ``b`` int64 ``(B, C)``, ``size_b``
    int64 ``(C,)`` (second feature's table size), ``exact`` bool ``(C,)`` (each pair its own
    row) → int64 ``(B, C)`` in ``[0, cross_table_size)``. (The constants are arguments so that
    TorchScript compiles it.)"""
    pair = (a - 1) * (size_b - 1) + (b - 1)
    hashed = (pair % prime) * multiplier % prime % buckets
    idx = 1 + torch.where(exact, pair, hashed)
    return torch.where((a > 0) & (b > 0), idx, torch.zeros_like(idx))


class CrossBuckets(nn.Module):
    """Sparse indices ``(B, F)`` int64 → cross bucket indices ``(B, C)`` (:func:`cross_index`).

    ``table_sizes``: the sparse features' table sizes; ``crosses``: ``(C, 2)`` positions of the
    crossed features in the sparse columns. :attr:`table_sizes` are then the crosses' own weight
    tables (:func:`cross_table_size`). The buffers follow from the config and are not saved
    (``persistent=False``)."""

    def __init__(
        self, table_sizes: Sequence[int], crosses: Sequence[tuple[int, int]], buckets: int
    ) -> None:
        super().__init__()
        sizes = [int(s) for s in table_sizes]
        pairs = torch.tensor([list(c) for c in crosses], dtype=torch.int64).reshape(-1, 2)
        n_pairs = [(sizes[i] - 1) * (sizes[j] - 1) for i, j in crosses]
        self.register_buffer("cross_a", pairs[:, 0].clone(), persistent=False)
        self.register_buffer("cross_b", pairs[:, 1].clone(), persistent=False)
        self.register_buffer(
            "size_b", torch.tensor([sizes[j] for _, j in crosses], dtype=torch.int64), False
        )
        self.register_buffer(
            "exact", torch.tensor([n <= buckets for n in n_pairs], dtype=torch.bool), False
        )
        self.buckets = int(buckets)
        self.table_sizes = [cross_table_size(sizes[i], sizes[j], buckets) for i, j in crosses]

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        a, b = sparse[:, self.cross_a], sparse[:, self.cross_b]
        return cross_index(a, b, self.size_b, self.exact, self.buckets)


class WideDeepNet(nn.Module):
    """Raw dense ``(B, Nd)`` float32 + sparse indices ``(B, F)`` int64 → logits ``(B,)``.

    ``crosses``: ``(C, 2)`` positions of the crossed features in the sparse columns
    (:class:`CrossBuckets`).
    """

    def __init__(
        self,
        n_dense: int,
        table_sizes: Sequence[int],
        dim: int,
        bottom_mlp: Sequence[int],
        top_mlp: Sequence[int],
        crosses: Sequence[tuple[int, int]],
        cross_buckets: int,
    ) -> None:
        super().__init__()
        sizes = [int(s) for s in table_sizes]
        self.normalizer = DenseNormalizer(n_dense)
        self.dense_arch = DenseArch(n_dense, bottom_mlp, dim)
        self.sparse_arch = SparseArch(sizes, dim)
        self.deep = OverArch((len(sizes) + 1) * dim, top_mlp)
        self.crossed = CrossBuckets(sizes, crosses, cross_buckets)
        self.wide = FirstOrder(n_dense, [*sizes, *self.crossed.table_sizes])

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x = self.normalizer(dense)
        deep_in = torch.cat([self.dense_arch(x), self.sparse_arch(sparse).flatten(1)], dim=1)
        wide_in = torch.cat([sparse, self.crossed(sparse)], dim=1)
        return self.wide(x, wide_in) + self.deep(deep_in)

    def set_output_bias(self, value: float) -> None:
        self.deep.set_output_bias(value)


def resolve_crosses(
    sparse_features: Sequence[str], crosses: Sequence[Sequence[str]] | None
) -> list[list[str]]:
    """The crosses as ``[[a, b], ...]``: ``crosses`` checked against ``sparse_features``
    (``ValueError`` naming a feature the ranker does not read as sparse), or by default the
    :data:`WIDE_CROSSES` whose two features it reads."""
    known = set(sparse_features)
    if crosses is None:
        return [[a, b] for a, b in WIDE_CROSSES if a in known and b in known]
    out = []
    for pair in crosses:
        if len(pair) != 2 or pair[0] == pair[1]:
            raise ValueError(f"a cross is two different sparse features, got {list(pair)}")
        missing = [str(f) for f in pair if f not in known]
        if missing:
            raise ValueError(f"cross {list(pair)}: {missing} not among the sparse features")
        out.append([str(pair[0]), str(pair[1])])
    return out


@register
class WideDeepRanker(DLRMRanker):
    """Wide & Deep click model over a DataFrame of feature rows (module docstring).

    Implements :class:`models.base.Ranker` through :class:`models.dlrm.DLRMRanker` (encoding,
    training, calibration, scoring and persistence are the DLRM's); only the network differs.
    ``crosses``: pairs of sparse feature names (default: :data:`WIDE_CROSSES` present);
    ``cross_buckets``: :data:`CROSS_BUCKETS`. Other arguments as ``DLRMRanker``'s
    (``cross_layers`` is unused).
    """

    name = "wide_deep"
    interactions = ("wide_deep",)

    def __init__(
        self,
        dense_features: Sequence[str] = (),
        sparse_features: Sequence[str] = (),
        crosses: Sequence[Sequence[str]] | None = None,
        cross_buckets: int = CROSS_BUCKETS,
        interaction: str = "wide_deep",
        **kwargs: Any,
    ) -> None:
        if int(cross_buckets) < 1:
            raise ValueError(f"cross_buckets={cross_buckets}: expected at least 1")
        self.crosses = resolve_crosses([str(c) for c in sparse_features], crosses)
        self.cross_buckets = int(cross_buckets)
        super().__init__(dense_features, sparse_features, interaction=interaction, **kwargs)

    def _make_net(self, n_dense: int, table_sizes: list[int]) -> nn.Module:
        pos = {name: j for j, name in enumerate(self.sparse_features)}
        pairs = [(pos[a], pos[b]) for a, b in self.crosses]
        return WideDeepNet(
            n_dense, table_sizes, self.dim, self.bottom_mlp, self.top_mlp, pairs,
            self.cross_buckets,
        )  # fmt: skip

    def config(self) -> dict[str, Any]:
        return {**super().config(), "crosses": self.crosses, "cross_buckets": self.cross_buckets}
