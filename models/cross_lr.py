"""Cross-feature logistic regression ranker: one weight per category bucket and per bucket of
each cross-product feature, L2-regularised, its strength chosen on the validation day.

``logit = b + w · normalize(dense) + Σ_f w_f[idx_f] + Σ_c w_c[cross_c]`` (the wide part of
:mod:`models.wide_deep` alone: :class:`models.dlrm.FirstOrder` over the sparse features and
the crosses of :data:`CROSSES`, hashed as :func:`models.wide_deep.cross_index` does).

Training minimises the (weighted) mean logloss plus ``‖w‖² / (2 C n)`` (``n`` rows; the bias is
not penalised), which is scikit-learn's ``LogisticRegression(C=C)`` objective divided by ``C n``,
by full-batch L-BFGS, once for each ``C`` of ``c_grid`` (strongest penalty first, each warm
started from the previous). With a validation frame the ``C`` of the lowest validation logloss is
kept (:attr:`history` has one row per ``C``); without one, :data:`DEFAULT_C`.

Why: the item × user-segment crosses (the item's click rate per age band, gender and country),
shrunk towards the category × segment ones by the penalty, ordered a simulated day's candidates
4–12 % better than the DLRM ranker's top 10 (``benchmarks/bench_cross_lr.py``,
``benchmarks/README.md``). Trained by Adam without the penalty (``wide_deep``) the same crosses
overfit. Rare items need the penalty, not a vocabulary cut, so :data:`MIN_COUNT` is 1.

Shapes: ``B`` rows, ``Nd`` dense features, ``F`` sparse features, ``C`` crosses.
Saved under the registry name ``"cross_lr"``; the crosses, ``cross_buckets``, ``c_grid`` and
the chosen ``l2_c`` are in the JSON config.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from models.base import register
from models.dlrm import DenseNormalizer, DLRMRanker, FirstOrder, _logloss
from models.wide_deep import CrossBuckets, resolve_crosses

log = logging.getLogger(__name__)

SEGMENTS = ("user_age_band", "user_gender", "user_country")
"""The user's segment features crossed with the item and with its category."""
CROSSES: tuple[tuple[str, str], ...] = tuple(
    (item, seg) for item in ("item_category", "item_id") for seg in SEGMENTS
)
"""The default cross-product features: the item's category and the item, each × the user's age
band, gender and country (those whose two features the ranker reads)."""
CROSS_BUCKETS = 1_000_000
"""Rows per cross beyond the missing row: a 2,000-item catalog × 10 countries fits exactly."""
C_GRID = (0.03, 0.1, 0.3)
"""Inverse L2 strengths tried (``benchmarks/bench_cross_lr.py``: 0.03 / 0.1 / 0.3 / 1.0 gave a
top-10 true CTR of 0.0694 / 0.0717 / 0.0697 / 0.0574 on one simulated day)."""
DEFAULT_C = 0.1
"""The strength used when there is no validation frame to choose one."""
MIN_COUNT = 1
"""Every item seen in training has its own weight (the penalty shrinks the rare ones)."""
MAX_ITER = 200
"""L-BFGS iterations per ``C``."""


class CrossLRNet(nn.Module):
    """Raw dense ``(B, Nd)`` float32 + sparse indices ``(B, F)`` int64 → logits ``(B,)``:
    ``b + FirstOrder(normalize(dense), [sparse, crosses])``.

    ``crosses``: ``(C, 2)`` positions of the crossed features in the sparse columns
    (:class:`models.wide_deep.CrossBuckets`)."""

    def __init__(
        self,
        n_dense: int,
        table_sizes: Sequence[int],
        crosses: Sequence[tuple[int, int]],
        cross_buckets: int,
    ) -> None:
        super().__init__()
        sizes = [int(s) for s in table_sizes]
        self.normalizer = DenseNormalizer(n_dense)
        self.crossed = CrossBuckets(sizes, crosses, cross_buckets)
        self.wide = FirstOrder(n_dense, [*sizes, *self.crossed.table_sizes])
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x = self.normalizer(dense)
        return self.bias + self.wide(x, torch.cat([sparse, self.crossed(sparse)], dim=1))

    def set_output_bias(self, value: float) -> None:
        with torch.no_grad():
            self.bias.fill_(value)

    def penalty(self) -> torch.Tensor:
        """``‖w‖²`` over every weight but the bias."""
        return sum(p.pow(2).sum() for p in self.wide.parameters())  # type: ignore[return-value]


