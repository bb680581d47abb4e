"""Sequential retrievers (GRU4Rec, SASRec, BERT4Rec) beside MF, BPR, the two-tower and
most-popular on the simulator, with its sequential structure off and on (issue 16).

  OMP_WAIT_POLICY=PASSIVE nice .venv/bin/python benchmarks/bench_sequential.py
      [--strengths 0 0.5] [--days 14] [--scale small] [--seed 42] [--epochs N] [--models M ...]
      [--categories off|input|both] [--user-attributes off|on] [--prior-weights W ...]
      [--exposure-weights E ...]

For each strength ``S`` (``simulate(..., sequential=S)``; 0 is today's world byte for byte):
``--days`` days are simulated into a temporary workspace and validated, and day N-2's feature
tables computed (as the daily job does before training); every model is built by
``pipelines.retrieval.train.build_model`` (the daily job's settings; ``--epochs`` overrides the
sequential models' epochs, ``--categories`` / ``--user-attributes`` their side attributes) on
days 0..N-2 and judged on

- ``truth_ndcg@10``: NDCG@10 of its top 10 unseen items against the simulator's true click
  probability (slot 0) of every unseen item, for a seeded sample of 300 users active on day
  N-1, **with the users' sequential state as it stood after day N-2** (the world from
  ``simulate.load_world_for_replay``): what the sequential models are meant to exploit;
- ``ndcg@10`` / ``recall@10``: day N-1's logged positives (``pipelines.core.metrics``; training
  items excluded), biased by the non-personalised logging policy's exposure.

``--prior-weights``: each sequential model, fitted once (with ``SEQUENTIAL_PARAMS``'
``popularity_weight``), is judged again at each log-popularity prior weight (rows
``gru4rec w=0``, ...; the prior is added at scoring, training does not depend on it), over
all-time counts and over the last ``POPULAR_WINDOW_DAYS`` days' (``data.recent``: rows
``gru4rec w=1 7d``).

``--exposure-weights``: each sequential model, fitted once (with ``SEQUENTIAL_PARAMS``'
``exposure_weight``; the correction is added at scoring, training does not depend on it), is
judged again at each exposure-correction weight (rows ``gru4rec e=0``, ...: ``e=0`` scores as the
models did before the correction).

Sequential models should win only where the structure exists (``S > 0``). Printed per strength:
the best sequential model's truth NDCG@10 over the two-tower's (issue 16's floor: >= 1.1x).
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

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipelines.core.metrics import compare_models, ndcg_at_k
from pipelines.core.settings import Settings
from pipelines.data import simulate
from pipelines.retrieval import train
from pipelines.retrieval.data import POPULAR_WINDOW_DAYS, TrainingData, load_training_data

MODELS = ("popular", "mf", "bpr", "two_tower", "gru4rec", "sasrec", "bert4rec")
SEQUENTIAL = ("gru4rec", "sasrec", "bert4rec")
K = 10


def truth_ndcg(
    settings: Settings, models: dict, data: TrainingData, day: dt.date, n_users: int = 300
) -> dict[str, float]:
    """``truth_ndcg@10`` per model (module docstring), the state of each user as of ``day``."""
    world = simulate.load_world_for_replay(settings, day)
    active = [u for u in simulate.users_for_day(world, day) if u in data.users]
    rng = np.random.default_rng(0)
    users = np.sort(rng.choice(np.array(active, dtype=object), min(n_users, len(active)), False))
    rows = data.users.encode(users)
    items = np.array(data.items.ids, dtype=object)
    probs = simulate.true_click_prob(
        world, np.repeat(users, len(items)), np.tile(items, len(users)), 0
    )
    truth = probs.reshape(len(users), len(items))
    truth[data.implicit[rows].toarray() > 0] = 0.0
    relevance = sp.csr_matrix(truth)
    out = {}
    for name, model in models.items():
        recs, _ = model.recommend(rows, K, exclude=data.implicit)
        out[name] = ndcg_at_k(recs, relevance, K)
    # the oracle's lists: the best any model could do on this sample
    best = np.argsort(-truth, axis=1, kind="stable")[:, :K]
    out["(oracle)"] = ndcg_at_k(best, relevance, K)
    return out


def one_world(
    strength: float,
    days: int,
    scale: str,
    seed: int,
    names: tuple[str, ...] = MODELS,
    prior_weights: list[float] | None = None,
    exposure_weights: list[float] | None = None,
) -> pd.DataFrame:
    """Simulate, validate, train and judge every model on one world (module docstring); print
    the table and the floor's ratio, and return the table."""
    table, note = world_table(strength, days, scale, seed, names, prior_weights, exposure_weights)
    print(note)
    print(table.to_string(float_format="%.4f"))
    print_floor_ratio(table)
    return table


