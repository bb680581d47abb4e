"""Item KNN's settings for top-N ranking (issue 16): MovieLens 100K's temporal split and the simulator.

  OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_itemknn.py --movielens DIR
      [--cutoff 1998-03-15] [--validate] [--sim [--days 8] [--scale demo] [--seed 42]]
      [--k 50 ...] [--shrinkage 0 ...] [--neighbours-of candidate history]
      [--normalize neighbours rated none] [--prior-weights 0 ...] [--prior-windows 0 7]

Scores ``models.baselines.ItemKNN`` at every combination of the settings given (one fit per
``k`` x shrinkage x neighbours_of x normalize; the log-popularity prior is added at scoring, so
each fit is scored again at each prior weight over each count window: all-time users per item
(0) or the positives of the last D days), beside most-popular (all time and last 7 days),
``ItemKNN(**train.ITEMKNN_PARAMS)`` (the daily job's) and the reference formula
(``ItemKNN(k=50)``). Rows are named ``k=50 l=10 history/none w=1 7d``.

- **MovieLens 100K**: ``bench_ncf_bpr.movielens_split`` (temporal split at ``--cutoff``;
  ``--validate``: 28 days earlier, test up to the real cut-off). NDCG@10, recall@10, MAP@10 by
  ``pipelines.core.metrics.compare_models`` (training items excluded).
- **Simulator** (``--sim``): as ``bench_ncf_bpr.py``'s simulator part (``--days`` days at
  ``--scale``, train through day N-2, test day N-1; ``--validate``: one day earlier), plus
  ``truth_ndcg@10`` against the simulator's true click probabilities
  (``bench_retrieval.truth_ndcg``); the prior's D-day counts are the training data's
  ``recent`` (``POPULAR_WINDOW_DAYS``) whatever D is given.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import itertools
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from models.baselines import ItemKNN, MostPopular
from pipelines.core.metrics import compare_models
from pipelines.retrieval import train

COLS = ["ndcg@10", "recall@10", "map@10"]


def grid(
    train_m: sp.csr_matrix, counts: dict[int, np.ndarray], a: argparse.Namespace
) -> dict[str, Any]:
    """ItemKNN at every combination of ``a``'s settings on ``train_m`` ``(U, I)``: by name.
    ``counts``: the prior's item counts ``(I,)`` by window (days; 0 = all time)."""
    out: dict[str, Any] = {}
    combos = itertools.product(a.k, a.shrinkage, a.neighbours_of, a.normalize)
    for k, lam, of, norm in combos:
        model = ItemKNN(k=k, shrinkage=lam, neighbours_of=of, normalize=norm).fit(train_m)
        for w in a.prior_weights:
            for days, n in counts.items() if w else [(0, None)]:
                m = copy.copy(model)
                if w:
                    m.popularity_weight, m.item_counts = float(w), n
                out[f"k={k} l={lam:g} {of}/{norm} w={w:g}{f' {days}d' if days else ''}"] = m
    return out


def peers(train_m: sp.csr_matrix, recent: np.ndarray) -> dict[str, Any]:
    """Most-popular (all time, last 7 days), the daily job's item KNN and the reference."""
    return {
        "popular (all time)": MostPopular().fit(train_m),
        "popular (last 7 days)": MostPopular(7).fit(train_m, item_weights=recent),
        "itemknn (reference)": ItemKNN(k=50).fit(train_m),
        "itemknn (ITEMKNN_PARAMS)": ItemKNN(**train.ITEMKNN_PARAMS).fit(
            train_m, item_counts=recent
        ),
    }


