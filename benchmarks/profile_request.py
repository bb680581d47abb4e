"""CPU cost of one ``/recommend`` through the service pipeline, in-process (no HTTP, no load
generator): where a request's time goes, stage by stage, optionally under cProfile.

    RECLOOP_HOME=<workspace with a champion> RECLOOP_REDIS_URL=redis://127.0.0.1:<port>/0 \\
        .venv/bin/python benchmarks/profile_request.py [--large-items 1000000] [--requests 300]
        [--profile 40 [--sort tottime]] [--http]

The workspace's champion serves (its features must be materialized in that Redis:
``recloop features materialize --date D``); ``--large-items N`` replaces its index by
``bench_serving.large_index`` (the real items + synthetic items, ``--index-kind`` and
``--synthetic`` as in bench_serving.py: by default the recall-gated index the daily DAG builds
over items clustered around the real ones; cached under the workspace; synthetic items get a
real item's stored features,
``bench_serving.synthetic_features``). The
first 50 known users warm the caches; the next ``--requests`` are timed. Printed: CPU ms and wall
ms per request (``time.process_time`` / ``perf_counter``), the median of each stage's
``timings_ms``, and with ``--profile N`` the N heaviest functions by cumulative time.

``--http``: the same users through HTTP instead, one request at a time on one kept-alive
connection, to a ``bench_serving.py`` server (one uvicorn worker, the same index): the server
process's CPU ms per request (user + system time from ``/proc/<pid>/stat``, its threads
included) is the whole request, HTTP and JSON included; minus the in-process figure, what the
HTTP layer costs. Not a load test: one request in flight.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def main() -> int:
    import bench_serving as bs

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--large-items", type=int, default=0, help="serve an N-item index")
    bs.add_index_args(p)
    p.add_argument("--requests", type=int, default=300, help="timed requests (default 300)")
    p.add_argument("--profile", type=int, default=0, help="print the N heaviest functions")
    p.add_argument("--sort", default="cumulative", help="cProfile order (cumulative, tottime)")
    p.add_argument("--http", action="store_true", help="through a uvicorn server, one at a time")
    args = p.parse_args()
    if args.http:
        return http_cpu(args, args.requests)

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
        bundle.index = bs.large_index(
            settings, bundle, args.large_items, args.index_kind, args.synthetic
        )
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
        pstats.Stats(profiler).sort_stats(args.sort).print_stats(args.profile)
    engine.hydrate_pool.shutdown(wait=False)
    return 0


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all its threads (``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_cpu(args: argparse.Namespace, requests: int) -> int:
    """``--http``: the server's CPU ms per request over ``requests`` sequential requests (after
    50 to warm up) of known users, k = 10, on one kept-alive connection."""
    import asyncio
    import json

    import bench_serving as bs

    from pipelines.core.net import free_port
    from pipelines.core.service_process import start_service

    port = free_port()
    cmd = bs.server_cmd(port, 1, bs.index_extra(args))
    url = f"http://127.0.0.1:{port}/health/ready"
    proc = start_service(cmd, dict(os.environ), url, 900, cwd=REPO, name="the server")
    users = bs.champion_users()[: 50 + requests]

    async def run() -> tuple[float, float, int]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        degraded = 0

        async def one(user: str) -> None:
            nonlocal degraded
            body = json.dumps({"user_id": user, "k": 10}).encode()
            status, raw = await bs._http_post(reader, writer, "/recommend", body)
            assert status == 200, (status, raw[:200])
            degraded += bool(json.loads(raw)["degraded"])

        for u in users[:50]:
            await one(u)
        degraded = 0
        cpu0, wall0 = process_cpu_s(proc.pid), time.perf_counter()
        for u in users[50:]:
            await one(u)
        cpu, wall = process_cpu_s(proc.pid) - cpu0, time.perf_counter() - wall0
        writer.close()
        return cpu, wall, degraded

    try:
        cpu, wall, degraded = asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    n = len(users) - 50
    print(f"{n} requests over HTTP: server CPU {1000 * cpu / n:.2f} ms/request, wall "
          f"{1000 * wall / n:.2f} ms/request, degraded {degraded}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
