"""Retrieval quality on the simulator: every model and baseline side by side.

  .venv/bin/python benchmarks/bench_retrieval.py [--days 8] [--scale demo] [--seed 42]

Simulates --days days into a temporary workspace, validates them, computes the feature tables,
trains each model on days 0..N-2 (the same `pipelines.train` code the DAG runs) and scores them
on day N-1's positives (training items excluded): NDCG@10, recall@100, hit rate, coverage,
novelty, fit time — and NDCG@10 against the simulator's true click probabilities of every unseen
item (``truth_ndcg@10``), which no logging policy's exposure bias touches.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import tempfile
import time

import numpy as np
import scipy.sparse as sp

from pipelines import simulate, train
from pipelines.evaluate import compare_models, ndcg_at_k
from pipelines.features import compute_features
from pipelines.settings import Settings
from pipelines.validate import validate_partition


def truth_ndcg(
    settings: Settings, models: dict, data: train.TrainingData, day: dt.date, n_users: int = 300
) -> list[float]:
    """NDCG@10 against the simulator's true click probability (slot 0) of every unseen item, for a
    seeded sample of the users active on ``day`` that the models know: relevance free of what the
    logging policy happened to show."""
    world = simulate.load_world(settings)
    active = [u for u in simulate.users_for_day(world, day) if u in data.users]
    rng = np.random.default_rng(0)
    users = np.sort(
        rng.choice(np.array(active, dtype=object), min(n_users, len(active)), replace=False)
    )
    rows = data.users.encode(users)
    items = np.array(data.items.ids, dtype=object)
    probs = simulate.true_click_prob(
        world, np.repeat(users, len(items)), np.tile(items, len(users)), 0
    )
    truth = probs.reshape(len(users), len(items))
    seen = data.implicit[rows].toarray() > 0
    truth[seen] = 0.0
    relevance = sp.csr_matrix(truth)
    out = []
    for model in models.values():
        recs, _ = model.recommend(rows, 10, exclude=data.implicit)
        out.append(ndcg_at_k(recs, relevance, 10))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--days", type=int, default=8)
    parser.add_argument("--scale", default="demo")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as home:
        s = Settings.from_env({"RECLOOP_HOME": home, "RECLOOP_SEED": str(args.seed)})
        s.ensure_dirs()
        start = dt.date(2026, 1, 1)
        simulate.simulate(s, args.days, args.scale, args.seed, start)
        days = [start + dt.timedelta(days=d) for d in range(args.days)]
        for d in days:
            validate_partition(s, d)
            compute_features(s, d)
        train_end, test_day = days[-2], days[-1]
        data = train.load_training_data(s, train_end)
        models, fit_s = {}, {}
        for name in ("popular", "itemknn", "userknn", "mf", "two_tower"):
            t0 = time.perf_counter()
            models[name] = train.build_model(name, data, s, seed=args.seed)
            fit_s[name] = time.perf_counter() - t0
        test = train.day_relevance(s, test_day, data.users, data.items)
        table = compare_models(models, data.implicit, test, k=10, recall_ks=(100,))
        table["fit_s"] = [fit_s[n] for n in table.index]
        table["truth_ndcg@10"] = truth_ndcg(s, models, data, test_day)
        cols = [
            "ndcg@10",
            "truth_ndcg@10",
            "recall@10",
            "recall@100",
            "hit_rate@10",
            "map@10",
            "auc",
            "coverage@10",
            "novelty@10",
            "n_users",
            "fit_s",
        ]
        print(
            f"scale {args.scale}, seed {args.seed}: train days {days[0]}..{train_end} "
            f"({data.n_events} positive events, {len(data.users)} users x {len(data.items)} items), test {test_day}"
        )
        print(table[cols].to_string(float_format="%.4f"))
        best_pop = table.loc["popular", "ndcg@10"]
        for name in ("mf", "two_tower"):
            truth_ratio = table.loc[name, "truth_ndcg@10"] / table.loc["popular", "truth_ndcg@10"]
            print(
                f"{name}: NDCG@10 / popular = {table.loc[name, 'ndcg@10'] / best_pop:.2f}x on logged clicks, {truth_ratio:.2f}x on the truth"
            )


if __name__ == "__main__":
    main()
