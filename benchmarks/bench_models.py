"""Every retriever and ranker side by side in one run, with issue 16's floors (item 7).

  PYTHONPATH=. OMP_WAIT_POLICY=PASSIVE nice -n 10 .venv/bin/python benchmarks/bench_models.py \\
      --movielens DIR [--quick] [--skip-sim] [--seed 42]

Runs four parts, each by the benchmark that owns it (imported, not re-implemented), then prints
one report: a table per part and a floors summary.

1. **MovieLens 100K, temporal split** (``bench_ncf_bpr.movielens_split``: ratings through
   1998-03-15 train, later ratings of those users on those items test, binary relevance; full
   ranking over every unseen item): popular (all time, last 7 days), item KNN (the daily job's
   and the reference formula), user KNN, MF (ALS), NCF, BPR, DSSM (titles, genre, demographics:
   ``bench_dssm.movielens_side``), the two-tower (the same genre and demographics as features),
   GRU4Rec, SASRec, BERT4Rec (also with the 7-day log-popularity prior at w = 6, the weight
   chosen on MovieLens's validation split), and `implicit`'s ALS and BPR as peers. NDCG@10,
   recall@20, MRR@10, coverage@10, fit seconds, NDCG@10 / most-popular (all time).
2. **MovieLens 100K, leave-last-out** (``bench_leave_last_out``: each user's last rating held
   out, full ranking): the sequential models beside every non-sequential one and `implicit`'s.
3. **Simulator truth** (``bench_sequential.world_table``: small scale, 28 days, sequential
   structure S = 0 and 0.5): truth NDCG@10 against the true click probabilities of 300 users
   active on the test day; best sequential / two-tower. ``--skip-sim`` skips parts 3 and 4.
4. **Rankers** (``bench_ranker_models``: 4 demo days' labelled impressions, train 0-2, test 3):
   every ``RECLOOP_RANKER`` kind and Wide & Deep / DeepFM variants, 3 epochs, 3 model seeds:
   AUC, AUC within position, logloss, ECE, NDCG@10 lift over the retrieval proxy.

Every model has the daily job's settings (``pipelines.retrieval.train``, ``pipelines.ranking.train``).
``--quick`` is a smoke configuration (1-2 epochs everywhere, tiny simulator, 1 ranker seed:
~2 min on 2 shared cores); the full run took 40 min there (parts 1-4: 20 / 12 / 7 / 1 min;
benchmarks/README.md, "bench_models"). ``--seed`` seeds the models, the simulator and the
leave-last-out negatives (``bench_leave_last_out.py``'s own default is 0, hence its figures
differ a little from this run's).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the other benchmarks

import bench_leave_last_out as llo  # noqa: E402
import bench_ncf_bpr as ncf_bpr  # noqa: E402
from bench_dssm import movielens_side  # noqa: E402
from bench_retrieval import ScoreFn  # noqa: E402

from pipelines.core.metrics import compare_models  # noqa: E402
from pipelines.retrieval import train  # noqa: E402

CUTOFF = dt.date(1998, 3, 15)
POP = "popular (all time)"
SEQUENTIAL = ("gru4rec", "sasrec", "bert4rec")
#: the sequential models' log-popularity prior for MovieLens-like data: w = 6 over the last 7
#: days' ratings, chosen on MovieLens's validation split (benchmarks/README.md, sixth session)
PRIOR_WEIGHT, PRIOR_DAYS = 6.0, 7
SIM = {"days": 28, "scale": "small", "strengths": (0.0, 0.5)}
SIM_QUICK = {"days": 6, "scale": "tiny", "strengths": (0.0, 0.5)}
SIM_MODELS = (
    "popular", "itemknn", "userknn", "mf", "bpr", "ncf", "two_tower", "dssm",
    "gru4rec", "sasrec", "bert4rec",
)  # fmt: skip
RANKERS = {"days": 4, "epochs": 3, "model_seeds": 3}
RANKERS_QUICK = {"days": 3, "epochs": 1, "model_seeds": 1}
PEERS = (
    "Published peers. NCF vs MF: Rendle et al. 2020 (RecSys) find a well-tuned dot product (MF) "
    "beats NCF's MLP; their protocol (leave-one-out, sampled candidates, ML-1M / Pinterest) is not "
    "the temporal split here, so only the direction is comparable (part 1: ncf / mf). BPR: "
    "`implicit` 0.7's BayesianPersonalizedRanking, fitted on the same matrices and scored by the "
    "same functions (parts 1-2): the protocol matches exactly. SASRec / BERT4Rec's papers report "
    "100-sampled-negative metrics on ML-1M, not comparable with part 2's full ranking on ML-100K "
    "(benchmarks/README.md, leave-last-out)."
)


@contextlib.contextmanager
def quick_settings(quick: bool) -> Iterator[None]:
    """With ``quick``, 1-2 epochs for every trained retriever (the dicts restored after)."""
    if not quick:
        yield
        return
    with contextlib.ExitStack() as stack:
        for params, epochs in (
            (train.SEQUENTIAL_PARAMS, 2), (train.NCF_PARAMS, 1), (train.BPR_PARAMS, 1),
            (train.DSSM_PARAMS, 1), (train.TWO_TOWER_PARAMS, 2),
        ):  # fmt: skip
            stack.enter_context(mock.patch.dict(params, {"epochs": epochs}))
        yield


def movielens_features(side: dict[str, Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two-tower's categorical features from ``bench_dssm.movielens_side``'s codes:
    users ``(U, 3)`` (age band, gender, occupation), items ``(I, 1)`` (first genre)."""
    users = pd.DataFrame(side["user_groups"].astype(str), columns=["age", "gender", "occupation"])
    items = pd.DataFrame({"category": side["item_groups"].astype(str)})
    return users, items


