"""Retrieval quality on the simulator: every model and baseline side by side.

  .venv/bin/python benchmarks/bench_retrieval.py [--days 8] [--scale demo] [--seed 42]

Simulates --days days into a temporary workspace, validates them, computes the feature tables,
trains each model on days 0..N-2 (the same `pipelines.retrieval.train` code the DAG runs) and scores them
on day N-1's positives (training items excluded): NDCG@10, recall@100, hit rate, coverage,
novelty, fit time — and NDCG@10 against the simulator's true click probabilities of every unseen
item (``truth_ndcg@10``), which no logging policy's exposure bias touches.

Diagnostics (same sample of users as ``truth_ndcg@10``): ``corr_taste`` / ``corr_appeal`` are the
mean per-user Pearson correlations of a model's scores over the unseen items with the true taste
term ``REL_AFFINITY * a_ui`` and the true appeal term ``REL_APPEAL * b_i / log(M0)`` of the
simulator's relevance logit: whether a model learned personal taste at all, or only popularity.
A second table gives reference scorers that are not models: the oracle (true relevance), the
oracle times the logging policy's exposure (the best possible list for *logged* clicks, which
only exist where the popularity policy showed something), and ``group_lift``: a counting
baseline, ``sum over user attributes (age band, gender, country) of log(observed / expected
positives of that attribute value in the item's category) + log1p(recent positives)``, which
shows how much taste the training positives reveal through observed attributes alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import tempfile
import time
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from models.base import Retriever
from pipelines.core import layout
from pipelines.core.metrics import compare_models, ndcg_at_k
from pipelines.core.settings import Settings
from pipelines.data import simulate
from pipelines.data.validate import validate_partition
from pipelines.features.tables import compute_features
from pipelines.retrieval import train
from pipelines.retrieval.data import TrainingData, load_training_data
from pipelines.retrieval.evaluate import day_relevance


class ScoreFn(Retriever):
    """A reference scorer (not a trainable model): ``score_all`` from a function of user rows."""

    name = "score_fn"

    def __init__(self, fn, n_items: int) -> None:
        self.fn, self.n_items = fn, n_items

    def fit(self, interactions: sp.csr_matrix, **kwargs: Any) -> ScoreFn:
        return self

    def score_all(self, users: np.ndarray) -> np.ndarray:
        return np.asarray(self.fn(np.asarray(users, np.int64)), dtype=np.float32)

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.score_all(users)[np.arange(len(users)), items]

    def config(self) -> dict[str, Any]:
        return {}

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        pass


def reference_scorers(settings: Settings, data: TrainingData) -> dict[str, ScoreFn]:
    """Oracle, oracle x logging exposure, and the attribute x category lift baseline."""
    world = simulate.load_world(settings)
    world.extend_to(data.date)
    urow = simulate.user_rows(world, np.array(data.users.ids, dtype=object))
    irow = simulate.item_rows(world, np.array(data.items.ids, dtype=object))
    appeal = simulate.REL_APPEAL * world.item_appeal[irow] / world.appeal_scale
    norm = math.sqrt(simulate.DIM * simulate.TASTE_VAR)
    exposure = np.exp(world.item_appeal[irow])
    exposure = (1 - simulate.EXPLORATION) * exposure / exposure.sum()
    exposure += simulate.EXPLORATION / len(irow)

    def logit(users: np.ndarray) -> np.ndarray:
        a = world.user_vec[urow[users]].astype(np.float64) @ world.item_vec[irow].T / norm
        rel = simulate.REL_BIAS + simulate.REL_AFFINITY * a + appeal[None, :]
        return rel + world.user_bias[urow[users]][:, None]

    users = pd.read_parquet(layout.attributes_path(settings, "users")).set_index("user_id")
    users = users.reindex(data.users.ids)
    items = pd.read_parquet(layout.attributes_path(settings, "items")).set_index("item_id")
    cat = pd.Categorical(items["category"].reindex(data.items.ids).fillna("?"))
    icat = cat.codes.astype(np.int64)
    attrs = {
        "age": (users["age"].fillna(0) // 10).astype(np.int64).to_numpy(),
        "gender": pd.Categorical(users["gender"].fillna("?")).codes.astype(np.int64),
        "country": pd.Categorical(users["country"].fillna("?")).codes.astype(np.int64),
    }
    coo = data.implicit.tocoo()
    lifts = {}
    for name, code in attrs.items():
        k = np.zeros((code.max() + 1, len(cat.categories)))
        np.add.at(k, (code[coo.row], icat[coo.col]), coo.data)
        expected = k.sum(1, keepdims=True) * k.sum(0, keepdims=True) / k.sum()
        lifts[name] = np.log((k + 1.0) / (expected + 1.0))
    log_pop = np.log1p(data.recent.astype(np.float64))

    def group_lift(users: np.ndarray) -> np.ndarray:
        out = sum(lifts[n][attrs[n][users]][:, icat] for n in attrs)
        return out + GROUP_LIFT_BETA * log_pop[None, :]

    n = len(irow)
    return {
        "oracle (true relevance)": ScoreFn(logit, n),
        "oracle x logging exposure": ScoreFn(
            lambda u: -np.logaddexp(0.0, -logit(u)) + np.log(exposure)[None, :], n
        ),
        "group_lift (attributes x category + log pop)": ScoreFn(group_lift, n),
    }


#: weight of log1p(recent positives) in ``group_lift``: best logged NDCG@10 of {0.3, 0.5, 1, 2} on
#: the validation day (train days 1-6, validate day 7; the test day 8 was not looked at)
GROUP_LIFT_BETA = 1.0


def truth_ndcg(
    settings: Settings, models: dict, data: TrainingData, day: dt.date, n_users: int = 300
) -> pd.DataFrame:
    """NDCG@10 against the simulator's true click probability (slot 0) of every unseen item, for a
    seeded sample of the users active on ``day`` that the models know: relevance free of what the
    logging policy happened to show. Also ``corr_taste`` / ``corr_appeal`` (module docstring).
    One row per model."""
    world = simulate.load_world_for_replay(settings, day)
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
    urow = simulate.user_rows(world, users)
    irow = simulate.item_rows(world, items)
    taste = (
        simulate.REL_AFFINITY
        * (world.user_vec[urow].astype(np.float64) @ world.item_vec[irow].T)
        / math.sqrt(simulate.DIM * simulate.TASTE_VAR)
    )
    appeal = simulate.REL_APPEAL * world.item_appeal[irow] / world.appeal_scale
    out = {}
    for name, model in models.items():
        recs, _ = model.recommend(rows, 10, exclude=data.implicit)
        scores = model.score_all(rows).astype(np.float64)
        c_taste, c_appeal = [], []
        for j in range(len(rows)):
            keep = ~seen[j]
            if np.ptp(scores[j, keep]) > 0:
                c_taste.append(np.corrcoef(scores[j, keep], taste[j, keep])[0, 1])
                c_appeal.append(np.corrcoef(scores[j, keep], appeal[keep])[0, 1])
        out[name] = {
            "truth_ndcg@10": ndcg_at_k(recs, relevance, 10),
            "corr_taste": float(np.mean(c_taste)) if c_taste else float("nan"),
            "corr_appeal": float(np.mean(c_appeal)) if c_appeal else float("nan"),
        }
    return pd.DataFrame.from_dict(out, orient="index")


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
        data = load_training_data(s, train_end)
        models, fit_s = {}, {}
        for name in ("popular", "itemknn", "userknn", "mf", "two_tower"):
            t0 = time.perf_counter()
            models[name] = train.build_model(name, data, s, seed=args.seed)
            fit_s[name] = time.perf_counter() - t0
        test = day_relevance(s, test_day, data.users, data.items)
        table = compare_models(models, data.implicit, test, k=10, recall_ks=(100,))
        table["fit_s"] = [fit_s[n] for n in table.index]
        table = table.join(truth_ndcg(s, models, data, test_day))
        refs = reference_scorers(s, data)
        ref_table = compare_models(refs, data.implicit, test, k=10, recall_ks=(100,))
        ref_table = ref_table.join(truth_ndcg(s, refs, data, test_day))
        cols = [
            "ndcg@10",
            "truth_ndcg@10",
            "corr_taste",
            "corr_appeal",
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
        print("\nreference scorers (not models; the oracles read the simulator's truth):")
        ref_cols = ["ndcg@10", "truth_ndcg@10", "corr_taste", "corr_appeal", "recall@100"]
        print(ref_table[ref_cols].to_string(float_format="%.4f"))
        best_pop = table.loc["popular", "ndcg@10"]
        for name in ("mf", "two_tower"):
            truth_ratio = table.loc[name, "truth_ndcg@10"] / table.loc["popular", "truth_ndcg@10"]
            print(
                f"{name}: NDCG@10 / popular = {table.loc[name, 'ndcg@10'] / best_pop:.2f}x on logged clicks, {truth_ratio:.2f}x on the truth"
            )
        pop_truth = table.loc["popular", "truth_ndcg@10"]
        for name in ref_table.index:
            print(
                f"{name}: {ref_table.loc[name, 'ndcg@10'] / best_pop:.2f}x popular on logged clicks, "
                f"{ref_table.loc[name, 'truth_ndcg@10'] / pop_truth:.2f}x on the truth"
            )


if __name__ == "__main__":
    main()
