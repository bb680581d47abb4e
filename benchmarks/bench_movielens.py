"""MovieLens 100K through the platform's own path, beside the `implicit` library.

  .venv/bin/python benchmarks/bench_movielens.py --data /tmp/rl/ml100k [--cutoff 1998-03-15]
                                                 [--home DIR] [--backfill]

Steps, each timed: ingest (``pipelines.data.ingest.import_movielens``) → :func:`prepare_days`
(validate + features for every imported day, in order: the per-day part of a backfill) → train
each retriever (``mf``, ``two_tower``, ``popular``, ``itemknn``, ``userknn``) through the cut-off
with ``pipelines.retrieval.train.train`` (the DAG's code; ``popular`` counts the last 7 days: a
trending list), plus the all-time most-popular list (``models.baselines.MostPopular`` over the
whole training matrix: the issue's "most-popular" reference) → forward evaluation on every rating
after the cut-off, for the users with ratings both before and after it: NDCG@10, recall@20 and
catalog coverage@10 (``pipelines.core.metrics``, training items excluded), beside `implicit`'s
ALS (a small grid of factors × regularization × iterations; the best on this test set is
reported, which flatters it) and BPR, fitted on the very same training matrix and scored by the
same functions. Relevance is binary (any rating after the cut-off is a positive), as the
platform's implicit models read ratings.

``--backfill`` runs ``pipelines.orchestration.backfill.backfill`` over the imported range instead
of :func:`prepare_days` (it also materializes into Redis, trains, registers and gates: needs
``RECLOOP_REDIS_URL`` to reach a running Redis).

Validation uses the imported-history volume rule (the import records its source): days whose
volume collapses against the trailing median pass with a warning in their report, as 14 of the
213 MovieLens days do; no setting is overridden.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

MODELS = ("mf", "two_tower", "popular", "itemknn", "userknn")
ALS_GRID = {"factors": (32, 64, 128), "regularization": (0.01, 0.1, 1.0), "iterations": (15, 30)}
K, RECALL_K = 10, 20
POPULAR_7D = "popular (last 7 days)"  # the platform's `popular` model: a trending list
POPULAR_ALL = "most-popular (all time)"


def timed(times: dict[str, float], step: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn``, add its wall seconds to ``times[step]``, return its result."""
    t0 = time.perf_counter()
    out = fn()
    times[step] = times.get(step, 0.0) + time.perf_counter() - t0
    return out


def prepare_days(settings, days: list[dt.date], backfill: bool = False) -> str:
    """Validate and compute features for every day in ``days`` (in order); with ``backfill``,
    ``pipelines.orchestration.backfill.backfill`` over the same range instead. Returns a note."""
    if backfill:
        from pipelines.orchestration.backfill import backfill as run_backfill

        summary = run_backfill(settings, days[0], days[-1], progress=False)
        return f"backfill: champion {summary.champion}"
    from pipelines.data.validate import validate_partition
    from pipelines.features.tables import compute_features

    for day in days:
        validate_partition(settings, day)
        compute_features(settings, day)
    return f"validate + features for {len(days)} days"


def test_split(settings, data, cutoff: dt.date, last: dt.date) -> tuple[np.ndarray, sp.csr_matrix]:
    """The evaluation users (rows of ``data.users`` with a rating in ``(cutoff, last]``) ``(U,)``
    and their binary relevance ``(U, I)`` over ``data.items`` (unseen-in-training items only)."""
    from pipelines.retrieval.data import matrices, read_positives

    events = read_positives(settings, last, cutoff + dt.timedelta(days=1))
    test, _ = matrices(events, data.users, data.items)
    test = test.tocsr()
    test.data[:] = 1.0
    test = (test - test.multiply(data.implicit > 0)).tocsr()
    test.eliminate_zeros()
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    return users, test[users]


def score(recs: np.ndarray, rel: sp.csr_matrix, n_items: int) -> dict[str, float]:
    """NDCG@10, recall@20 and catalog coverage@10 of ``recs`` ``(U, >=20)`` item rows."""
    from pipelines.core.metrics import catalog_coverage, ndcg_at_k, recall_at_k

    return {
        "ndcg@10": ndcg_at_k(recs, rel, K),
        "recall@20": recall_at_k(recs, rel, RECALL_K),
        "coverage@10": catalog_coverage(recs[:, :K], n_items),
    }


def implicit_recs(model, train: sp.csr_matrix, users: np.ndarray) -> np.ndarray:
    """Top-20 item rows ``(U, 20)`` from a fitted `implicit` model, training items excluded."""
    ids, _ = model.recommend(users, train[users], N=RECALL_K, filter_already_liked_items=True)
    return np.asarray(ids, dtype=np.int64)


