"""Leave-last-out on MovieLens 100K: every retriever through ``train.build_model``, HR@10 / NDCG@10.

  OMP_WAIT_POLICY=PASSIVE nice .venv/bin/python benchmarks/bench_leave_last_out.py --data DIR
      [--split test|valid] [--models popular,mf,...] [--seq-param epochs=50 ...] [--seed 0]

The protocol of the sequential-recommendation papers (SASRec, Kang & McAuley 2018; BERT4Rec, Sun
et al. 2019), here over every model of ``pipelines.retrieval.train.MODELS`` that needs no
feature store (the issue-16 floor: ``sasrec`` >= the best non-sequential model):

- **Data**: ``u.data`` of ``DIR`` (``../shared/tools/get-movielens-100k DIR`` writes it): 943
  users, 1,682 items, 100,000 ratings, every rating one positive (as the platform reads ratings).
- **Order**: per user, ratings by timestamp; ties (76 % of ratings share their second with
  another rating of the same user) broken by the line order of ``u.data``, which is random with
  respect to item id and rating (within tied runs the next item id is larger 50.2 % of the time).
- **Split**: per user the last item is the test item, the one before it the validation item, the
  rest training. ``--split test`` (default) fits every model on all but the last item (training +
  validation) and scores the last; ``--split valid`` fits on all but the last two and scores the
  validation item: use it to choose settings, then run ``test`` once. No early stopping.
- **Models**: ``popular`` (all-time positives per item: a leave-last-out split has no common
  "now" for the platform's 7-day trending window), ``itemknn``, ``mf`` (ALS, ``MF_PARAMS``, no
  side attributes: no feature store here), ``bpr``, ``ncf``, ``gru4rec``, ``sasrec``,
  ``bert4rec``, each ``train.build_model(name, data, settings, seed)`` on a ``TrainingData`` built
  with ``pipelines.retrieval.data.matrices`` / ``user_sequences`` (the sequential models train on
  and score from the time-ordered sequences), in an empty temporary ``RECLOOP_HOME``. Beside
  them ``implicit``'s BPR and ALS (one BLAS thread), when installed. ``--seq-param KEY=VALUE``
  overrides ``train.SEQUENTIAL_PARAMS`` for this run only.
- **Metrics**: the rank of the held-out item among ALL items not in the user's training history
  (full ranking; ties counted against the model), HR@10 and NDCG@10 averaged over all 943 users;
  secondary, clearly labelled: the same among the held-out item + 100 items drawn uniformly from
  those the user never rated (the SASRec paper's sampled protocol; seeded draws).

Prints one table (fit seconds included), the ratio ``sasrec / best non-sequential`` on both
metrics and the paired standard error of the NDCG@10 difference.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipelines.core.settings import Settings
from pipelines.core.vocab import Vocab
from pipelines.retrieval import train
from pipelines.retrieval.data import TrainingData, matrices, user_sequences

log = logging.getLogger("bench_leave_last_out")

PLATFORM = ("popular", "itemknn", "mf", "bpr", "ncf", "gru4rec", "sasrec", "bert4rec")
SEQUENTIAL = ("gru4rec", "sasrec", "bert4rec")
K = 10
N_SAMPLED = 100


def load_events(folder: Path) -> pd.DataFrame:
    """``u.data`` as platform events in time order (ties: file line order), with ``back``: the
    item's position from the end of its user's sequence (0 = last)."""
    raw = pd.read_csv(folder / "u.data", sep="\t", names=["user", "item", "rating", "ts"])
    raw["line"] = np.arange(len(raw))
    raw = raw.sort_values(["ts", "line"], kind="stable").reset_index(drop=True)
    events = pd.DataFrame(
        {
            "user_id": raw["user"].astype(str),
            "item_id": raw["item"].astype(str),
            "event": "rating",
            "value": raw["rating"].astype(float),
            "ts": pd.to_datetime(raw["ts"], unit="s", utc=True),
        }
    )
    events["back"] = events.groupby("user_id").cumcount(ascending=False)
    return events


def split_data(events: pd.DataFrame, held_back: int) -> tuple[TrainingData, np.ndarray]:
    """``(training data, target item row per user (U,))``: the training part is every event with
    ``back >= held_back + 1``, the target the event at ``back == held_back``. Vocabularies hold
    every user and item of the file (sorted ids, as ``load_training_data``)."""
    users = Vocab(sorted(events["user_id"].unique()))
    items = Vocab(sorted(events["item_id"].unique()))
    fit = events[events["back"] > held_back]
    implicit, explicit = matrices(fit, users, items)
    target_rows = events[events["back"] == held_back]
    target = np.full(len(users), -1, dtype=np.int64)
    target[users.encode(target_rows["user_id"])] = items.encode(target_rows["item_id"])
    recent = np.asarray((implicit > 0).sum(0), dtype=np.float32).ravel()  # all-time popularity
    data = TrainingData(
        fit["ts"].max().date(), users, items, implicit.tocsr(), explicit.tocsr(), recent,
        len(fit), user_sequences(fit, users, items),
    )  # fmt: skip
    return data, target


def target_ranks(scores: np.ndarray, exclude: sp.csr_matrix, target: np.ndarray) -> np.ndarray:
    """1-based rank ``(U,)`` of each user's ``target`` item in ``scores`` ``(U, I)`` among the
    items not in ``exclude``'s row (ties counted against the target)."""
    s = np.array(scores, dtype=np.float64)
    rows, cols = exclude.nonzero()
    s[rows, cols] = -np.inf
    t = s[np.arange(len(target)), target]
    return (s >= t[:, None]).sum(1)


