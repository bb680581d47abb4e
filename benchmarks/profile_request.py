"""CPU cost of one ``/recommend`` through the service pipeline, in-process (no HTTP, no load
generator): where a request's time goes, stage by stage, optionally under cProfile.

    RECLOOP_HOME=<workspace with a champion> RECLOOP_REDIS_URL=redis://127.0.0.1:<port>/0 \\
        .venv/bin/python benchmarks/profile_request.py [--large-items 1000000] [--requests 300]
        [--profile 40]

The workspace's champion serves (its features must be materialized in that Redis:
``recloop features materialize --date D``); ``--large-items N`` replaces its index by
``bench_serving.large_index`` (the real items + synthetic unit vectors, HNSW, cached under the
workspace; synthetic items get a real item's stored features,
``bench_serving.synthetic_features``). The
first 50 known users warm the caches; the next ``--requests`` are timed. Printed: CPU ms and wall
ms per request (``time.process_time`` / ``perf_counter``), the median of each stage's
``timings_ms``, and with ``--profile N`` the N heaviest functions by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--large-items", type=int, default=0, help="serve an N-item HNSW index")
    p.add_argument("--requests", type=int, default=300, help="timed requests (default 300)")
    p.add_argument("--profile", type=int, default=0, help="print the N heaviest functions")
    args = p.parse_args()

    import bench_serving as bs
    import numpy as np
    import torch

    from pipelines.core.settings import Settings
    from serving.app import create_app
    from serving.bundle import load, warm_up
    from serving.config import ServingConfig
    from serving.pipeline import Request, recommend

    torch.set_num_threads(1)
    settings = Settings.from_env()
    bundle = load(settings, "champion")
    if args.large_items:
        bundle.index = bs.large_index(settings, bundle, args.large_items, "hnsw")
        bs.synthetic_features(settings, bundle.index)
    warm_up(settings, bundle)
    app = create_app(settings, ServingConfig.from_env(reload_interval_s=0), load=False)
    engine = app.state.engine
    engine.bundles.arms["champion"] = bundle
    users = [str(u) for u in bundle.users.ids[: 50 + args.requests]]
    for u in users[:50]:
        recommend(engine, Request(u, 10))
    stages: dict[str, list[float]] = {}
    degraded = 0
    profiler = cProfile.Profile()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    if args.profile:
        profiler.enable()
    for u in users[50:]:
        out = recommend(engine, Request(u, 10))
        degraded += bool(out["degraded"])
        for stage, ms in out["timings_ms"].items():
            stages.setdefault(stage, []).append(ms)
    profiler.disable()
    n = len(users) - 50
    print(
        f"{n} requests: CPU {1000 * (time.process_time() - cpu0) / n:.2f} ms/request, wall "
        f"{1000 * (time.perf_counter() - wall0) / n:.2f} ms/request, degraded {degraded}"
    )
    print("median stage ms:", {k: round(float(np.median(v)), 2) for k, v in stages.items()})
    if args.profile:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(args.profile)
    engine.hydrate_pool.shutdown(wait=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
