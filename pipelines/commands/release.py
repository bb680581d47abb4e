"""Promote, roll back, pin or unpin the serving champion by hand (what the recloop_release DAG does).

  recloop release --action promote  --version V --reason TEXT [--operator NAME] [--json]
  recloop release --action rollback [--version V] --reason TEXT
  recloop release --action pin      [--version V] --reason TEXT
  recloop release --action unpin    --reason TEXT

The same code path as the recloop_release DAG (pipelines.release.operations.release): promote is
refused unless the version's newest gate decision passed, no A/B experiment rolled it back, the
bundle loads and answers the service's smoke test and the champion is not pinned elsewhere; the
champion moves by compare-and-set under the registry lock. rollback goes back to the previous
champion (or to --version, which must have been champion); pin keeps the champion where it is
(the daily gate and A/B promotions leave it) until unpin. Every attempt, refused or done, is a run
of the MLflow experiment recloop-release (action, version, reason, operator, previous champion).
A refusal prints the reason and exits 2. The running service follows the champion alias within
RECLOOP_SERVE_RELOAD_S.
"""

from __future__ import annotations

import argparse

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--action",
        required=True,
        choices=("promote", "rollback", "pin", "unpin"),
        help="what to do",
    )
    parser.add_argument("--version", default=None, help="serving_bundle version number")
    parser.add_argument("--reason", required=True, help="why (recorded in MLflow)")
    parser.add_argument("--operator", default=None, help="who (default: the login name)")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")


def run(args: argparse.Namespace, settings: Settings) -> int:
    import getpass
    import json

    from pipelines.release.operations import release

    settings.ensure_dirs()
    operator = args.operator or getpass.getuser()
    out = release(settings, args.action, args.version, args.reason, operator)
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    print(
        f"{out['action']} by {out['operator']}: champion {out['previous_champion'] or '-'} -> "
        f"{out['champion'] or '-'}; pinned: {out['pinned'] or '-'}"
    )
    for note in out["notes"]:
        print(f"  {note}")
    print(f"recorded: MLflow run {out['mlflow_run_id']} (experiment recloop-release)")
    return 0
