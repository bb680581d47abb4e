"""What each serving stage does to the truth: now ``recloop stages`` (pipelines/loop/stages.py).

  RECLOOP_HOME=<a demo workspace> RECLOOP_REDIS_URL=<its Redis> \
      .venv/bin/python benchmarks/bench_stages.py [--date 2026-01-05] [--bundle champion] \
      [--users 300] [--json]

A thin wrapper over ``recloop stages``: one day's simulated users through the service pipeline
in-process, once per variant (``full``, ``retrieval_only``, ``trending``, ``<source>_only``),
each slate scored by the simulator's true click probability (position included); prints the
mean true CTR, the OPE estimate, distinct items, catalog health and the true CTR per activity
bucket of each variant. The serving configuration comes from the environment
(``RECLOOP_SERVE_*``, e.g. ``RECLOOP_SERVE_NEW_USERS=user_tower``); deadlines are raised so that
no answer degrades on a busy box.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--date", default="2026-01-05")
    parser.add_argument("--bundle", default="champion", help="bundle version or alias")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from pipelines.cli import main as recloop

    argv = ["stages", "--date", args.date, "--bundle", args.bundle, "--users", str(args.users)]
    return recloop(argv + (["--json"] if args.json else []))


if __name__ == "__main__":
    sys.exit(main())
