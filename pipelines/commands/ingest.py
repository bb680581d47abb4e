"""Import real logs as daily partitions of the log contract.

  recloop ingest movielens PATH      u.data or ratings.csv (or a folder holding one); u.item/u.user
                                     or movies.csv beside it become items/users attributes
  recloop ingest table PATH --map user_id=uid --map item_id=sku --map ts=time [--event click]
                                     any CSV/parquet with a column mapping onto the contract

Each day found in the file replaces that day's partition under RECLOOP_HOME/data/interactions
(atomic; re-importing the same file changes nothing).
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
        help="table: contract column = source column (repeat)",
    )
    parser.add_argument("--event", default="click", help="table: event type when not mapped")
    parser.add_argument("--ts-unit", choices=["s", "ms"], help="table: numeric epoch timestamps")


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pipelines.data import ingest

    if args.format == "movielens":
        summary = ingest.import_movielens(settings, args.path)
    else:
        summary = ingest.import_table(
            settings, args.path, ingest.parse_mapping(args.map), args.event, args.ts_unit
        )
    print(summary)
    return 0
