"""Retrieval quality on the simulator: every model and baseline side by side.

  .venv/bin/python benchmarks/bench_retrieval.py [--days 8] [--scale demo] [--seed 42]

Simulates --days days into a temporary workspace, validates them, computes the feature tables,
trains each model on days 0..N-2 (the same `pipelines.train` code the DAG runs) and scores them
on day N-1's positives (training items excluded): NDCG@10, recall@100, hit rate, coverage,
novelty, fit time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import tempfile
import time

from pipelines import simulate, train
from pipelines.evaluate import compare_models
from pipelines.features import compute_features
from pipelines.settings import Settings
from pipelines.validate import validate_partition


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
        cols = [
            "ndcg@10",
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
            print(f"{name}: NDCG@10 / popular = {table.loc[name, 'ndcg@10'] / best_pop:.2f}x")


if __name__ == "__main__":
    main()