@register
class CrossLRRanker(DLRMRanker):
    """L2 logistic regression over sparse features and their crosses (module docstring).

    Implements :class:`models.base.Ranker` through :class:`models.dlrm.DLRMRanker` (encoding,
    calibration, scoring and persistence are the DLRM's); the network and its training differ.
    ``crosses``: pairs of sparse feature names (default: :data:`CROSSES` present);
    ``cross_buckets``: :data:`CROSS_BUCKETS`; ``c_grid``: the inverse L2 strengths tried on the
    validation frame; ``l2_c``: the chosen one (set by ``fit``); ``max_iter``: L-BFGS
    iterations per strength. ``epochs``, ``lr``, ``batch_size`` and ``patience`` are unused.
    """

    name = "cross_lr"
    interactions = ("cross_lr",)

    def __init__(
        self,
        dense_features: Sequence[str] = (),
        sparse_features: Sequence[str] = (),
        crosses: Sequence[Sequence[str]] | None = None,
        cross_buckets: int = CROSS_BUCKETS,
        c_grid: Sequence[float] = C_GRID,
        l2_c: float = DEFAULT_C,
        max_iter: int = MAX_ITER,
        interaction: str = "cross_lr",
        min_count: int = MIN_COUNT,
        **kwargs: Any,
    ) -> None:
        if int(cross_buckets) < 1:
            raise ValueError(f"cross_buckets={cross_buckets}: expected at least 1")
        grid = [float(c) for c in c_grid]
        if not grid or any(not math.isfinite(c) or c <= 0 for c in [*grid, float(l2_c)]):
            raise ValueError(f"c_grid={list(c_grid)}, l2_c={l2_c}: expected positive numbers")
        if crosses is None:
            known = {str(c) for c in sparse_features}
            crosses = [pair for pair in CROSSES if set(pair) <= known]
        self.crosses = resolve_crosses([str(c) for c in sparse_features], crosses)
        self.cross_buckets = int(cross_buckets)
        self.c_grid = sorted(grid)
        self.l2_c = float(l2_c)
        self.max_iter = int(max_iter)
        super().__init__(
            dense_features, sparse_features, interaction=interaction, min_count=min_count,
            **kwargs,
        )  # fmt: skip

    def _make_net(self, n_dense: int, table_sizes: list[int]) -> nn.Module:
        pos = {name: j for j, name in enumerate(self.sparse_features)}
        pairs = [(pos[a], pos[b]) for a, b in self.crosses]
        return CrossLRNet(n_dense, table_sizes, pairs, self.cross_buckets)

    def _train(
        self,
        dense: torch.Tensor,
        sparse: torch.Tensor,
        y: np.ndarray,
        w: np.ndarray | None,
        valid_frame: pd.DataFrame | None,
        progress: bool,
    ) -> None:
        """Full-batch L-BFGS for each ``C`` of ``c_grid`` (strongest penalty first, warm
        started); keeps the ``C`` of the lowest validation logloss (or ``l2_c`` alone without a
        validation frame). ``history``: one row per ``C`` (``epoch`` is its index)."""
        from pipelines.core.progress import progress as progress_bar

        assert self.net is not None
        dev = self.device
        dense, sparse = dense.to(dev), sparse.to(dev)
        labels = torch.as_tensor(y, dtype=torch.float32, device=dev)
        n = max(len(labels), 1)
        weights = torch.ones(n, device=dev) if w is None else torch.as_tensor(w, device=dev)
        weights = weights.float() / weights.float().mean().clamp_min(1e-12)
        grid = self.c_grid if valid_frame is not None else [self.l2_c]
        valid_y = None if valid_frame is None else valid_frame[self.label].to_numpy(np.float64)
        self.history = []
        best: tuple[float, float, dict[str, torch.Tensor]] | None = None
        for k, c in enumerate(progress_bar(grid, desc="cross_lr", unit="C", enabled=progress)):
            t0 = time.perf_counter()
            self.net.train()
            loss = self._minimise(dense, sparse, labels, weights, 1.0 / (2.0 * c * n))
            self.net.eval()
            self._scorer = None
            row: dict[str, float] = {"epoch": k, "l2_c": c, "train_objective": loss}
            row["seconds"] = time.perf_counter() - t0
            if valid_y is not None:
                vl = _logloss(valid_y, self.predict_proba(valid_frame).astype(np.float64))
                row["valid_logloss"] = vl
                if best is None or vl < best[0]:
                    state = {k2: v.detach().clone() for k2, v in self.net.state_dict().items()}
                    best = (vl, c, state)
            self.history.append(row)
            log.debug("cross_lr C=%g: %s", c, row)
        if best is not None:
            self.net.load_state_dict(best[2])
            self.l2_c = best[1]
        self.net.eval()
        self._scorer = None

    def _minimise(
        self,
        dense: torch.Tensor,
        sparse: torch.Tensor,
        labels: torch.Tensor,
        weights: torch.Tensor,
        lam: float,
    ) -> float:
        """Full-batch L-BFGS from the current weights on the weighted mean logloss plus
        ``lam ‖w‖²``; returns the final objective."""
        assert self.net is not None
        net = self.net
        opt = torch.optim.LBFGS(
            net.parameters(), lr=1.0, max_iter=self.max_iter, history_size=20,
            line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9,
        )  # fmt: skip

        def closure() -> torch.Tensor:
            opt.zero_grad(set_to_none=True)
            logits = net(dense, sparse)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels, weight=weights)
            loss = loss + lam * net.penalty()
            loss.backward()
            return loss

        return float(opt.step(closure).detach())

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "crosses": self.crosses,
            "cross_buckets": self.cross_buckets,
            "c_grid": self.c_grid,
            "l2_c": self.l2_c,
            "max_iter": self.max_iter,
        }