def temporal(folder: Path, seed: int) -> tuple[pd.DataFrame, str]:
    """Part 1 (module docstring): one row per model, and the split's description."""
    from models.baselines import UserKNN
    from models.dssm import DSSM
    from models.two_tower import TwoTower

    train_m, test_m, recent, note = ncf_bpr.movielens_split(folder, CUTOFF)
    side = movielens_side(folder, CUTOFF)
    user_f, item_f = movielens_features(side)
    builders = ncf_bpr.movielens_builders(folder, CUTOFF, seed, train_m, recent, sequential=True)
    builders["userknn"] = lambda: UserKNN(k=50).fit(train_m)
    builders["dssm"] = lambda: DSSM(**train.DSSM_PARAMS, seed=seed).fit(
        train_m, **side, progress=False
    )
    builders["two_tower"] = lambda: TwoTower(**train.TWO_TOWER_PARAMS, seed=seed).fit(
        train_m, user_features=user_f, item_features=item_f, progress=False
    )
    als = llo.implicit_scorers(SimpleNamespace(implicit=train_m)).get("implicit ALS")
    if als is not None:
        builders["implicit ALS f=64"] = lambda: ScoreFn(als().__getitem__, train_m.shape[1])
    models, seconds = ncf_bpr.fitted(builders)
    models.update(ncf_bpr.prior_grid(models, {PRIOR_DAYS: recent}, [PRIOR_WEIGHT]))
    ref = ncf_bpr.implicit_bpr(train_m)
    if ref is not None:
        models[ncf_bpr.IMPLICIT_BPR], seconds[ncf_bpr.IMPLICIT_BPR] = ref
    table = compare_models(models, train_m, test_m, k=10, recall_ks=(20,), with_auc=False)
    table = table[["ndcg@10", "recall@20", "mrr@10", "coverage@10", "n_users"]].copy()
    table["n_users"] = table["n_users"].astype(int)
    table["fit_s"] = pd.Series(seconds)
    table.insert(4, "ndcg /pop", table["ndcg@10"] / table.loc[POP, "ndcg@10"])
    return table, note