def movielens(folder: Path, cutoff: dt.date, validate: bool, a: argparse.Namespace) -> None:
    """The MovieLens part (module docstring)."""
    from bench_ncf_bpr import movielens_split

    last = None
    if validate:
        last, cutoff = cutoff, cutoff - dt.timedelta(days=28)
    train_m, test_m, recent, note = movielens_split(folder, cutoff, last)
    counts = {0: np.asarray((train_m != 0).sum(0), np.float32).ravel()}
    for days in a.prior_windows:
        if days > 0:
            counts[days] = movielens_split(folder, cutoff, last, days)[2]
    models = {**peers(train_m, recent), **grid(train_m, counts, a)}
    table = compare_models(models, train_m, test_m, k=10, recall_ks=(20,), with_auc=False)
    show(note, table, "popular (all time)", COLS)


def simulator(a: argparse.Namespace) -> None:
    """The simulator part (module docstring)."""
    from bench_retrieval import truth_ndcg

    from pipelines.core.settings import Settings
    from pipelines.data import simulate
    from pipelines.data.validate import validate_partition
    from pipelines.features.tables import compute_features
    from pipelines.retrieval.data import load_training_data
    from pipelines.retrieval.evaluate import day_relevance

    with tempfile.TemporaryDirectory() as home:
        s = Settings.from_env({"RECLOOP_HOME": home, "RECLOOP_SEED": str(a.seed)})
        s.ensure_dirs()
        start = dt.date(2026, 1, 1)
        simulate.simulate(s, a.days, a.scale, a.seed, start)
        days = [start + dt.timedelta(days=d) for d in range(a.days)]
        for d in days:
            validate_partition(s, d, data_docs=False)
            compute_features(s, d)
        if a.validate:
            days = days[:-1]
        data = load_training_data(s, days[-2])
        counts = {0: np.asarray((data.implicit != 0).sum(0), np.float32).ravel()}
        counts.update({d: data.recent for d in a.prior_windows if d > 0})
        models = {
            "popular (7-day, build_model)": train.build_model("popular", data, s, seed=a.seed),
            **peers(data.implicit, data.recent),
            **grid(data.implicit, counts, a),
        }
        test = day_relevance(s, days[-1], data.users, data.items)
        table = compare_models(models, data.implicit, test, k=10, recall_ks=(100,))
        table = table.join(truth_ndcg(s, models, data, days[-1]))
        note = (
            f"simulator: scale {a.scale}, seed {a.seed}, train {days[0]}..{days[-2]} "
            f"({data.implicit.nnz} positive cells, {len(data.users)} users x "
            f"{len(data.items)} items), test {days[-1]}"
        )
        show(note, table, "popular (7-day, build_model)", [*COLS, "truth_ndcg@10", "corr_taste"])


def show(title: str, table: pd.DataFrame, ref: str, cols: list[str]) -> None:
    """Print ``table``'s ``cols`` with NDCG@10 (and truth NDCG@10) ratios to row ``ref``."""
    table = table.copy()
    for c in ("ndcg@10", "truth_ndcg@10"):
        if c in table.columns:
            table[f"{c} /pop"] = table[c] / table.loc[ref, c]
    print(f"\n{title}")
    show_cols = [*cols, *[c for c in table.columns if "/pop" in c], "n_users"]
    print(table[show_cols].to_string(float_format="%.4f"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--movielens", type=Path, help="folder with u.data (skipped when absent)")
    p.add_argument("--cutoff", default="1998-03-15")
    p.add_argument("--validate", action="store_true", help="the validation splits")
    p.add_argument("--sim", action="store_true", help="the simulator too")
    p.add_argument("--days", type=int, default=8)
    p.add_argument("--scale", default="demo")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--k", type=int, nargs="+", default=[50])
    p.add_argument("--shrinkage", type=float, nargs="+", default=[0.0])
    p.add_argument("--neighbours-of", nargs="+", default=["candidate", "history"])
    p.add_argument("--normalize", nargs="+", default=["neighbours", "rated", "none"])
    p.add_argument("--prior-weights", type=float, nargs="+", default=[0.0])
    p.add_argument("--prior-windows", type=int, nargs="+", default=[0])
    a = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmarks' helpers
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    if a.movielens:
        movielens(a.movielens, dt.date.fromisoformat(a.cutoff), a.validate, a)
    if a.sim:
        simulator(a)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
