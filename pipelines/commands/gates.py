"""Show the promotion-gate decision of a date as a table.

  recloop gates --date D [--json]

Reads reports/gates/date=D.json (written by the daily DAG's gate task, pipelines.release.gate.gate_day)
or, when that file is gone, the decision.json of the date's run in the MLflow experiment
recloop-gates. One row per gate: candidate value, champion value, tolerance, verdict (pass, fail,
skipped, not_evaluated) and what was compared; then the action (champion, challenger, held,
rejected), the kind (refresh: the champion's configuration retrained, which replaces it; change:
a new configuration, A/B tested) with both configuration fingerprints, and whether the stage gate
left the ranker out.
"""

from __future__ import annotations

import argparse

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", required=True, help="logical date YYYY-MM-DD")
    parser.add_argument("--json", action="store_true", help="print the decision as JSON")


def run(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from pipelines.release.gate import format_decision, read_decision

    decision = read_decision(settings, args.date)
    if args.json:
        print(json.dumps(decision, indent=2, sort_keys=True))
    else:
        print(format_decision(decision))
        aliases = decision.get("aliases") or {}
        if aliases:
            print(
                f"aliases after: champion={aliases.get('champion') or '-'} "
                f"challenger={aliases.get('challenger') or '-'}"
            )
    return 0
