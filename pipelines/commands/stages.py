"""What each stage of the served pipeline is worth on a day: true CTR, OPE, catalog health.

  recloop stages --date D [--users N] [--bundle REF] [--variants a,b] [--horizon-days H] [--json]

The day's users (the simulator's requests of D when the workspace has a truth, else the users
with positives in D's forward window, below; the first N with --users) are served in-process
by bundle REF (alias or version, default champion) under the serving configuration of the
environment (RECLOOP_SERVE_*), once per variant: full (as served), retrieval_only (no
ranker), trending (the cold-start list for everyone), new_users_trending (with a user
tower that serves new users: as served, but users unknown to the bundle get the trending list,
as with RECLOOP_SERVE_NEW_USERS=trending; new_users_tower, the other way round, when the
bundle's stage gate chose the trending list for them), ranker_tempered or ranker_untempered
(with a ranker: the stage gate's other order), ranker_tower or ranker_no_tower (with a ranker
and a user tower: the ranker's order blended with the user tower's scores, or not) and
<source>_only for each candidate source (that source alone, ranker kept).
Per variant: the mean true CTR of the slates (simulator truth, position included; null without
one), the OPE estimate from D's logs (SNIPS; null when unavailable), distinct items, intra-list
diversity (ild) and calibration KL over item categories, catalog coverage, Gini of impressions, novelty (bits), the share of new items, and the true CTR per
activity bucket (users' positives before D: 0, 1-4, 5-19, 20+), and forward ranking figures
usable on real data: NDCG@10, hit rate@10 and recall@10 of the served slates against each
replayed user's positives in the validated logs of the forward window [D, D+H) (H days,
default RECLOOP_GATE_TEST_DAYS; null when no replayed user has one).

The stage funnel (where the slate loses), per variant: with a simulator truth, the true CTR of
the oracle's slates, of the best 10 of the request's candidates, of the top 10 candidates in
score order (the ranker), and as served, the share of the oracle's items among the candidates,
and the top candidates as a model knowing only the items' appeal, demographics x category,
demographics x item or user x category would rank them; on real data, the same stages by
NDCG@10 on the forward positives. Needs the workspace's Redis (online features). Nothing is
logged by the replays.

Every variant against full, on the same users (vs_full): the mean of the users' differences in
true CTR and in NDCG@10 (variant - full) with a paired bootstrap 95% interval, so that a
difference of 0.1% is read as a tie unless its interval excludes 0, and the same interval
adjusted for the number of variants compared (Bonferroni: all the adjusted intervals hold at
once with 95%), since one plain interval in a dozen excludes 0 by chance.

With --json, standard output is the JSON document only: {"date", "bundle", "users",
"forward_window", "variants": {"full": {"true_ctr", "ope_snips", "ndcg@10", "hit_rate@10",
"recall@10", "forward_users", "distinct_items", "funnel", "forward_funnel", ...},
"trending": {..., "vs_full": {"true_ctr": {"diff", "ci_low", "ci_high", "users",
"ci_low_adjusted", "ci_high_adjusted", "comparisons"}}}, ...}};
progress goes to standard error. See pipelines/loop/stages.py.
"""

from __future__ import annotations

import argparse

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", required=True, help="logical date YYYY-MM-DD")
    parser.add_argument("--users", type=int, default=None, help="at most N users (default: all)")
    parser.add_argument("--bundle", default="champion", help="bundle alias or version")
    parser.add_argument("--variants", default=None, help="comma-separated subset of variants")
    parser.add_argument(
        "--horizon-days",
        type=int,
        default=None,
        help="forward window [D, D+h) of the ranking figures (default: RECLOOP_GATE_TEST_DAYS)",
    )
    parser.add_argument("--json", action="store_true", help="the JSON document on stdout only")


def run(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from pipelines.loop.stages import format_table, run_stages

    if args.users is not None and args.users < 1:
        raise ValueError("--users must be >= 1")
    only = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    if args.horizon_days is not None and args.horizon_days < 1:
        raise ValueError("--horizon-days must be >= 1")
    doc = run_stages(
        settings, args.date, args.bundle, args.users, only=only, horizon_days=args.horizon_days
    )
    if args.json:
        print(json.dumps(doc, indent=2, allow_nan=False))
    else:
        print(format_table(doc))
    return 0
