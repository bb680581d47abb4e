"""Retrieve-stage latency by kind of user: vocabulary users, users known only to the online store
(feature-encoded by the user tower, or cold start on code without it), brand-new ids.

    .venv/bin/python benchmarks/bench_user_tower.py [--scale tiny] [--requests 2000] [--home DIR]

1. **Workspace**: ``--scale`` simulated for 2 days and run through the daily task functions
   (validate, features → Redis, two-tower, index, ranker, register, gate), so a champion bundle
   exists; a ``redis-server`` is started by this script on a free loopback port (``--home``
   reuses a workspace built before by this script or ``bench_serving.py``; its latest features
   are re-materialized into the new Redis).
2. **Run**: the service's engine in-process (``serving.app.create_app``, champion only, no
   exploration, generous deadlines), ``serving.pipeline.recommend`` called ``--requests`` times
   one after another, users drawn round-robin from three groups: ``vocab`` (in the two-tower's
   ``users.json``), ``features`` (in ``data/users.parquet`` and the online store, not in
   ``users.json``: 50-70 % of the closed loop's requests; split into each user's ``first``
   request and ``repeat`` ones, which the service answers from its per-user cache), ``new`` (ids
   no store knows). The first ``--warmup`` requests are not counted (and reset the Redis
   breaker: the very first read pays the connection).
3. **Printed**: per group, how it was answered (the response's fallbacks) and p50/p99 ms of the
   ``retrieve`` stage and of the whole request (server side, the response's ``timings_ms``).

Run it on a quiet machine: the figures are single-request latencies on a shared CPU.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="tiny")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--home", type=Path, default=None, help="reuse (or build) this workspace")
    args = ap.parse_args()

    from bench_serving import prepare, start_redis

    tmp = Path(tempfile.mkdtemp(prefix="bench-user-tower-"))
    home = args.home or tmp / "home"
    redis_proc, url = start_redis(tmp)
    try:
        prepare(home, args.scale, url)
        return run(args)
    finally:
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace) -> int:
    import asyncio

    import numpy as np
    import pandas as pd
    import torch

    from pipelines.core import layout
    from pipelines.core.settings import Settings
    from serving.app import create_app
    from serving.config import ServingConfig
    from serving.pipeline import Request, recommend

    torch.set_num_threads(1)  # as one uvicorn worker of bench_serving.py
    settings = Settings.from_env()
    cfg = ServingConfig(
        reload_interval_s=0, seed=1, explore_rate=0.0, challenger_share=0.0, log_flush_s=3600,
        deadline_ms=5000.0, hydrate_deadline_ms=2000.0,  # a busy shared CPU must not trip Redis
    )  # fmt: skip
    app = create_app(settings, cfg, load=False)
    engine = app.state.engine
    outcome = engine.bundles.check()
    bundle = engine.bundles.get("champion")
    print(f"bundle check: {outcome}", flush=True)
    vocab = list(bundle.users.ids)
    everyone = pd.read_parquet(layout.attributes_path(settings, "users"), columns=["user_id"])
    known = set(vocab)
    featured = [u for u in everyone["user_id"].astype(str) if u not in known]
    rng = np.random.default_rng(0)
    groups = {
        "vocab": [str(u) for u in rng.permutation(vocab)],
        "features": [str(u) for u in rng.permutation(featured)],
        "new": [f"brand-new-{i}" for i in range(args.requests)],
    }
    print(
        f"users: {len(vocab)} in users.json, {len(featured)} only in users.parquet/online store",
        flush=True,
    )
    names = list(groups)
    rows = ["vocab", "features/first", "features/repeat", "new"]
    stages: dict[str, dict[str, list[float]]] = {r: collections.defaultdict(list) for r in rows}
    answered: dict[str, collections.Counter] = {r: collections.Counter() for r in rows}
    asked: set[str] = set()
    t0 = time.perf_counter()
    for i in range(args.requests + args.warmup):
        g = names[i % len(names)]
        pool = groups[g]
        user = pool[(i // len(names)) % len(pool)]
        out = recommend(engine, Request(user_id=user, k=10))
        row = g if g != "features" else f"features/{'repeat' if user in asked else 'first'}"
        asked.add(user)
        if i < args.warmup:
            engine.breaker.open_until = 0.0  # first reads pay connection set-up: not counted
            continue
        answered[row][",".join(out["fallbacks"]) or "-"] += 1
        for stage in ("retrieve", "total"):
            stages[row][stage].append(out["timings_ms"][stage])
    wall = time.perf_counter() - t0
    print(f"{args.requests} requests in {wall:.1f}s (sequential, in-process)")
    print(f"{'group':<16}{'n':>6}  {'answered as':<22}{'retrieve p50':>13}{'p99':>8}"
          f"{'total p50':>11}{'p99':>8}")  # fmt: skip
    for g in rows:
        r, t = stages[g]["retrieve"], stages[g]["total"]
        how = ", ".join(f"{k}:{v}" for k, v in answered[g].most_common())
        print(
            f"{g:<16}{len(r):>6}  {how:<22}{percentile(r, 50):>13.3f}{percentile(r, 99):>8.3f}"
            f"{percentile(t, 50):>11.3f}{percentile(t, 99):>8.3f}"
        )
    asyncio.run(asyncio.sleep(0))
    engine.hydrate_pool.shutdown(wait=False, cancel_futures=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