def implicit_rows(train: sp.csr_matrix, users: np.ndarray, rel: sp.csr_matrix) -> list[dict]:
    """ALS over ``ALS_GRID`` (best by NDCG@10 kept) and BPR, each a result row with fit time."""
    from implicit.bpr import BayesianPersonalizedRanking
    from implicit.cpu.als import AlternatingLeastSquares

    binary = train.copy()
    binary.data[:] = 1.0
    rows, best = [], None
    grid = itertools.product(*ALS_GRID.values())
    for factors, reg, iters in grid:
        model = AlternatingLeastSquares(
            factors=factors, regularization=reg, iterations=iters, random_state=0
        )
        t0 = time.perf_counter()
        model.fit(binary, show_progress=False)
        row = {
            "fit_s": time.perf_counter() - t0,
            **score(implicit_recs(model, binary, users), rel, train.shape[1]),
        }
        row["model"] = f"implicit ALS f={factors} reg={reg} it={iters}"
        rows.append(row)
        if best is None or row["ndcg@10"] > best["ndcg@10"]:
            best = row
    bpr = BayesianPersonalizedRanking(
        factors=64, learning_rate=0.01, regularization=0.01, iterations=100, random_state=0
    )
    t0 = time.perf_counter()
    bpr.fit(binary, show_progress=False)
    bpr_row = {
        "fit_s": time.perf_counter() - t0,
        **score(implicit_recs(bpr, binary, users), rel, train.shape[1]),
    }
    bpr_row["model"] = "implicit BPR f=64"
    grid_s = sum(r["fit_s"] for r in rows)
    best = {**best, "model": f"{best['model']} (best of {len(rows)}, grid {grid_s:.1f}s)"}
    return [best, bpr_row]


def platform_rows(settings, cutoff: dt.date, data, users, rel, times) -> list[dict]:
    """Train each of ``MODELS`` through ``cutoff`` and score it on the test split."""
    from pipelines.retrieval import train

    out = []
    for name in MODELS:
        t0 = time.perf_counter()
        timed(times, f"train {name}", lambda n=name: train.train(settings, n, cutoff))
        fit_s = time.perf_counter() - t0
        art = train.load_artifact(settings, name, cutoff)
        assert art.users.ids == data.users.ids and art.items.ids == data.items.ids
        recs, _ = art.model.recommend(users, RECALL_K, exclude=art.seen)
        label = POPULAR_7D if name == "popular" else name
        out.append({"model": label, "fit_s": fit_s, **score(recs, rel, len(data.items))})
    return out


def all_time_popular_row(data, users, rel) -> dict:
    """The all-time most-popular list (the issue's "most-popular" reference): items by the number
    of training users over the whole training matrix (``models.baselines.MostPopular`` with no
    window weights), training items excluded, scored like the other rows."""
    from models.baselines import MostPopular

    t0 = time.perf_counter()
    model = MostPopular().fit(data.implicit)
    fit_s = time.perf_counter() - t0
    recs, _ = model.recommend(users, RECALL_K, exclude=data.implicit)
    return {"model": POPULAR_ALL, "fit_s": fit_s, **score(recs, rel, len(data.items))}


def run(data_dir: Path, home: Path, cutoff: dt.date, backfill: bool) -> None:
    from threadpoolctl import threadpool_limits

    from pipelines.core import schema
    from pipelines.core.settings import Settings
    from pipelines.data.ingest import import_movielens
    from pipelines.retrieval.data import load_training_data

    settings = Settings.from_env({**os.environ, "RECLOOP_HOME": str(home)})
    settings.ensure_dirs()
    times: dict[str, float] = {}
    summary = timed(times, "ingest", lambda: import_movielens(settings, data_dir))
    print(summary)
    days = schema.partition_dates(settings.interactions_dir)
    note = timed(times, "prepare_days", lambda: prepare_days(settings, days, backfill))
    print(note)
    data = load_training_data(settings, cutoff)
    users, rel = test_split(settings, data, cutoff, days[-1])
    print(
        f"train through {cutoff}: {len(data.users)} users x {len(data.items)} items, "
        f"{data.implicit.nnz} ratings; test: {len(users)} users, {rel.nnz} ratings after it"
    )
    rows = platform_rows(settings, cutoff, data, users, rel, times)
    rows.append(all_time_popular_row(data, users, rel))
    with threadpool_limits(1, "blas"):
        rows += timed(times, "implicit", lambda: implicit_rows(data.implicit, users, rel))
    report(rows, times)


def report(rows: list[dict], times: dict[str, float]) -> None:
    """Print the results table, the ratios and the time of each step."""
    print(
        f"\n| model | NDCG@{K} | recall@{RECALL_K} | coverage@{K} | fit s |\n|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['model']} | {r['ndcg@10']:.4f} | {r['recall@20']:.4f} | {r['coverage@10']:.3f} | {r['fit_s']:.1f} |"
        )
    by = {r["model"]: r["ndcg@10"] for r in rows}
    als = next(r["ndcg@10"] for r in rows if r["model"].startswith("implicit ALS"))
    mf = by["mf"]
    print(
        f"\nNDCG@{K} ratios: MF / best implicit ALS = {mf / als:.3f}; "
        f"MF / most-popular (all time) = {mf / by[POPULAR_ALL]:.3f}; "
        f"MF / popular (last 7 days) = {mf / by[POPULAR_7D]:.3f}"
    )
    print("\n| step | seconds |\n|---|---|")
    for step, s in times.items():
        print(f"| {step} | {s:.1f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, required=True, help="folder with u.data (+ u.item, u.user)")
    p.add_argument("--cutoff", default="1998-03-15", help="train through this day")
    p.add_argument("--home", type=Path, help="workspace (default: a temporary folder)")
    p.add_argument("--backfill", action="store_true", help="prepare with recloop backfill")
    a = p.parse_args()
    cutoff = dt.date.fromisoformat(a.cutoff)
    if a.home:
        run(a.data, a.home, cutoff, a.backfill)
        return
    with tempfile.TemporaryDirectory(prefix="bench-movielens-") as tmp:
        run(a.data, Path(tmp), cutoff, a.backfill)


if __name__ == "__main__":
    main()
