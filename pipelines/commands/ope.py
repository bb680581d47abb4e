"""Off-policy estimates (IPS, clipped IPS, SNIPS, DM, DR) of a target policy from an OPE table.

  recloop ope --table FILE [--n-boot N] [--clip C] [--alpha A] [--seed S]

FILE is parquet (.parquet/.pq) or CSV with one row per logged (item, slot) decision and the
columns reward, propensity (logging policy's probability of that item at that slot),
target_propensity (the target policy's), optionally predicted_reward and target_predicted_reward
(for DM and DR) and request_id (bootstrap resamples whole requests). Rows with a missing or zero
propensity are excluded and counted. Prints JSON on stdout: per estimator its estimate, ci_low,
ci_high (bootstrap percentile), ess (effective sample size), n and excluded. See pipelines/release/ope.py.
"""

from __future__ import annotations

import argparse

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", required=True, help="OPE table, parquet or CSV")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (0: none)")
    parser.add_argument("--clip", type=float, default=20.0, help="weight cap of clipped IPS")
    parser.add_argument("--alpha", type=float, default=0.05, help="interval level is 1 - alpha")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def run(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from pipelines.release import ope

    table = ope.read_table(args.table)
    result = ope.estimate(
        table,
        n_boot=args.n_boot,
        clip=args.clip,
        alpha=args.alpha,
        seed=args.seed,
        source=str(args.table),
    )
    print(json.dumps(result, indent=2, allow_nan=False))
    return 0
