"""Import real logs as daily partitions of the log contract.

  recloop ingest movielens PATH      u.data or ratings.csv (or a folder holding one); u.item/u.user
                                     or movies.csv beside it become items/users attributes
  recloop ingest table PATH --map user_id=uid --map item_id=sku --map ts=time [--event click]
                                     any CSV/parquet with a column mapping onto the contract
  recloop ingest table events.csv --map user_id=visitorid --map item_id=itemid --map ts=timestamp
      --map event=event --events view=click,addtocart=click,transaction=purchase --ts-unit ms
                                     an event log (RetailRocket-style) with its events mapped

Each day found in the file gets this file's rows as its own file in that day's partition under
RECLOOP_HOME/data/interactions (import-<hash of the file name>.parquet), beside the files other
sources wrote there, which are kept (rows whose event_id they hold already are left out); atomic,
and re-importing the same file changes nothing. Each day also gets an import record
(data/imports/date=D.json: source, file, date range, counts), so validation knows the day is
imported history: its volume is checked against the trailing median and a collapse is a warning,
not a failure (RECLOOP_IMPORTED_MIN_VOLUME_RATIO).

Events: the contract knows impression|click|purchase|rating. A "view" (the user opened the item)
is a click, not an impression: an impression is what a policy showed, with a position and a
propensity. Rows with an event value that is neither a contract event nor mapped, or with an
unreadable timestamp, are dropped and reported (count, example lines); more than half dropped
fails the import.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("format", choices=["movielens", "table"], help="source format")
    parser.add_argument("path", type=Path, help="file (or folder for movielens)")
    parser.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="COLUMN=SOURCE",
        help="table: contract column = source column (repeat); user_id, item_id, ts required; "
        "event, value, event_id optional",
    )
    parser.add_argument(
        "--event", default="click", help="table: event type of every row when event is not mapped"
    )
    parser.add_argument(
        "--events",
        action="append",
        default=[],
        metavar="VALUE=EVENT[,...]",
        help="table: map the source's event values onto the contract's events "
        "(impression|click|purchase|rating), e.g. view=click,addtocart=click,transaction=purchase "
        "(a view is the user's choice, a click; contract event names map to themselves); "
        "rows with any other value are dropped and reported",
    )
    parser.add_argument(
        "--ts-unit",
        choices=["s", "ms"],
        help="table: the ts column holds numeric epochs in seconds (s) or milliseconds (ms)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.data import ingest

    if args.format == "movielens":
        summary = ingest.import_movielens(settings, args.path)
    else:
        summary = ingest.import_table(
            settings,
            args.path,
            ingest.parse_mapping(args.map),
            args.event,
            args.ts_unit,
            ingest.parse_events(args.events),
        )
    print(summary)
    return 0
