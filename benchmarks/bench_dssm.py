"""DSSM (word-hashed titles) beside MF, the two-tower and most-popular: the simulator and
MovieLens 100K.

  OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_dssm.py [--movielens DIR]
      [--days 8] [--scale demo] [--seed 42] [--home DIR] [--skip-sim] [--set KEY=VALUE ...]

- **Simulator** (as ``bench_retrieval.py`` / ``bench_ncf_bpr.py``, default strength: no sequential
  structure): ``--days`` days at ``--scale`` validated and featurized (in ``--home`` when given and
  kept, so a rerun reuses it; a temporary workspace otherwise); ``popular``, ``mf``,
  ``two_tower`` and ``dssm`` built by ``pipelines.retrieval.train.build_model`` through day N-2
  (DSSM reads the simulator's generated titles, ``pipelines.data.titles``), tested on day N-1's
  positives with ``compare_models`` (NDCG@10, recall@10, MAP@10, recall@100) and
  ``truth_ndcg@10`` (``bench_retrieval.truth_ndcg``). ``dssm (no text)`` is the same model with
  every title empty (category and demographics only): what the text adds.
- **MovieLens 100K**: ``bench_ncf_bpr.movielens_split`` (temporal split at ``--cutoff``), DSSM on
  the film titles (``u.item``'s second field) with the genre as category and age band / gender /
  occupation from ``u.user``; beside ``ALS(**MF_PARAMS)`` and the most-popular lists.

``--set KEY=VALUE`` overrides one of ``train.DSSM_PARAMS`` (repeatable; values parsed as JSON),
for tuning on ``--validate`` splits (one step back, as ``bench_ncf_bpr.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.metrics import compare_models
from pipelines.retrieval import train

SIM_MODELS = ("popular", "mf", "two_tower", "dssm")


def simulated_workspace(home: Path, days: int, scale: str, seed: int) -> list[dt.date]:
    """Simulate, validate and featurize ``days`` days into ``home`` unless already there."""
    from pipelines.core.settings import Settings
    from pipelines.data import simulate
    from pipelines.data.validate import validate_partition
    from pipelines.features.tables import compute_features

    s = Settings.from_env({"RECLOOP_HOME": str(home), "RECLOOP_SEED": str(seed)})
    start = dt.date(2026, 1, 1)
    all_days = [start + dt.timedelta(days=d) for d in range(days)]
    marker = home / f"bench_dssm-{scale}-{seed}-{days}.done"
    if not marker.exists():
        s.ensure_dirs()
        simulate.simulate(s, days, scale, seed, start)
        for d in all_days:
            validate_partition(s, d, data_docs=False)
            compute_features(s, d)
        marker.write_text("ok")
    return all_days


def simulator(home: Path, days: int, scale: str, seed: int, validate: bool) -> None:
    """The simulator part (module docstring)."""
    from bench_ncf_bpr import fitted, report
    from bench_retrieval import truth_ndcg

    from pipelines.core.settings import Settings
    from pipelines.retrieval.data import load_training_data
    from pipelines.retrieval.evaluate import day_relevance

    all_days = simulated_workspace(home, days, scale, seed)
    s = Settings.from_env({"RECLOOP_HOME": str(home), "RECLOOP_SEED": str(seed)})
    if validate:
        all_days = all_days[:-1]
    train_end, test_day = all_days[-2], all_days[-1]
    data = load_training_data(s, train_end)
    builders = {n: (lambda n=n: train.build_model(n, data, s, seed=seed)) for n in SIM_MODELS}
    builders["dssm (no text)"] = lambda: no_text_dssm(data, s, seed)
    models, seconds = fitted(builders)
    test = day_relevance(s, test_day, data.users, data.items)
    table = compare_models(models, data.implicit, test, k=10, recall_ks=(10, 100))
    table = table.join(truth_ndcg(s, models, data, test_day))
    report(
        f"simulator: scale {scale}, seed {seed}, train {all_days[0]}..{train_end} "
        f"({data.implicit.nnz} positive cells, {len(data.users)} users x "
        f"{len(data.items)} items), test {test_day}; DSSM {train.DSSM_PARAMS}",
        table,
        seconds,
        "popular",
    )
    print(table[["recall@100"]].T.to_string(float_format="%.4f"))


def no_text_dssm(data: Any, settings: Any, seed: int) -> Any:
    """``build_model("dssm")`` with every title empty."""
    from pipelines.data import titles

    real = titles.load_item_text
    titles.load_item_text = lambda s, items: [""] * len(items)  # type: ignore[assignment]
    try:
        return train.build_model("dssm", data, settings, seed=seed)
    finally:
        titles.load_item_text = real  # type: ignore[assignment]


def movielens_side(folder: Path, cutoff: dt.date) -> dict[str, Any]:
    """DSSM's inputs on ``bench_ncf_bpr.movielens_split``'s rows: titles ``(I,)``, genre codes
    ``(I,)``, user codes ``(U, 3)`` (age band of 10 years, gender, occupation)."""
    raw = pd.read_csv(folder / "u.data", sep="\t", names=["user", "item", "rating", "ts"])
    day = pd.to_datetime(raw["ts"], unit="s", utc=True).dt.date
    tr = raw[day <= cutoff]
    users, items = np.sort(tr["user"].unique()), np.sort(tr["item"].unique())
    item = pd.read_csv(folder / "u.item", sep="|", header=None, encoding="latin-1")
    item = item.set_index(0).loc[items]
    genres = item.iloc[:, 4:].to_numpy().astype(int)  # 19 genre flags after the 4 text fields
    user = pd.read_csv(folder / "u.user", sep="|", header=None).set_index(0).loc[users]
    codes = np.stack(
        [
            (user[1].to_numpy() // 10).astype(np.int64),
            pd.factorize(user[2], sort=True)[0],
            pd.factorize(user[3], sort=True)[0],
        ],
        axis=1,
    )
    return {
        "item_text": item[1].fillna("").astype(str).tolist(),
        "item_groups": genres.argmax(axis=1).astype(np.int64),
        "user_groups": codes,
    }


def movielens(folder: Path, cutoff: dt.date, seed: int, last: dt.date | None = None) -> None:
    """The MovieLens part (module docstring)."""
    from bench_ncf_bpr import fitted, movielens_split, report

    from models.als import ALS
    from models.baselines import MostPopular
    from models.dssm import DSSM

    train_m, test_m, recent, note = movielens_split(folder, cutoff, last)
    side = movielens_side(folder, cutoff)
    no_text = {**side, "item_text": [""] * train_m.shape[1]}
    params = {**train.DSSM_PARAMS, "seed": seed}
    builders = {
        "popular (all time)": lambda: MostPopular().fit(train_m),
        "popular (last 7 days)": lambda: MostPopular(7).fit(train_m, item_weights=recent),
        "mf": lambda: ALS(**train.MF_PARAMS, seed=seed).fit(train_m, progress=False),
        "dssm": lambda: DSSM(**params).fit(train_m, **side, progress=False),
        "dssm (no text)": lambda: DSSM(**params).fit(train_m, **no_text, progress=False),
    }
    models, seconds = fitted(builders)
    table = compare_models(models, train_m, test_m, k=10, recall_ks=(10, 20))
    report(f"{note}; DSSM {params}", table, seconds, "popular (all time)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--movielens", type=Path, help="folder with u.data, u.item, u.user")
    p.add_argument("--days", type=int, default=8)
    p.add_argument("--scale", default="demo")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--home", type=Path, help="simulated workspace to create or reuse")
    p.add_argument("--cutoff", default="1998-03-15")
    p.add_argument("--validate", action="store_true", help="the validation splits")
    p.add_argument("--skip-sim", action="store_true")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE of DSSM_PARAMS")
    a = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_ncf_bpr's helpers
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    for item in a.set:
        key, value = item.split("=", 1)
        if key not in train.DSSM_PARAMS:
            p.error(f"--set {key}: not one of {sorted(train.DSSM_PARAMS)}")
        train.DSSM_PARAMS[key] = json.loads(value)
    t0 = time.perf_counter()
    if not a.skip_sim:
        if a.home:
            a.home.mkdir(parents=True, exist_ok=True)
            simulator(a.home, a.days, a.scale, a.seed, a.validate)
        else:
            with tempfile.TemporaryDirectory() as home:
                simulator(Path(home), a.days, a.scale, a.seed, a.validate)
    if a.movielens:
        cutoff = dt.date.fromisoformat(a.cutoff)
        last = cutoff if a.validate else None
        start = cutoff - dt.timedelta(days=28) if a.validate else cutoff
        movielens(a.movielens, start, a.seed, last)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
