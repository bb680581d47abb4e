"""What each stage of the served pipeline is worth on a day: true CTR, OPE, catalog health.

  recloop stages --date D [--users N] [--bundle REF] [--variants a,b] [--json]

The day's users (the simulator's requests of D when the workspace has a truth, else the users
in D's validated logs; the first N with --users) are served in-process by bundle REF (alias or
version, default champion) under the serving configuration of the environment (RECLOOP_SERVE_*),
once per variant: full (as served), retrieval_only (no ranker), trending (the cold-start list
for everyone) and <source>_only for each candidate source (that source alone, ranker kept).
Per variant: the mean true CTR of the slates (simulator truth, position included; null without
one), the OPE estimate from D's logs (SNIPS; null when unavailable), distinct items, catalog
coverage, Gini of impressions, novelty (bits), the share of new items, and the true CTR per
activity bucket (users' positives before D: 0, 1-4, 5-19, 20+). Needs the workspace's Redis
(online features). Nothing is logged by the replays.

With --json, standard output is the JSON document only: {"date", "bundle", "users",
"variants": {"full": {"true_ctr", "ope_snips", "distinct_items", ...}, ...}}; progress goes to
standard error. See pipelines/loop/stages.py.
"""

from __future__ import annotations

import argparse

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", required=True, help="logical date YYYY-MM-DD")
    parser.add_argument("--users", type=int, default=None, help="at most N users (default: all)")
    parser.add_argument("--bundle", default="champion", help="bundle alias or version")
    parser.add_argument("--variants", default=None, help="comma-separated subset of variants")
    parser.add_argument("--json", action="store_true", help="the JSON document on stdout only")


def run(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from pipelines.loop.stages import format_table, run_stages

    if args.users is not None and args.users < 1:
        raise ValueError("--users must be >= 1")
    only = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    doc = run_stages(settings, args.date, args.bundle, args.users, only=only)
    if args.json:
        print(json.dumps(doc, indent=2, allow_nan=False))
    else:
        print(format_table(doc))
    return 0
