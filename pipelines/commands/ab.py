"""Show an A/B experiment: the per-arm table and its decision history.

  recloop ab --experiment E [--date D] [--json]

E names the experiment as the pair of serving_bundle versions, "<champion>-vs-<challenger>"
(e.g. 3-vs-5; the service logs arm and model_version = bundle-<v>, not an experiment name).
The arm table (impressions, clicks, CTR with a Wilson 95% interval, purchases, conversion,
users) is computed from the validated logs, from the experiment's start through D (default: the
newest decision's date, else the newest validated day). The history lists every decision the A/B
DAG recorded (reports/ab/E/date=*.json): action, CTR difference, always-valid interval and
p-value (mSPRT), and the reason. Below the arm table, from the newest decision through D:
"OPE beside A/B" (per arm: what off-policy evaluation predicted for the arm's bundle before the
test, SNIPS with its 95% interval, beside the CTR the test measured and, on simulated data, the
true expected CTR; all clicks per impression) and the guardrails with their verdicts (CTR and
conversion drops; service latency p99, error rate, degraded rate, catalog coverage). Nothing is
decided or changed here: see pipelines.experiments.ab.analyze.
"""

from __future__ import annotations

import argparse

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--experiment", required=True, help="'<champion>-vs-<challenger>'")
    parser.add_argument("--date", help="last day of the arm table, YYYY-MM-DD")
    parser.add_argument("--json", action="store_true", help="print table and history as JSON")


def run(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from pipelines.core import schema
    from pipelines.core.validated import validated_dates
    from pipelines.experiments import ab

    ab.parse_experiment(args.experiment)
    records = ab.history(settings, args.experiment)
    if args.date:
        last = schema.parse_date(args.date)
    elif records:
        last = schema.parse_date(records[-1]["date"])
    else:
        dates = validated_dates(settings)
        if not dates:
            raise FileNotFoundError(f"no validated partitions under {settings.validated_dir}")
        last = dates[-1]
    start = ab.start_date(settings, args.experiment, last)
    if start is None:
        arms: list[dict] = []
    else:
        table = ab.arm_stats(settings, args.experiment, start, last).reset_index()
        arms = json.loads(table.to_json(orient="records"))
    if args.json:
        print(json.dumps({"experiment": args.experiment, "start_date": str(start),
                          "through": last.isoformat(), "arms": arms, "history": records},
                         indent=2, sort_keys=True, default=str))  # fmt: skip
        return 0
    print(f"experiment {args.experiment} (champion bundle-{ab.parse_experiment(args.experiment)[0]}"
          f" vs challenger bundle-{ab.parse_experiment(args.experiment)[1]})")  # fmt: skip
    if start is None:
        print(f"no challenger traffic through {last}")
    else:
        print(f"arms from {start} through {last}:")
        print(ab.format_arms(arms))
    print()
    upto = [r for r in records if r["date"] <= last.isoformat()]
    if upto:
        rec = upto[-1]
        print(f"OPE beside A/B (decision of {rec['date']}):")
        print(ab.format_ope(rec))
        print()
        print(f"guardrails (decision of {rec['date']}):")
        print(ab.format_guardrails(rec))
        print()
    if records:
        print("decisions:")
        print(ab.format_history(records))
    else:
        print("no decisions recorded yet")
    return 0
