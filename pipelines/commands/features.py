"""Feature store: show online features; compute, apply, materialize a date.

Actions (the first argument; default ``show``):

  show         online values of one user and some items, with each entity's event timestamp
               and stale / missing flags (missing entities show their defaults)
                 recloop features --user U --items I1,I2 [--date D] [--fast]
               --date D judges staleness as of the end of day D (default: now);
               --fast reads Redis directly (Feast's key layout) instead of Feast's SDK
  compute      D's user and item feature tables from the validated logs, by DuckDB or Spark
               (--engine, default RECLOOP_FEATURE_ENGINE, duckdb); the output names the engine
                 recloop features compute --date D [--engine duckdb|spark]
  apply        register the Feast repository (feature_repo/) in the workspace registry
  materialize  load D's feature rows into Redis (refuses if D's tables are missing/empty)
                 recloop features materialize --date D [--force]
  yaml         print a feature_store.yaml for this workspace, for the `feast` CLI

The Feast registry is RECLOOP_HOME/features/registry.db; Redis is RECLOOP_REDIS_URL.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from pipelines.core.settings import Settings

ACTIONS = ("show", "compute", "apply", "materialize", "yaml")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", default="show", choices=ACTIONS, help="what to do")
    parser.add_argument("--user", help="user id (show)")
    parser.add_argument("--items", default="", help="comma-separated item ids (show)")
    parser.add_argument("--date", help="logical date YYYY-MM-DD")
    parser.add_argument("--service", default="serving_v1", help="feature service (show)")
    parser.add_argument("--fast", action="store_true", help="read Redis directly (show)")
    parser.add_argument(
        "--force", action="store_true", help="materialize even if Redis holds a newer date"
    )
    parser.add_argument(
        "--engine",
        choices=("duckdb", "spark"),
        help="what computes the tables (compute; default RECLOOP_FEATURE_ENGINE, duckdb)",
    )


def _need_date(args: argparse.Namespace) -> str:
    if not args.date:
        raise ValueError(f"`recloop features {args.action}` needs --date YYYY-MM-DD")
    return args.date


def _show(args: argparse.Namespace, settings: Settings) -> int:
    import pandas as pd

    from pipelines.core.redact import redact_url
    from pipelines.features import online
    from pipelines.features import store as fs
    from pipelines.features.tables import feature_time

    if not args.user:
        raise ValueError("`recloop features show` needs --user U (and usually --items I1,I2)")
    items = [i.strip() for i in args.items.split(",") if i.strip()]
    now = feature_time(args.date) if args.date else None
    read = online.online_features_fast if args.fast else fs.online_features
    res = read(settings, args.user, items, now=now, service=args.service)

    def flags(missing: bool, stale: bool) -> str:
        return "MISSING (defaults)" if missing else ("STALE" if stale else "fresh")

    url = redact_url(settings.redis_url)
    print(f"service {args.service} via {res.path} path, {url}, now={res.now}")
    print(
        f"user {res.user_id}: event_timestamp={res.user_event_timestamp} "
        f"[{flags(res.user_missing, res.user_stale)}]"
    )
    width = max((len(k) for k in res.user), default=0)
    for name, value in res.user.items():
        print(f"  {name:<{width}}  {value}")
    if items:
        table = res.items.set_index("item_id").T
        table.loc["state"] = [
            flags(m, s) for m, s in zip(res.items["missing"], res.items["stale"], strict=True)
        ]
        with pd.option_context("display.max_rows", 200, "display.width", 200):
            print(table.to_string())
    print(
        f"{res.n_items} items: {res.n_missing_items} missing, {res.n_stale_items} stale; "
        f"user {'missing' if res.user_missing else 'stale' if res.user_stale else 'fresh'}; "
        f"read {res.read_ms:.1f} ms"
    )
    return 0


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "show":
        return _show(args, settings)
    if args.action == "yaml":
        from pipelines.features import store as fs

        print(fs.feature_store_yaml(settings), end="")
        return 0
    settings.ensure_dirs()
    if args.action == "compute":
        from pipelines.features.tables import compute_features

        if args.engine:
            settings = dataclasses.replace(settings, feature_engine=args.engine)
        out = compute_features(settings, _need_date(args))
    elif args.action == "apply":
        from pipelines.features import store as fs

        out = fs.apply_repo(settings)
    else:
        from pipelines.features import store as fs

        out = fs.materialize_date(settings, _need_date(args), force=args.force)
    print(json.dumps(out, indent=2, default=str))
    return 0
