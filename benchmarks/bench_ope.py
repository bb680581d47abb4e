"""Off-policy estimators against the simulator's truth: relative error, spread, interval coverage.

  .venv/bin/python benchmarks/bench_ope.py [--runs 20] [--requests 10000] [--temperature 1.0]
      [--large-requests 200000] [--large-runs 5] [--scale tiny] [--n-boot 500] [--seed 0]

Each run builds a simulator world (seed ``seed + run``), logs ``--requests`` requests of day 0
under the simulator's logging policy (popularity softmax + 10 % uniform, slates of 10), and
evaluates the target ``softmax(true relevance logit / temperature)`` (Plackett-Luce slates) with
IPS, clipped IPS, SNIPS, DM (a reward model = truth + N(0, 0.5²) on the relevance logit) and DR.
The truth is exact given the target's item-position marginals: the mean true click probability of
the target over the logged contexts (as the Open Bandit Pipeline's synthetic experiments compute
it). Relative error = |estimate - truth| / truth. ``on-policy`` is the floor: the sample CTR of
the target itself shown to the same requests (what an A/B test with the same traffic would get).
The large-sample block repeats the estimates (no intervals) at ``--large-requests``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.data import simulate as sim
from pipelines.release import ope

DATE = "2026-01-01"


def one_run(args: argparse.Namespace, run: int, n_requests: int, n_boot: int) -> dict:
    world = sim.build_world(args.scale, args.seed + run)
    pool, _ = sim.logging_policy(world, DATE)
    items = np.array([f"i{r}" for r in pool], dtype=object)
    score = ope.simulator_relevance_score(world)
    logs = ope.simulated_logs(world, DATE, n_requests, seed=run)
    table = ope.policy_table(
        logs, score, items, temperature=args.temperature,
        logging_marginals=ope.simulator_logging_marginals(world, DATE),
        predict=ope.noisy_reward_model(world, noise=0.5, seed=run), n_samples=300, seed=run,
    )  # fmt: skip
    users, inv = np.unique(table["user_id"].to_numpy(dtype=str), return_inverse=True)
    value = ope.true_policy_value(
        world, users, score, items, args.temperature, sim.SLATE_SIZE, n_samples=1000, seed=run
    )
    truth = float(value[inv].mean())
    res = ope.estimate(table, n_boot=n_boot, seed=run)
    out = {"truth": truth, "logging": float(table["reward"].mean())}
    for name, e in res.items():
        out[name] = e
    # on-policy floor: the target's own slates for the same requests, Bernoulli clicks
    req = table.drop_duplicates("request_id")["user_id"].to_numpy(dtype=str)
    u_of_req = np.searchsorted(users, req)
    probs = ope.softmax(score(users, items), args.temperature)
    rng = np.random.default_rng([run, 17])
    clicks = 0.0
    for s in range(0, len(req), 5000):
        uu = u_of_req[s : s + 5000]
        slate = ope.sample_prefixes(probs[uu], sim.SLATE_SIZE, 1, rng)
        p = sim.true_click_prob(
            world, np.repeat(users[uu], sim.SLATE_SIZE), items[slate.ravel()],
            np.tile(np.arange(sim.SLATE_SIZE), len(uu)),
        )  # fmt: skip
        clicks += float((rng.random(len(p)) < p).sum())
    out["on-policy"] = {"estimate": clicks / (len(req) * sim.SLATE_SIZE)}
    return out


def summarise(runs: list[dict], with_ci: bool) -> pd.DataFrame:
    rows = []
    for name in (*ope.ESTIMATORS, "on-policy"):
        rel = np.array([abs(r[name]["estimate"] - r["truth"]) / r["truth"] for r in runs])
        row = {
            "estimator": name,
            "mean_rel_err": rel.mean(),
            "std_rel_err": rel.std(ddof=1) if len(rel) > 1 else float("nan"),
            "median_rel_err": float(np.median(rel)),
            "mean_bias_rel": np.mean(
                [(r[name]["estimate"] - r["truth"]) / r["truth"] for r in runs]
            ),
        }
        if name != "on-policy":
            row["mean_ess"] = np.mean([r[name]["ess"] for r in runs])
        if with_ci and name != "on-policy":
            row["ci_coverage"] = np.mean(
                [r[name]["ci_low"] <= r["truth"] <= r[name]["ci_high"] for r in runs]
            )
            row["ci_half_width_rel"] = np.mean(
                [(r[name]["ci_high"] - r[name]["ci_low"]) / 2 / r["truth"] for r in runs]
            )
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--large-requests", type=int, default=200_000)
    p.add_argument("--large-runs", type=int, default=5)
    p.add_argument("--scale", default="tiny", choices=sorted(sim.SCALES))
    p.add_argument("--n-boot", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    pd.set_option("display.width", 160)
    fmt = {"float_format": "{:.4f}".format, "index": False}

    t0 = time.perf_counter()
    runs = [one_run(args, r, args.requests, args.n_boot) for r in range(args.runs)]
    dt = time.perf_counter() - t0
    truth = np.mean([r["truth"] for r in runs])
    print(
        f"scale {args.scale}, {args.runs} runs x {args.requests} requests "
        f"({args.requests * sim.SLATE_SIZE} impressions), slates of {sim.SLATE_SIZE}, target "
        f"temperature {args.temperature}, clip {ope.DEFAULT_CLIP}, {args.n_boot} bootstrap "
        f"replicates by request; mean true CTR of target {truth:.4f}, of logging "
        f"{np.mean([r['logging'] for r in runs]):.4f}; {dt:.1f} s"
    )
    print(summarise(runs, with_ci=args.n_boot > 0).to_string(**fmt))
    if args.large_runs and args.large_requests:
        t0 = time.perf_counter()
        big = [one_run(args, r, args.large_requests, 0) for r in range(args.large_runs)]
        dt = time.perf_counter() - t0
        print(
            f"\n{args.large_runs} runs x {args.large_requests} requests "
            f"({args.large_requests * sim.SLATE_SIZE} impressions), no intervals; {dt:.1f} s"
        )
        print(summarise(big, with_ci=False).to_string(**fmt))


if __name__ == "__main__":
    main()