def sampled_ranks(scores: np.ndarray, negatives: np.ndarray, target: np.ndarray) -> np.ndarray:
    """1-based rank ``(U,)`` of the target among itself + ``negatives`` ``(U, N)``."""
    t = scores[np.arange(len(target)), target]
    return 1 + (np.take_along_axis(scores, negatives, 1) >= t[:, None]).sum(1)


def draw_negatives(rated: sp.csr_matrix, n: int, seed: int) -> np.ndarray:
    """``(U, n)`` items per user drawn uniformly without replacement from those never rated."""
    rng = np.random.default_rng(seed)
    out = np.empty((rated.shape[0], n), dtype=np.int64)
    for u in range(rated.shape[0]):
        pool = np.setdiff1d(
            np.arange(rated.shape[1]), rated.indices[rated.indptr[u] : rated.indptr[u + 1]]
        )
        out[u] = rng.choice(pool, n, replace=False)
    return out


def at_k(ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per user ``(hit@K, NDCG@K)`` with one relevant item."""
    hit = ranks <= K
    return hit.astype(np.float64), np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0)


def implicit_scorers(data: TrainingData) -> dict[str, Any]:
    """Zero-argument builders of `implicit`'s BPR and ALS, each returning its ``(U, I)`` scores
    (user factors · item factors); empty without the library."""
    try:
        from implicit.bpr import BayesianPersonalizedRanking
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits
    except ImportError:
        return {}
    binary = (data.implicit > 0).astype(np.float32).tocsr()

    def build(cls: Any, **params: Any) -> np.ndarray:
        with threadpool_limits(1):  # implicit checks the BLAS threads when it is constructed
            model = cls(**params, random_state=0, num_threads=1)
            model.fit(binary, show_progress=False)
        return np.asarray(model.user_factors) @ np.asarray(model.item_factors).T

    bpr = {"factors": 64, "learning_rate": 0.01, "regularization": 0.01, "iterations": 100}
    als = {"factors": 64, "regularization": 0.1, "iterations": 15}
    return {
        "implicit BPR": lambda: build(BayesianPersonalizedRanking, **bpr),
        "implicit ALS": lambda: build(AlternatingLeastSquares, **als),
    }


def run_models(
    names: list[str], data: TrainingData, seed: int
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Fit each model and score every (user, item): ``(scores (U, I) by name, fit seconds)``."""
    with tempfile.TemporaryDirectory() as home:
        settings = Settings.from_env({"RECLOOP_HOME": home, "RECLOOP_SEED": str(seed)})
        builders: dict[str, Any] = {
            n: (lambda n=n: train.build_model(n, data, settings, seed=seed))
            for n in names
            if n in PLATFORM
        }
        peers = implicit_scorers(data)
        builders.update({n: b for n, b in peers.items() if n in names or "implicit" in names})
        scores, seconds = {}, {}
        all_users = np.arange(len(data.users))
        for name, build in builders.items():
            log.warning("fitting %s ...", name)
            t0 = time.perf_counter()
            model = build()
            seconds[name] = time.perf_counter() - t0
            scores[name] = model if isinstance(model, np.ndarray) else model.score_all(all_users)
            log.warning("fitted %s in %.1fs", name, seconds[name])
    return scores, seconds


def results(
    scores: dict[str, np.ndarray], seconds: dict[str, float], data: TrainingData,
    target: np.ndarray, negatives: np.ndarray,
) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:  # fmt: skip
    """The results table (one row per model) and the per-user NDCG@10 ``(U,)`` by model."""
    rows, per_user = {}, {}
    for name, s in scores.items():
        hit, ndcg = at_k(target_ranks(s, data.implicit, target))
        s_hit, s_ndcg = at_k(sampled_ranks(s, negatives, target))
        per_user[name] = ndcg
        rows[name] = {
            f"HR@{K}": hit.mean(), f"NDCG@{K}": ndcg.mean(),
            f"HR@{K} (100 neg)": s_hit.mean(), f"NDCG@{K} (100 neg)": s_ndcg.mean(),
            "fit_s": seconds[name],
        }  # fmt: skip
    return pd.DataFrame.from_dict(rows, orient="index"), per_user


def floor_lines(table: pd.DataFrame, per_user: dict[str, np.ndarray]) -> list[str]:
    """``sasrec / best non-sequential`` on both metrics with the paired standard error of the
    NDCG@10 difference, over the platform's non-sequential models and over all of them."""
    lines = []
    flat = [n for n in per_user if n not in SEQUENTIAL]
    for label, pool in (("platform", [n for n in flat if n in PLATFORM]), ("all", flat)):
        if "sasrec" not in table.index or not pool:
            continue
        best = table.loc[pool, f"NDCG@{K}"].idxmax()
        diff = per_user["sasrec"] - per_user[best]
        lines.append(
            f"sasrec / best non-sequential ({label}: {best}): "
            f"NDCG@{K} {table.loc['sasrec', f'NDCG@{K}'] / table.loc[best, f'NDCG@{K}']:.3f}, "
            f"HR@{K} {table.loc['sasrec', f'HR@{K}'] / table.loc[best, f'HR@{K}']:.3f}; "
            f"NDCG@{K} difference {diff.mean():+.4f} +- {diff.std(ddof=1) / np.sqrt(len(diff)):.4f}"
            " (paired s.e.)"
        )
    return lines


def report(
    scores: dict[str, np.ndarray], seconds: dict[str, float], data: TrainingData,
    target: np.ndarray, negatives: np.ndarray,
) -> pd.DataFrame:  # fmt: skip
    """Print :func:`results`' table and :func:`floor_lines`; return the table."""
    table, per_user = results(scores, seconds, data, target, negatives)
    print(table.to_string(float_format="%.4f"))
    for line in floor_lines(table, per_user):
        print(line)
    return table


def prepare(
    folder: Path, split: str, seed: int
) -> tuple[TrainingData, np.ndarray, np.ndarray, str]:
    """``(training data, target item per user (U,), sampled negatives (U, 100), note)`` of
    ``split`` (``test`` or ``valid``: module docstring)."""
    events = load_events(folder)
    data, target = split_data(events, held_back=0 if split == "test" else 1)
    rated = matrices(events, data.users, data.items)[0].tocsr()
    negatives = draw_negatives(rated, N_SAMPLED, seed)
    cold = int((np.asarray(data.implicit.sum(0)).ravel()[target] == 0).sum())
    note = (
        f"MovieLens 100K leave-last-out, split {split}: {len(data.users)} users x "
        f"{len(data.items)} items, {data.implicit.nnz} training ratings, {len(target)} held-out "
        f"items ({cold} never seen in training)"
    )
    return data, target, negatives, note


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["epochs=50", "lr=1e-3"]`` → ``{"epochs": 50, "lr": 0.001}`` (numbers parsed)."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        if key not in train.SEQUENTIAL_PARAMS:
            raise SystemExit(f"--seq-param {key}: not one of {sorted(train.SEQUENTIAL_PARAMS)}")
        out[key] = float(value) if any(c in value for c in ".e") else int(value)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder with MovieLens 100K's u.data")
    p.add_argument("--split", choices=("test", "valid"), default="test",
                   help="test: fit on all but the last item, score the last (default); "
                   "valid: fit on all but the last two, score the one before the last")  # fmt: skip
    p.add_argument("--models", default=",".join((*PLATFORM, "implicit")),
                   help="comma-separated; 'implicit' = implicit's BPR and ALS (default: all)")  # fmt: skip
    p.add_argument("--seq-param", action="append", default=[], metavar="KEY=VALUE",
                   help="override train.SEQUENTIAL_PARAMS for this run (repeatable)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="model seed and negative draws")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    t0 = time.perf_counter()
    data, target, negatives, note = prepare(a.data, a.split, a.seed)
    overrides = parse_overrides(a.seq_param)
    print(f"{note}; sequential params { {**train.SEQUENTIAL_PARAMS, **overrides} }")
    with mock.patch.dict(train.SEQUENTIAL_PARAMS, overrides):
        scores, seconds = run_models(a.models.split(","), data, a.seed)
    report(scores, seconds, data, target, negatives)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
