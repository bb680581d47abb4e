"""The closed loop's A/B scenarios at demo scale, through the real service, checked against the truth.

  RECLOOP_REDIS_URL=redis://127.0.0.1:6399/0 .venv/bin/python benchmarks/bench_loop.py \
      [--scale demo] [--warmup-days 3] [--days 2] [--requests 1500] [--home DIR]

1. warm-up: the whole loop (``pipelines.loop.closed_loop.run_loop``, full daily DAG in-process) for
   ``--warmup-days`` days from a clean workspace: logging policy, then the service, until there is
   a champion trained on the warm-up days;
2. **worse challenger**: the champion vs its ``inverted`` variant (``pipelines.loop.scenarios``: the
   model's favourites shown last) for ``--days`` days (serving + A/B only);
3. **better challenger**: the inverted variant as champion vs the original champion's retriever
   (``as_is``, both without a ranker) for ``--days`` days.

Prints one line per day (each arm's measured and true CTR, the decision, seconds) and whether each
scenario's decision was right by the truth: a promotion is right when the challenger's true CTR
is higher, a rollback when it is lower. Needs a Redis on loopback (infra/redis.sh start).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="demo")
    parser.add_argument("--warmup-days", type=int, default=3)
    parser.add_argument("--days", type=int, default=2, help="days per scenario")
    parser.add_argument("--requests", type=int, default=1500, help="requests per served day")
    parser.add_argument("--home", help="workspace (default: a temporary folder)")
    args = parser.parse_args()

    home = Path(args.home or tempfile.mkdtemp(prefix="bench-loop-")) / "home"
    os.environ["RECLOOP_HOME"] = str(home)
    os.environ["RECLOOP_SCALE"] = args.scale
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from pipelines.core.settings import Settings
    from pipelines.experiments.ab import ABConfig
    from pipelines.loop import closed_loop
    from pipelines.loop.scenarios import register_variant
    from pipelines.release import registry

    settings = Settings.from_env()
    start = dt.date(2026, 1, 1)
    common = dict(runner="inline", max_requests=args.requests, world_start=start,
                  ab_config=ABConfig.from_env(), concurrency=4)  # fmt: skip
    t0 = time.perf_counter()
    warm = closed_loop.run_loop(
        settings, closed_loop.LoopConfig(days=args.warmup_days, start=start, **common)
    )
    warm_s = time.perf_counter() - t0
    champion = registry.get_alias(settings, "champion")
    if champion is None:
        print("no champion after the warm-up: use more --warmup-days")
        return 1
    with registry.registry_lock(settings):
        if registry.get_alias(settings, "challenger"):
            registry.client(settings).delete_registered_model_alias(registry.BUNDLE, "challenger")

    results = []
    day = start + dt.timedelta(days=args.warmup_days)
    worse = register_variant(settings, champion, "inverted")
    better = register_variant(settings, champion, "as_is")
    for name, champ, chall in (("worse", champion, worse), ("better", worse, better)):
        registry.promote(settings, champ, "champion")
        registry.promote(settings, chall, "challenger")
        cfg = closed_loop.LoopConfig(days=args.days, start=day, retrain=False, **common)
        records = closed_loop.run_loop(settings, cfg)
        day += dt.timedelta(days=args.days)
        results.append({"scenario": name, "champion": champ, "challenger": chall,
                        "days": records})  # fmt: skip

    print(f"warm-up: {args.warmup_days} day(s) of the whole loop in {warm_s:.0f}s "
          f"({warm_s / args.warmup_days:.0f}s per day); champion bundle {champion}")  # fmt: skip
    print(closed_loop.format_days(warm))
    summary = []
    for res in results:
        print(f"\nscenario {res['scenario']}: champion {res['champion']} vs challenger "
              f"{res['challenger']}")  # fmt: skip
        print(closed_loop.format_days(res["days"]))
        decided = next(
            (r for r in res["days"] if (r.get("ab") or {}).get("action") in ("promote", "rollback",
                                                                              "stop")), None,
        )  # fmt: skip
        first = res["days"][0].get("served") or {}
        true_diff = None
        if "challenger" in first and "champion" in first:
            true_diff = first["challenger"]["true_ctr"] - first["champion"]["true_ctr"]
        action = decided["ab"]["action"] if decided else "continue"
        right = None
        if true_diff is not None and action in ("promote", "rollback"):
            right = (action == "promote") == (true_diff > 0)
        summary.append({
            "scenario": res["scenario"], "decision": action,
            "decided_on_day": decided["ab"].get("day") if decided else None,
            "true_ctr_diff_day1": true_diff, "right": right,
            "seconds_per_day": [r["seconds"]["total"] for r in res["days"]],
        })  # fmt: skip
    print("\n" + json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