def leave_last_out(folder: Path, seed: int) -> tuple[pd.DataFrame, list[str], str]:
    """Part 2 (module docstring): the table, the floor lines and the split's description."""
    data, target, negatives, note = llo.prepare(folder, "test", seed)
    scores, seconds = llo.run_models([*llo.PLATFORM, "implicit"], data, seed)
    table, per_user = llo.results(scores, seconds, data, target, negatives)
    table.index.name = "model"
    return table, llo.floor_lines(table, per_user), note


def simulator(seed: int, quick: bool) -> tuple[pd.DataFrame, list[str]]:
    """Part 3 (module docstring): one row per model and strength, and each world's heading."""
    from bench_sequential import world_table

    cfg = SIM_QUICK if quick else SIM
    tables, notes = [], []
    for s in cfg["strengths"]:
        table, note = world_table(s, cfg["days"], cfg["scale"], seed, SIM_MODELS)
        tables.append(table)
        notes.append(note.strip())
    return pd.concat(tables), notes


def rankers(seed: int, quick: bool) -> tuple[str, str]:
    """Part 4 (module docstring): the Markdown table and the data's description."""
    from bench_ranker import demo_frames
    from bench_ranker_models import markdown, ranker_rows

    cfg = RANKERS_QUICK if quick else RANKERS
    with contextlib.redirect_stdout(sys.stderr):  # its progress lines: not the report's
        train_f, _, test_f = demo_frames(cfg["days"], seed)
    rows = ranker_rows(train_f, test_f, cfg["epochs"], cfg["model_seeds"], echo=False)
    note = (
        f"{cfg['days']} demo days (simulator seed {seed}): train {len(train_f):,} impressions "
        f"({int(train_f['label'].sum()):,} clicks), test {len(test_f):,} "
        f"({int(test_f['label'].sum()):,} clicks); {cfg['epochs']} epochs, "
        f"model seeds 0..{cfg['model_seeds'] - 1}"
    )
    return markdown(rows), note


def floor_row(name: str, value: float | None, floor: str, met: bool | None, note: str = "") -> dict:
    """One row of the floors summary."""
    shown = "—" if value is None else f"{value:.3f}"
    return {"floor": name, "value": shown, "needed": floor,
            "met": "—" if met is None else ("yes" if met else "no"), "note": note}  # fmt: skip


def floors(
    temporal_t: pd.DataFrame | None, llo_t: pd.DataFrame | None, sim_t: pd.DataFrame | None
) -> pd.DataFrame:
    """Issue 16's floors from the parts' tables (``None``: the part was not run)."""
    rows = []
    if temporal_t is not None:
        peers = [n for n in temporal_t.index if n.startswith("implicit") or "reference" in n]
        ratio = temporal_t["ndcg /pop"].drop([POP, *peers])
        below = ratio[ratio < 1.0]
        rows.append(floor_row(
            "MovieLens temporal: every retriever >= most-popular (all time) NDCG@10",
            float(ratio.min()), ">= 1.0", below.empty,
            "below: " + ", ".join(f"{n} {v:.2f}" for n, v in below.items()) if len(below) else "",
        ))  # fmt: skip
        ref = ncf_bpr.IMPLICIT_BPR
        if ref in temporal_t.index:
            r = float(temporal_t.loc["bpr", "ndcg@10"] / temporal_t.loc[ref, "ndcg@10"])
            rows.append(floor_row("MovieLens temporal: bpr / implicit BPR NDCG@10", r,
                                  "0.95-1.05", 0.95 <= r <= 1.05))  # fmt: skip
    if llo_t is not None:
        flat = [n for n in llo_t.index if n not in SEQUENTIAL]
        best = llo_t.loc[flat, "NDCG@10"].idxmax()
        r = float(llo_t.loc["sasrec", "NDCG@10"] / llo_t.loc[best, "NDCG@10"])
        rows.append(floor_row("leave-last-out: sasrec / best non-sequential NDCG@10", r, ">= 1.0",
                              r >= 1.0, f"best non-sequential: {best}"))  # fmt: skip
    if sim_t is not None:
        from bench_sequential import floor_ratio

        for s, part in sim_t.groupby("strength"):
            got = floor_ratio(part)
            if got is None:
                continue
            on = s > 0
            rows.append(floor_row(
                f"simulator S={s:g}: best sequential / two_tower truth NDCG@10", got[1],
                ">= 1.1" if on else "(none: no structure)", got[1] >= 1.1 if on else None,
                f"best sequential: {got[0]}",
            ))  # fmt: skip
    rows.append(floor_row("LinUCB 14-day regret < epsilon-greedy's", None, "", None,
                          "not run here: bench_explorers.py"))  # fmt: skip
    rows.append(floor_row("every model passes its contract suite", None, "", None,
                          "tests/, not a benchmark"))  # fmt: skip
    return pd.DataFrame(rows)


