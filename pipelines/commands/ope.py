"""Off-policy estimates of a target policy: of a bundle on a day's logs, or from an OPE table.

  recloop ope --date D --bundle V [--policy served|softmax] [--max-requests N]
  recloop ope --table FILE [--n-boot N] [--clip C] [--alpha A] [--seed S]

``--date/--bundle``: bundle V (version or alias) evaluated on D's validated logs, the report
written to ``reports/ope/date=D/<label>.json`` and printed as JSON. ``--policy served`` (default;
label ``bundle-<V>``, what the gate and the A/B prediction read): the bundle through the serving
pipeline, a seeded sample of at most N logged requests replayed (default
``pipelines.release.bundle_ope.MAX_REQUESTS``; 0: every request), PBM SNIPS/DR, ESS, intervals
and, on simulated data, the truth (:mod:`pipelines.release.served_ope`). ``--policy softmax``
(label ``bundle-<V>-softmax``): the bundle's two-tower softmax policy, kept for comparison.

``--table``: FILE is parquet (.parquet/.pq) or CSV with one row per logged (item, slot) decision
and the columns reward, propensity (logging policy's probability of that item at that slot),
target_propensity (the target policy's), optionally predicted_reward and target_predicted_reward
(for DM and DR) and request_id (bootstrap resamples whole requests). Rows with a missing or zero
propensity are excluded and counted. Prints JSON on stdout: per estimator its estimate, ci_low,
ci_high (bootstrap percentile), ess (effective sample size), n and excluded. See
pipelines/release/ope.py.
"""

from __future__ import annotations

import argparse
import json
import sys

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", help="OPE table, parquet or CSV")
    parser.add_argument("--date", help="logged day D (with --bundle)")
    parser.add_argument("--bundle", help="serving bundle version or alias (with --date)")
    parser.add_argument("--policy", choices=("served", "softmax"), default="served",
                        help="which policy of the bundle (default: served)")  # fmt: skip
    parser.add_argument("--max-requests", type=int, default=None,
                        help="served: logged requests replayed (default 1500; 0: all)")  # fmt: skip
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap replicates (0: none)")
    parser.add_argument("--clip", type=float, default=20.0, help="weight cap of clipped IPS")
    parser.add_argument("--alpha", type=float, default=0.05, help="interval level is 1 - alpha")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def _bundle(args: argparse.Namespace, settings: Settings) -> dict:
    """The OPE report of ``--bundle`` on ``--date`` (module docstring)."""
    from pipelines.release import bundle_ope, registry

    version = registry.get_alias(settings, args.bundle) if not args.bundle.isdigit() else None
    version = version or args.bundle
    if args.policy == "softmax":
        folder = registry.load_bundle(settings, version)["paths"]["two_tower"]
        label = f"bundle-{version}-softmax"
        return bundle_ope.evaluate_bundle(settings, args.date, folder, label, seed=args.seed)
    limit = bundle_ope.MAX_REQUESTS if args.max_requests is None else args.max_requests
    return bundle_ope.evaluate_served_bundle(
        settings, args.date, version, max_requests=limit or None, seed=args.seed
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.release import ope

    if (args.table is None) == (args.date is None or args.bundle is None):
        print("recloop ope: give either --table FILE or both --date D and --bundle V",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.table is None:
        print(json.dumps(_bundle(args, settings), indent=2, allow_nan=False, default=float))
        return 0
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
