"""Write the workspace's HTML report (plots and tables of every day, gate, OPE and A/B test).

  recloop report [--out PATH] [--date D ...]

Reads what the pipeline wrote under RECLOOP_HOME/reports/ (loop/days.json, eval/, stats/,
gates/, ope/, ab/) and writes one self-contained HTML page (plots inline as PNG) to
reports/index.html, or to --out. --date (repeatable) restricts the report to those dates.
Sections without data say "no data"; nothing is computed or changed elsewhere.
"""

from __future__ import annotations

import argparse

from pipelines.core.settings import Settings


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", help="where to write the HTML (default reports/index.html)")
    parser.add_argument(
        "--date",
        action="append",
        metavar="D",
        help="only this date, YYYY-MM-DD (repeatable; default: every date found)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from pathlib import Path

    from pipelines.core import schema
    from pipelines.report.html import write_report

    dates = [schema.parse_date(d) for d in args.date] if args.date else None
    path = write_report(settings, dates, out=Path(args.out) if args.out else None)
    print(f"report written to {path}")
    return 0
