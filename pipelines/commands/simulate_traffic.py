"""Send the simulator's users of a day to the running service; report their clicks as feedback.

  recloop simulate-traffic --date D [--url http://127.0.0.1:8000] [--max-requests N]
                           [--concurrency C] [--seed S] [--k K] [--deadline-s T]

Real HTTP on loopback only (a non-loopback --url is refused). Each request of day D
(pipelines.data.simulate.requests_for_day) is POSTed to /recommend; the simulated users respond to
the slates shown (clicks and purchases from the truth), reported through POST /feedback. The
simulated times go to RECLOOP_HOME/serving/traffic/date=D/ for `recloop ingest-served`. Prints the
counts and the realized CTR per arm; exit 1 when no request was served.
"""

from __future__ import annotations

import argparse

from pipelines.core.settings import Settings

NAME = "simulate-traffic"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--date", required=True, help="simulated day, YYYY-MM-DD")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="service base URL")
    parser.add_argument("--max-requests", type=int, help="first N requests of the day only")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--seed", type=int, default=0, help="seed of the users' responses")
    parser.add_argument("--k", type=int, default=10, help="slate size asked for")
    parser.add_argument("--deadline-s", type=float, default=600.0, help="time budget, seconds")


def run(args: argparse.Namespace, settings: Settings) -> int:
    import json

    from pipelines.loop.traffic import simulate_traffic

    counts = simulate_traffic(
        settings,
        args.date,
        base_url=args.url,
        max_requests=args.max_requests,
        concurrency=args.concurrency,
        seed=args.seed,
        k=args.k,
        deadline_s=args.deadline_s,
    )
    print(json.dumps(counts, indent=2, sort_keys=True, default=str))
    return 0 if counts["served"] else 1
