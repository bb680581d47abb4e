"""NCF and BPR beside MF (ALS), item KNN and most-popular: the simulator and MovieLens 100K.

  OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_ncf_bpr.py --movielens DIR
      [--days 8] [--scale demo] [--seed 42] [--cutoff 1998-03-15] [--validate] [--skip-sim]
      [--sequential [--prior-weights W ...] [--prior-windows D ...]]

Each model is built by ``pipelines.retrieval.train`` (``NCF_PARAMS``, ``BPR_PARAMS``,
``MF_PARAMS``: the daily job's settings) and scored by ``pipelines.core.metrics.compare_models``
(every unseen item ranked, training items excluded): NDCG@10, recall@10, MAP@10, fit seconds,
and ratios to most-popular and to MF.

- **Simulator** (as ``bench_retrieval.py``): ``--days`` days at ``--scale`` (no sequential
  structure: the simulator has none) validated and featurized in a temporary workspace; models
  trained through day N-2 with ``train.build_model`` (MF with its side attributes, ``popular``
  the 7-day trending list), tested on day N-1's positives, plus ``truth_ndcg@10``: NDCG@10 of
  the same lists against the simulator's true click probabilities (``bench_retrieval.truth_ndcg``).
- **MovieLens 100K** (``../shared/tools/get-movielens-100k DIR`` writes it): ``u.data`` read
  directly (not through ``recloop ingest`` + validation, which take minutes and keep the same
  rows), temporal split at ``--cutoff`` (UTC days: training = ratings through the cut-off, test
  = later ratings of training users on training items, binary relevance), the split of
  ``bench_movielens.py``. Every rating is one positive (as the platform's implicit models read
  ratings). MF is ``ALS(**MF_PARAMS)`` without side attributes (no feature store here), item
  KNN ``ItemKNN(**ITEMKNN_PARAMS)`` (its prior's counts: the last 7 days') beside the reference
  formula (``itemknn (reference)``: ``ItemKNN(k=50)``), most
  popular both all-time and over the cut-off's last 7 days; ``implicit``'s BPR (the
  ``bench_movielens.py`` settings) is beside ours when the library is installed.

``--sequential`` adds GRU4Rec, SASRec and BERT4Rec (``SEQUENTIAL_PARAMS``, its
``popularity_weight`` included); ``--prior-weights`` scores each of them, fitted once, again at
each log-popularity prior weight (the prior is added at scoring: training does not depend on it),
over all-time training counts and (``--prior-windows``, days; 0 = all time) over the ratings of
the cut-off's last D days: rows ``gru4rec w=0.5``, ``gru4rec w=0.5 28d``.

``--validate`` moves both splits one step back (simulator: train through N-3, test N-2; MovieLens:
cut-off 28 days earlier, test up to the real cut-off) for choosing hyper-parameters without
looking at the test split.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipelines.core.metrics import compare_models
from pipelines.retrieval import train

MODELS = ("popular", "itemknn", "mf", "ncf", "bpr")
SEQUENTIAL = ("gru4rec", "sasrec", "bert4rec")
K = 10
COLS = [f"ndcg@{K}", f"recall@{K}", f"map@{K}"]


def fitted(builders: dict[str, Any]) -> tuple[dict[str, Any], dict[str, float]]:
    """Call each zero-argument builder: ``(models, fit seconds)`` by name."""
    models, seconds = {}, {}
    for name, build in builders.items():
        t0 = time.perf_counter()
        models[name] = build()
        seconds[name] = time.perf_counter() - t0
        logging.getLogger(__name__).warning("fitted %s in %.1fs", name, seconds[name])
    return models, seconds


def report(title: str, table: pd.DataFrame, seconds: dict[str, float], pop: str) -> None:
    """Print ``table`` (one row per model) with fit seconds and ratios to ``pop`` and ``mf``."""
    table = table.copy()
    table["fit_s"] = [seconds.get(n, float("nan")) for n in table.index]
    cols = [c for c in (*COLS, "truth_ndcg@10") if c in table.columns]
    for ref, label in ((pop, "pop"), ("mf", "mf")):
        for c in ("ndcg@10", "truth_ndcg@10"):
            if c in table.columns:
                table[f"{c} /{label}"] = table[c] / table.loc[ref, c]
    print(f"\n{title}")
    show = [*cols, *[c for c in table.columns if "/" in c], "n_users", "fit_s"]
    print(table[show].to_string(float_format="%.4f"))


def simulator(days: int, scale: str, seed: int, validate: bool) -> None:
    """The simulator part (module docstring)."""
    from bench_retrieval import truth_ndcg

    from pipelines.core.settings import Settings
    from pipelines.data import simulate
    from pipelines.data.validate import validate_partition
    from pipelines.features.tables import compute_features
    from pipelines.retrieval.data import load_training_data
    from pipelines.retrieval.evaluate import day_relevance

    with tempfile.TemporaryDirectory() as home:
        s = Settings.from_env({"RECLOOP_HOME": home, "RECLOOP_SEED": str(seed)})
        s.ensure_dirs()
        start = dt.date(2026, 1, 1)
        simulate.simulate(s, days, scale, seed, start)
        all_days = [start + dt.timedelta(days=d) for d in range(days)]
        for d in all_days:
            validate_partition(s, d, data_docs=False)
            compute_features(s, d)
        if validate:
            all_days = all_days[:-1]
        train_end, test_day = all_days[-2], all_days[-1]
        data = load_training_data(s, train_end)
        models, seconds = fitted(
            {n: (lambda n=n: train.build_model(n, data, s, seed=seed)) for n in MODELS}
        )
        test = day_relevance(s, test_day, data.users, data.items)
        table = compare_models(models, data.implicit, test, k=K, recall_ks=(100,))
        table = table.join(truth_ndcg(s, models, data, test_day))
        report(
            f"simulator: scale {scale}, seed {seed}, train {all_days[0]}..{train_end} "
            f"({data.implicit.nnz} positive cells, {len(data.users)} users x "
            f"{len(data.items)} items), test {test_day}",
            table,
            seconds,
            "popular",
        )


def movielens_split(
    folder: Path, cutoff: dt.date, last: dt.date | None = None, window_days: int = 7
) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray, str]:
    """``(train (U, I) ones, test (U, I) ones, recent (I,), note)``: ratings through ``cutoff``
    (UTC days); the later ratings (through ``last`` when given) of training users on training
    items (their training items included; the metrics drop them); ratings per item in the
    ``window_days`` days through the cut-off."""
    from models.baselines import window_item_weights

    raw = pd.read_csv(folder / "u.data", sep="\t", names=["user", "item", "rating", "ts"])
    ts = pd.to_datetime(raw["ts"], unit="s", utc=True).dt.tz_localize(None)
    day = ts.dt.date
    tr = raw[day <= cutoff]
    te = raw[(day > cutoff) & ((day <= last) if last else True)]
    users = np.sort(tr["user"].unique())
    items = np.sort(tr["item"].unique())
    te = te[te["user"].isin(users) & te["item"].isin(items)]

    def matrix(frame: pd.DataFrame) -> sp.csr_matrix:
        u = np.searchsorted(users, frame["user"].to_numpy())
        i = np.searchsorted(items, frame["item"].to_numpy())
        m = sp.csr_matrix((np.ones(len(u), np.float32), (u, i)), shape=(len(users), len(items)))
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    train_m, test_m = matrix(tr), matrix(te)
    end = np.datetime64(cutoff + dt.timedelta(days=1))
    idx = np.searchsorted(items, tr["item"].to_numpy())
    recent = window_item_weights(idx, ts[day <= cutoff].to_numpy(), end, window_days, len(items))
    note = (
        f"MovieLens 100K through {cutoff}: {len(users)} users x {len(items)} items, "
        f"{train_m.nnz} training ratings; {test_m.nnz} later ratings"
        f"{f' (through {last})' if last else ''} of those users on those items"
    )
    return train_m, test_m, recent, note


def movielens_sequences(folder: Path, cutoff: dt.date) -> tuple[np.ndarray, np.ndarray]:
    """Each training user's rated items through ``cutoff`` in time order (ties by ``u.data``
    line), in :func:`movielens_split`'s row and column order: ``(indptr (U + 1,), items (E,))``
    (:func:`pipelines.retrieval.data.user_sequences`)."""
    from pipelines.core.vocab import Vocab
    from pipelines.retrieval.data import user_sequences

    raw = pd.read_csv(folder / "u.data", sep="\t", names=["user", "item", "rating", "ts"])
    day = pd.to_datetime(raw["ts"], unit="s", utc=True).dt.date
    tr = raw[day <= cutoff].sort_values("ts", kind="stable")
    users = Vocab([str(u) for u in np.sort(tr["user"].unique())])
    items = Vocab([str(i) for i in np.sort(tr["item"].unique())])
    events = pd.DataFrame({"user_id": tr["user"].astype(str), "item_id": tr["item"].astype(str)})
    return user_sequences(events, users, items)


def prior_grid(
    models: dict[str, Any], counts: dict[int, np.ndarray], weights: list[float]
) -> dict[str, Any]:
    """Each sequential model of ``models`` again at each prior weight of ``weights`` over each
    window's item counts ``counts`` (days → ``(I,)``; 0 = all time): shallow copies sharing
    the fitted network, by name ``"<model> w=<weight>[ <days>d]"``."""
    import torch

    out = {}
    for name in (n for n in SEQUENTIAL if n in models):
        for days, n in counts.items():
            for w in weights:
                m = copy.copy(models[name])
                m.popularity_weight, m.item_counts = float(w), torch.from_numpy(n)
                out[f"{name} w={w:g}{f' {days}d' if days else ''}"] = m
    return out


def movielens(
    folder: Path,
    cutoff: dt.date,
    seed: int,
    last: dt.date | None = None,
    sequential: bool = False,
    prior_weights: list[float] | None = None,
    prior_windows: list[int] | None = None,
) -> None:
    """The MovieLens part (module docstring); ``sequential``: GRU4Rec, SASRec and BERT4Rec too
    (``SEQUENTIAL_PARAMS``, no side attributes: no feature store here), over each training
    user's ratings in time order (:func:`movielens_sequences`), and with ``prior_weights`` at
    each of those log-popularity prior weights over each window of ``prior_windows``
    (:func:`prior_grid`)."""
    train_m, test_m, recent, note = movielens_split(folder, cutoff, last)
    builders = movielens_builders(folder, cutoff, seed, train_m, recent, sequential)
    models, seconds = fitted(builders)
    if sequential and prior_weights:
        counts = {0: np.asarray(train_m.sum(axis=0), np.float32).ravel()}
        for days in prior_windows or ():
            if days > 0:
                counts[days] = movielens_split(folder, cutoff, last, days)[2]
        models.update(prior_grid(models, counts, prior_weights))
    ref = implicit_bpr(train_m)
    if ref is not None:
        models[IMPLICIT_BPR], seconds[IMPLICIT_BPR] = ref
    table = compare_models(models, train_m, test_m, k=K, recall_ks=(20,))
    report(note, table, seconds, "popular (all time)")
    if ref is not None:
        ratio = table.loc["bpr", "ndcg@10"] / table.loc[IMPLICIT_BPR, "ndcg@10"]
        print(f"bpr / {IMPLICIT_BPR}: NDCG@{K} {ratio:.3f}")


def movielens_builders(
    folder: Path,
    cutoff: dt.date,
    seed: int,
    train_m: sp.csr_matrix,
    recent: np.ndarray,
    sequential: bool = False,
) -> dict[str, Any]:
    """Zero-argument builders of the MovieLens part's models (module docstring) on ``train_m``
    ``(U, I)`` (``recent`` ``(I,)``: the last 7 days' ratings per item), by row name; with
    ``sequential`` GRU4Rec, SASRec and BERT4Rec over :func:`movielens_sequences`. The settings
    are read when a builder is called."""
    from models.als import ALS
    from models.baselines import ItemKNN, MostPopular
    from models.bpr import BPR
    from models.ncf import NCF

    builders = {
        "popular (all time)": lambda: MostPopular().fit(train_m),
        "popular (last 7 days)": lambda: MostPopular(7).fit(train_m, item_weights=recent),
        "itemknn": lambda: ItemKNN(**train.ITEMKNN_PARAMS).fit(train_m, item_counts=recent),
        "itemknn (reference)": lambda: ItemKNN(k=50).fit(train_m),
        "mf": lambda: ALS(**train.MF_PARAMS, seed=seed).fit(train_m, progress=False),
        "ncf": lambda: NCF(**train.NCF_PARAMS, seed=seed).fit(train_m, progress=False),
        "bpr": lambda: BPR(**train.BPR_PARAMS, seed=seed).fit(train_m, progress=False),
    }
    if sequential:
        from models.sequential import BERT4Rec, GRU4Rec, SASRec

        seqs = movielens_sequences(folder, cutoff)
        for name, cls in zip(SEQUENTIAL, (GRU4Rec, SASRec, BERT4Rec), strict=True):
            builders[name] = lambda cls=cls: cls(**train.SEQUENTIAL_PARAMS, seed=seed).fit(
                train_m, sequences=seqs, progress=False
            )
    return builders


IMPLICIT_BPR = "implicit BPR f=64"


def implicit_bpr(train_m: sp.csr_matrix) -> tuple[Any, float] | None:
    """`implicit`'s BPR with ``bench_movielens.py``'s settings as a scorer (its full factor
    product, which carries its item bias): ``(scorer, fit seconds)``, or ``None`` without it."""
    try:
        from implicit.bpr import BayesianPersonalizedRanking
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    from bench_retrieval import ScoreFn

    model = BayesianPersonalizedRanking(
        factors=64, learning_rate=0.01, regularization=0.01, iterations=100, random_state=0
    )
    t0 = time.perf_counter()
    with threadpool_limits(1, "blas"):
        model.fit(train_m, show_progress=False)
    seconds = time.perf_counter() - t0
    users, items = np.asarray(model.user_factors), np.asarray(model.item_factors)
    return ScoreFn(lambda u: users[u] @ items.T, train_m.shape[1]), seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--movielens", type=Path, help="folder with u.data (skipped when absent)")
    p.add_argument("--days", type=int, default=8)
    p.add_argument("--scale", default="demo")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--cutoff", default="1998-03-15")
    p.add_argument("--validate", action="store_true", help="the validation splits")
    p.add_argument("--skip-sim", action="store_true")
    p.add_argument("--sequential", action="store_true", help="MovieLens: gru4rec/sasrec/bert4rec")
    p.add_argument("--prior-weights", type=float, nargs="*", help="sequential: prior weights")
    p.add_argument("--prior-windows", type=int, nargs="*", help="their count windows, days")
    a = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_retrieval's helpers
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    if not a.skip_sim:
        simulator(a.days, a.scale, a.seed, a.validate)
    if a.movielens:
        cutoff = dt.date.fromisoformat(a.cutoff)
        grid = {"prior_weights": a.prior_weights, "prior_windows": a.prior_windows}
        if a.validate:
            last, cutoff = cutoff, cutoff - dt.timedelta(days=28)
            movielens(a.movielens, cutoff, a.seed, last, a.sequential, **grid)
        else:
            movielens(a.movielens, cutoff, a.seed, sequential=a.sequential, **grid)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
