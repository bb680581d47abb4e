"""Simulate a seeded world: daily logs of a logging policy, and the ground truth apart.

  recloop simulate --days N [--scale tiny|small|demo|large] [--seed S] [--start-date YYYY-MM-DD]
                   [--sequential S]

Writes under RECLOOP_HOME: data/users.parquet, data/items.parquet,
data/interactions/date=D/part-0.parquet (one partition per day, replaced atomically), and the
truth (never read by training) under truth/: true click probabilities per impression
(truth/impressions/date=D/), the logging policy's true CTR per day (truth/policy_value.parquet) and
truth/world.json. Same seed, same bytes. Prints a summary per day. ``--sequential S`` (default
RECLOOP_SIM_SEQUENTIAL, 0) gives the world a sequential structure of strength S in [0, 1]: a user's
next interests follow a category transition matrix from their last click (0: today's world).
"""

from __future__ import annotations

import argparse

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--days", type=int, required=True, help="number of days to simulate")
    parser.add_argument(
        "--scale",
        choices=["tiny", "small", "demo", "large"],
        help="world size (default: RECLOOP_SCALE)",
    )
    parser.add_argument("--seed", type=int, help="random seed (default: RECLOOP_SEED)")
    parser.add_argument(
        "--start-date", default="2026-01-01", help="first simulated day, YYYY-MM-DD"
    )
    parser.add_argument(
        "--sequential",
        type=float,
        help="strength in [0, 1] of the sequential structure (default: RECLOOP_SIM_SEQUENTIAL, 0)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.data import simulate

    summaries = simulate.simulate(
        settings,
        days=args.days,
        scale=args.scale,
        seed=args.seed,
        start_date=args.start_date,
        sequential=args.sequential,
    )
    print(simulate.format_summary(summaries))
    print(f"logs: {settings.interactions_dir}   truth: {settings.truth_dir}")
    return 0
