"""MovieLens 100K through the platform's own path, beside the `implicit` library.

  .venv/bin/python benchmarks/bench_movielens.py --data /tmp/rl/ml100k [--cutoff 1998-03-15]
                                                 [--home DIR] [--backfill] [--reuse]

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

``--backfill`` runs ``pipelines.orchestration.backfill.backfill`` from the first imported day
through the cut-off instead of :func:`prepare_days` (``--test-days auto``, ``recloop backfill``'s
default; it also materializes the cut-off's features into Redis, trains, registers and gates:
needs ``RECLOOP_REDIS_URL`` to reach a running Redis) and validates the days after the cut-off
(the test split). It then adds the **served-pipeline comparison** (:func:`served_doc`):
``recloop stages`` on the day after the cut-off with the champion, forward window = every day
after the cut-off — NDCG@10, hit rate@10 and recall@10 of the slates of ``full``,
``retrieval_only``, ``trending`` and each ``<source>_only`` against each user's ratings in the
window (users: everyone with a rating in it, new users included), beside the offline rows.
``--reuse`` skips the import when ``--home`` already holds imported partitions (a re-import
rewrites them, and the backfill would then redo every day).

Validation uses the imported-history volume rule (the import records its source): days whose
volume collapses against the trailing median pass with a warning in their report, as 14 of the
213 MovieLens days do; no setting is overridden.
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
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


def prepare_days(
    settings, days: list[dt.date], backfill: bool = False, cutoff: dt.date | None = None
) -> str:
    """Validate and compute features for every day in ``days`` (in order); with ``backfill``,
    ``pipelines.orchestration.backfill.backfill`` from the first day through ``cutoff`` (auto
    test window) and validation alone for the days after it (skipped when current). Returns a
    note."""
    if backfill:
        from pipelines.orchestration.backfill import backfill as run_backfill
        from pipelines.orchestration.backfill import validation_current

        summary = run_backfill(settings, days[0], cutoff, progress=False, test_days="auto")
        validate_days(
            settings, [d for d in days if d > cutoff and not validation_current(settings, d)]
        )
        return (
            f"backfill through {cutoff}: champion {summary.champion}, test days {summary.test_days}"
        )
    from pipelines.data.validate import validate_partition
    from pipelines.features.tables import compute_features

    for day in days:
        validate_partition(settings, day)
        compute_features(settings, day)
    return f"validate + features for {len(days)} days"


def validate_days(settings, days: list[dt.date]) -> None:
    """Validate ``days`` (no features, no Data Docs): the test split's positives."""
    from pipelines.data.validate import validate_partition

    for day in days:
        validate_partition(settings, day, data_docs=False)


def served_doc(settings, cutoff: dt.date, last: dt.date) -> dict:
    """``recloop stages`` (:func:`pipelines.loop.stages.run_stages`) on ``cutoff + 1`` with the
    champion, forward window ``cutoff + 1 .. last``: the document, with ``seconds``."""
    from pipelines.loop.stages import run_stages

    t0 = time.perf_counter()
    day = cutoff + dt.timedelta(days=1)
    doc = run_stages(settings, day.isoformat(), "champion", horizon_days=(last - cutoff).days)
    doc["seconds"] = time.perf_counter() - t0
    return doc


SOURCE_VARIANTS_EXCLUDED = ("full", "retrieval_only", "new_users_trending")
"""Variants that are not a single retriever (``trending`` is one: the cold-start list;
``new_users_trending`` is the full pipeline with trending for new users)."""


def known_ndcg(v: dict) -> float | None:
    """NDCG@10 of a variant over the users with positives before the day (every bucket but
    ``0``: the users the served variants can differ on), weighted by users per bucket."""
    n = {b: c for b, c in v["forward_users_by_bucket"].items() if b != "0" and c}
    total = sum(n.values())
    return sum(v["ndcg_by_bucket"][b] * c for b, c in n.items()) / total if total else None