def world_table(
    strength: float,
    days: int,
    scale: str,
    seed: int,
    names: tuple[str, ...] = MODELS,
    prior_weights: list[float] | None = None,
    exposure_weights: list[float] | None = None,
) -> tuple[pd.DataFrame, str]:
    """:func:`one_world`'s table (one row per model and the oracle: strength, truth NDCG@10,
    logged NDCG@10 / recall@10, fit seconds) and its heading, printing nothing."""
    from pipelines.data.validate import validate_partition
    from pipelines.features.tables import compute_features
    from pipelines.retrieval.evaluate import day_relevance

    with tempfile.TemporaryDirectory() as home:
        s = Settings.from_env({"RECLOOP_HOME": home, "RECLOOP_SEED": str(seed)})
        s.ensure_dirs()
        start = dt.date(2026, 1, 1)
        simulate.simulate(s, days, scale, seed, start, sequential=strength)
        all_days = [start + dt.timedelta(days=d) for d in range(days)]
        for d in all_days:
            validate_partition(s, d, data_docs=False)
        train_end, test_day = all_days[-2], all_days[-1]
        compute_features(s, train_end)  # the daily job's tables: two-tower / MF / sequential
        data = load_training_data(s, train_end)
        models, seconds = {}, {}
        for name in names:
            t0 = time.perf_counter()
            models[name] = train.build_model(name, data, s, seed=seed)
            seconds[name] = time.perf_counter() - t0
            logging.getLogger(__name__).warning("S=%s fitted %s in %.1fs", strength, name,
                                                seconds[name])  # fmt: skip
        if prior_weights and any(n in models for n in SEQUENTIAL):
            sys.path.insert(0, str(Path(__file__).resolve().parent))
            from bench_ncf_bpr import prior_grid

            counts = {
                0: np.asarray((data.implicit > 0).sum(axis=0), np.float32).ravel(),
                POPULAR_WINDOW_DAYS: np.asarray(data.recent, np.float32),
            }
            fitted = {n: models[n] for n in SEQUENTIAL if n in models}
            models.update(prior_grid(fitted, counts, prior_weights))
        if exposure_weights:
            models.update(exposure_grid(models, exposure_weights))
        test = day_relevance(s, test_day, data.users, data.items)
        table = compare_models(models, data.implicit, test, k=K, recall_ks=(), with_auc=False)
        table = table[[f"ndcg@{K}", f"recall@{K}"]]
        truth = truth_ndcg(s, models, data, test_day)
        table.loc["(oracle)"] = np.nan
        table.insert(0, "truth_ndcg@10", pd.Series(truth))
        table["fit_s"] = pd.Series(seconds)
        table.insert(0, "strength", strength)
        n_seq = np.diff(data.sequences[0])
        note = (
            f"\nstrength {strength}: scale {scale}, seed {seed}, train {start}..{train_end} "
            f"({len(data.users)} users x {len(data.items)} items, {data.implicit.nnz} cells, "
            f"median sequence {int(np.median(n_seq))} items), test {test_day}"
        )
        return table, note


def exposure_grid(models: dict, weights: list[float]) -> dict:
    """Each sequential model of ``models`` again at each exposure-correction weight: shallow
    copies sharing the fitted network and its impressions, by name ``"<model> e=<weight>"``."""
    out = {}
    for name in (n for n in SEQUENTIAL if n in models):
        for w in weights:
            m = copy.copy(models[name])
            m.exposure_weight = float(w)
            out[f"{name} e={w:g}"] = m
    return out


def floor_ratio(table: pd.DataFrame) -> tuple[str, float] | None:
    """Issue 16's floor: ``(best sequential model, its truth NDCG@10 / the two-tower's)``, or
    ``None`` without a sequential model or the two-tower in ``table``."""
    truth = table["truth_ndcg@10"]
    seq = [n for n in SEQUENTIAL if n in truth.index]
    if not seq or "two_tower" not in truth.index:
        return None
    best = truth[seq].idxmax()
    return best, float(truth[best] / truth["two_tower"])


def print_floor_ratio(table: pd.DataFrame) -> None:
    """Print :func:`floor_ratio`."""
    got = floor_ratio(table)
    if got is not None:
        best, ratio = got
        print(f"best sequential ({best}) / two_tower on truth NDCG@10: {ratio:.3f}x (floor 1.1x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.0, 0.5])
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--scale", default="small")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, help="epochs of the sequential models")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument(
        "--prior-weights", type=float, nargs="*", help="sequential: judged again at these weights"
    )
    parser.add_argument(
        "--exposure-weights", type=float, nargs="*",
        help="sequential: judged again at these exposure-correction weights",
    )  # fmt: skip
    parser.add_argument(
        "--categories", choices=("off", "input", "both"),
        help="item categories in the sequential models: none, input side only, input and tied "
        "output (default: the daily job's, train.SEQUENTIAL_ITEM_GROUPS)",
    )  # fmt: skip
    parser.add_argument(
        "--user-attributes", choices=("off", "on"),
        help="user demographics added to the sequential models' state (default: the daily "
        "job's, train.SEQUENTIAL_USER_GROUPS)",
    )  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.epochs is not None:
        train.SEQUENTIAL_PARAMS["epochs"] = args.epochs
    if args.categories == "off":
        train.SEQUENTIAL_ITEM_GROUPS = ()
    elif args.categories is not None:
        train.SEQUENTIAL_ITEM_GROUPS = train.MF_ITEM_GROUPS
        train.SEQUENTIAL_PARAMS["group_output"] = args.categories == "both"
    if args.user_attributes is not None:
        train.SEQUENTIAL_USER_GROUPS = train.MF_USER_GROUPS if args.user_attributes == "on" else ()
    names = tuple(args.models)
    tables = [
        one_world(
            s, args.days, args.scale, args.seed, names, args.prior_weights, args.exposure_weights
        )
        for s in args.strengths
    ]
    both = pd.concat(tables)
    both = both.rename_axis("model").reset_index()
    ratio = both.pivot(index="model", columns="strength", values="truth_ndcg@10")
    print("\ntruth_ndcg@10 by strength (rows: models)")
    print(ratio.to_string(float_format="%.4f"))


if __name__ == "__main__":
    main()
