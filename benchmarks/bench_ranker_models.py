"""Every ranker kind side by side on the simulator's labelled impressions (issue 16).

    .venv/bin/python benchmarks/bench_ranker_models.py [--days 4] [--seed 42] [--epochs 3]
        [--model-seeds 3]

The data are ``benchmarks/bench_ranker.py``'s (a): ``--days`` simulated demo days, impressions
labelled by ``label_impressions``, features built from the logs (counts before the day, smoothed
CTRs, price, age, category, demographics); train on the days before the last, test on the last
day's impressions. Each kind of ``RECLOOP_RANKER`` (``pipelines.ranking.train.RANKERS``: dlrm_dot,
dlrm_cross, dlrm_fm, deepfm, wide_deep, logistic) is fitted by ``fit_ranker`` (the daily job's
path) with ``--model-seeds`` initialization seeds; plus Wide & Deep without crosses and the two
new kinds IPS-weighted. Reported: AUC (mean ± sd over the seeds), AUC within position (pairs
shown at the same slot), logloss, ECE, mean prediction against the observed CTR (uncalibrated:
no Platt step here), NDCG@10 lift over the retrieval proxy, Spearman with the true click
probability, fit seconds (mean).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ranker import DENSE, SPARSE, demo_frames, fmt  # noqa: E402

from pipelines.ranking import evaluate as rk_eval  # noqa: E402
from pipelines.ranking import train as rk_train  # noqa: E402

RUNS: dict[str, dict] = {
    **{kind: {"kind": kind} for kind in rk_train.RANKERS},
    "wide_deep, no crosses": {"kind": "wide_deep", "crosses": []},
    "deepfm + IPS": {"kind": "deepfm", "ips": True},
    "wide_deep + IPS": {"kind": "wide_deep", "ips": True},
}
KEYS = ("auc", "auc_within_position", "logloss", "ece", "mean_pred", "observed_ctr")


def run_one(train, test, run: dict, epochs: int, seed: int) -> tuple[dict, float]:
    """Metrics of one fitted ranker on ``test`` and its fit seconds."""
    run = dict(run)
    kind = run.pop("kind")
    t0 = time.perf_counter()
    model = rk_train.fit_ranker(
        train, DENSE, SPARSE, kind, epochs=epochs, seed=seed, feature_service="bench", **run
    )
    wall = time.perf_counter() - t0
    res = rk_eval.evaluate_ranker(
        model, test, retrieval_score_col="retrieval_score", true_prob_col="true_click_prob"
    )
    if kind == "wide_deep":
        res["crosses"] = model.crosses
    return res, wall


def ranker_rows(
    train, test, epochs: int, model_seeds: int, runs: dict[str, dict] = RUNS, echo: bool = True
) -> list[tuple[str, dict]]:
    """Each run of ``runs`` fitted with seeds ``0..model_seeds-1`` on ``train`` and judged on
    ``test``: ``(name, metrics averaged over the seeds, + auc_sd and fit_s)`` per run;
    ``echo`` prints one progress line per run."""
    rows = []
    for name, run in runs.items():
        results = [run_one(train, test, run, epochs, s) for s in range(model_seeds)]
        agg = {k: float(np.mean([r[k] for r, _ in results])) for k in (*KEYS, "ndcg@10_lift")}
        agg["spearman_truth"] = float(np.mean([r["spearman_truth"] for r, _ in results]))
        agg["auc_sd"] = float(np.std([r["auc"] for r, _ in results]))
        agg["fit_s"] = float(np.mean([w for _, w in results]))
        rows.append((name, agg))
        if echo:
            extra = f" crosses {results[0][0]['crosses']}" if "crosses" in results[0][0] else ""
            print(f"  {name}: AUC {agg['auc']:.4f}, fit {agg['fit_s']:.1f}s{extra}", flush=True)
    return rows


def markdown(rows: list[tuple[str, dict]]) -> str:
    """:func:`ranker_rows` as a Markdown table."""
    lines = [
        "| ranker | AUC (± sd) | AUC within position | logloss | ECE | mean pred / CTR "
        "| NDCG@10 lift | Spearman truth | fit s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {fmt(r['auc'])} ± {fmt(r['auc_sd'])} | {fmt(r['auc_within_position'])} "
            f"| {fmt(r['logloss'])} | {fmt(r['ece'])} | {fmt(r['mean_pred'])} / "
            f"{fmt(r['observed_ctr'])} | {fmt(r['ndcg@10_lift'])} | "
            f"{fmt(r['spearman_truth'], 3)} | {r['fit_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--days", type=int, default=4)
    p.add_argument("--seed", type=int, default=42, help="simulator seed")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--model-seeds", type=int, default=3, help="initialization seeds per ranker")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    t_all = time.perf_counter()
    train, _, test = demo_frames(args.days, args.seed)
    print(
        f"train {len(train):,} rows ({int(train['label'].sum()):,} clicks), test {len(test):,} "
        f"({int(test['label'].sum()):,} clicks); {args.epochs} epochs, seeds 0..{args.model_seeds - 1}"
    )
    rows = ranker_rows(train, test, args.epochs, args.model_seeds)
    print("\n" + markdown(rows))
    print(f"\ntotal {time.perf_counter() - t_all:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