def served_report(doc: dict, rows: list[dict]) -> None:
    """Print the served variants' forward figures and the floor: ``full`` >= the best single
    retriever served (``<source>_only`` with the ranker, and ``trending``), over all scored
    users and over those with history, beside the best offline single retriever of ``rows``."""
    first, last = doc["forward_window"]
    v0 = doc["variants"]["full"]
    counts = v0["forward_users_by_bucket"]
    print(
        f"\nserved pipeline: stages --date {doc['date']} --horizon-days "
        f"{(dt.date.fromisoformat(last) - dt.date.fromisoformat(first)).days + 1}, bundle "
        f"{doc['bundle']}, {doc['users']} users replayed, {v0['forward_users']} scored "
        f"({doc['seconds']:.0f} s); scored users per bucket (positives before the day): {counts}"
    )
    buckets = [b for b, c in counts.items() if c]
    print(
        f"| variant | NDCG@{K} | hit@{K} | recall@{K} | NDCG@{K} with history | "
        + " | ".join(f"NDCG@{K} [{b}]" for b in buckets)
        + " | distinct items | paths |\n|---|---|---|---|---|"
        + "---|" * (len(buckets) + 2)
    )
    for name, v in doc["variants"].items():
        by = [_fmt(v["ndcg_by_bucket"][b]) for b in buckets]
        print(
            f"| {name} | {_fmt(v['ndcg@10'])} | {_fmt(v['hit_rate@10'])} | "
            f"{_fmt(v['recall@10'])} | {_fmt(known_ndcg(v))} | "
            + " | ".join(by)
            + f" | {v['distinct_items']} | {v['paths']} |"
        )
    single = [n for n in doc["variants"] if n not in SOURCE_VARIANTS_EXCLUDED]
    for label, fig in (("all scored users", lambda v: v["ndcg@10"]), ("with history", known_ndcg)):
        vals = {n: fig(doc["variants"][n]) for n in single}
        best = max(vals, key=lambda n: vals[n])
        full = fig(v0)
        print(
            f"{label}: full {full:.4f} vs best single served retriever {best} {vals[best]:.4f}: "
            f"{'>=' if full >= vals[best] else '<'} (ratio {full / vals[best]:.3f}); "
            f"retrieval_only {fig(doc['variants']['retrieval_only']):.4f}"
        )
    offline = {r["model"]: r["ndcg@10"] for r in rows if r["model"] in MODELS + (POPULAR_7D,)}
    ob = max(offline, key=lambda n: offline[n])
    print(
        f"best offline single retriever (known users, models through the cut-off): {ob} {offline[ob]:.4f}"
    )


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


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


def run(data_dir: Path, home: Path, cutoff: dt.date, backfill: bool, reuse: bool = False) -> None:
    from threadpoolctl import threadpool_limits

    from pipelines.core import schema
    from pipelines.core.settings import Settings
    from pipelines.data.ingest import import_movielens
    from pipelines.retrieval.data import load_training_data

    settings = Settings.from_env({**os.environ, "RECLOOP_HOME": str(home)})
    settings.ensure_dirs()
    times: dict[str, float] = {}
    if reuse and schema.partition_dates(settings.interactions_dir):
        print(f"ingest: reusing the imported partitions of {home}")
    else:
        print(timed(times, "ingest", lambda: import_movielens(settings, data_dir)))
    days = schema.partition_dates(settings.interactions_dir)
    note = timed(times, "prepare_days", lambda: prepare_days(settings, days, backfill, cutoff))
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
    doc = (
        timed(times, "stages", lambda: served_doc(settings, cutoff, days[-1])) if backfill else None
    )
    report(rows, times)
    if doc is not None:
        served_report(doc, rows)
        out = home / "reports" / "bench_movielens_stages.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(doc, indent=2, default=str))
        print(f"stages document: {out}")


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
    p.add_argument("--reuse", action="store_true", help="keep --home's imported partitions")
    a = p.parse_args()
    cutoff = dt.date.fromisoformat(a.cutoff)
    if a.home:
        run(a.data, a.home, cutoff, a.backfill, a.reuse)
        return
    with tempfile.TemporaryDirectory(prefix="bench-movielens-") as tmp:
        run(a.data, Path(tmp), cutoff, a.backfill)


if __name__ == "__main__":
    main()