def markdown_table(table: pd.DataFrame, digits: int = 4) -> str:
    """``table`` (index = first column) as a Markdown table."""
    frame = table.reset_index()
    head = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    lines = [head, "|" + "---|" * len(frame.columns)]
    for row in frame.itertuples(index=False):
        cells = [
            "" if isinstance(v, float) and np.isnan(v) else
            f"{v:.{1 if 'fit_s' in str(c) else digits}f}" if isinstance(v, float) else str(v)
            for c, v in zip(frame.columns, row, strict=True)
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--movielens", type=Path, required=True,
                   help="folder with MovieLens 100K's u.data, u.item, u.user (parts 1-2)")  # fmt: skip
    p.add_argument("--quick", action="store_true", help="smoke configuration (few epochs, tiny)")
    p.add_argument("--skip-sim", action="store_true", help="skip the simulator parts (3-4)")
    p.add_argument("--seed", type=int, default=42, help="models, simulator, sampled negatives")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    logging.getLogger("pipelines").setLevel(logging.ERROR)
    wall: dict[str, float] = {}
    out: list[str] = []
    t_all = time.perf_counter()
    with quick_settings(a.quick):
        t0 = time.perf_counter()
        temporal_t, note = temporal(a.movielens, a.seed)
        wall["1 temporal"] = time.perf_counter() - t0
        out += [f"## 1. {note}; cut-off {CUTOFF}", markdown_table(temporal_t)]
        t0 = time.perf_counter()
        llo_t, lines, note = leave_last_out(a.movielens, a.seed)
        wall["2 leave-last-out"] = time.perf_counter() - t0
        out += [f"## 2. {note}", markdown_table(llo_t), *lines]
        sim_t = None
        if not a.skip_sim:
            t0 = time.perf_counter()
            sim_t, notes = simulator(a.seed, a.quick)
            wall["3 simulator"] = time.perf_counter() - t0
            truth = sim_t.reset_index(names="model").pivot(
                index="model", columns="strength", values=["truth_ndcg@10", "ndcg@10", "fit_s"]
            )
            truth.columns = [f"{m} S={s:g}" for m, s in truth.columns]
            out += ["## 3. simulator", *notes, markdown_table(truth.loc[list(dict.fromkeys(
                sim_t.index))])]  # fmt: skip
            t0 = time.perf_counter()
            ranker_md, note = rankers(a.seed, a.quick)
            wall["4 rankers"] = time.perf_counter() - t0
            out += [f"## 4. rankers: {note}", ranker_md]
    out += ["## floors", markdown_table(floors(temporal_t, llo_t, sim_t).set_index("floor")), PEERS]
    wall["total"] = time.perf_counter() - t_all
    out += ["wall seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in wall.items())]
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
