"""Serving replicas behind HAProxy: throughput and latency of 1, 2, 4 replicas vs one process.

    .venv/bin/python benchmarks/bench_replicas.py [--home DIR] [--scale demo]
        [--large-items 1000000] [--rates 100,200,300] [--seconds 20] [--connections 16]
        [--replicas 1,2,4] [--replica-workers 1] [--baseline-workers 2]
        [--redis-port P] [--base-port 7500] [--index-kind auto] [--synthetic clustered]

Configs, each driven at every ``--rates`` value for ``--seconds``:

- ``direct``: one server with ``--baseline-workers`` uvicorn processes, no balancer (today's
  ``recloop serve --workers 2``): the baseline the ratios are taken against;
- ``haproxy xN`` for N in ``--replicas``: N servers with ``--replica-workers`` processes each, one
  service (one ``RECLOOP_SERVE_ID``, :func:`replica_env`) behind HAProxy
  (:mod:`pipelines.cluster.serving_replicas`: its config with readiness checks, round robin,
  retries; started and stopped by its functions), the load sent to HAProxy's port.

Every server is :mod:`bench_serving`'s (the ``recloop serve`` app, the champion's index replaced
by the ``--large-items`` index, cached in the workspace: ``--index-kind`` and ``--synthetic`` as
in :mod:`bench_serving`, by default the recall-gated index the daily DAG builds over items
clustered around the real ones) and the load is its open-loop
generator (:func:`bench_serving.load`: latency counted from when a request was due), so the
figures compare with ``bench_serving.py``'s. The workspace is built or reused as there
(``--home``); Redis is started by this script (``--redis-port``, default a free one).

Printed per config and rate: ok/requests, errors, degraded answers, achieved req/s, end-to-end
p50/p99 ms, the ratios of req/s and p99 to ``direct`` at the same rate, the load generator's own
CPU ms a request, and the load average
(1 min) before and after. Load generator, HAProxy, servers and Redis share the machine's
cores: upper bounds on latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_serving as bs  # noqa: E402  (the benchmarks folder is not a package)

READY_TIMEOUT_S = 900.0
"""How long one server may take to answer ``/health/ready`` (it loads the large index)."""


def start_servers(ports: list[int], workers: int, env: dict, extra: list[str],
                  logs: Path) -> list[subprocess.Popen]:  # fmt: skip
    """One benchmark server per port (``workers`` uvicorn processes each), started in turn,
    each returned once ready; on failure the ones started are stopped."""
    from pipelines.core.service_process import start_service

    procs: list[subprocess.Popen] = []
    try:
        for i, port in enumerate(ports):
            url = f"http://127.0.0.1:{port}/health/ready"
            procs.append(start_service(bs.server_cmd(port, workers, extra), env, url,
                                       READY_TIMEOUT_S, logs / f"server-{port}.log",
                                       cwd=bs.REPO, name=f"server {i}"))  # fmt: skip
    except BaseException:
        stop_servers(procs)
        raise
    return procs


def stop_servers(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each server (uvicorn stops its workers), SIGKILL after 30 s."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def drive(port: int, config: str, args: argparse.Namespace, users: list[str]) -> list[dict]:
    """Every ``--rates`` value against ``port``; one result dict per rate."""
    out = []
    for rate in args.rates:
        before = os.getloadavg()[0]
        r = asyncio.run(bs.load(port, users, rate, args.seconds, args.connections))
        r.update(config=config, rate=rate, load_1min=[round(before, 2),
                                                      round(os.getloadavg()[0], 2)])  # fmt: skip
        r.pop("stages_p50_ms")
        r.pop("stages_p99_ms")
        print(json.dumps(r), flush=True)
        out.append(r)
    return out


def run_direct(args: argparse.Namespace, env: dict, extra: list[str], users: list[str],
               logs: Path) -> list[dict]:  # fmt: skip
    """The baseline: one server with ``--baseline-workers`` processes, no balancer."""
    port = args.base_port + 10
    procs = start_servers([port], args.baseline_workers, env, extra, logs)
    try:
        return drive(port, f"direct 1x{args.baseline_workers}w", args, users)
    finally:
        stop_servers(procs)


def run_haproxy(n: int, args: argparse.Namespace, env: dict, extra: list[str],
                users: list[str], logs: Path) -> list[dict]:  # fmt: skip
    """``n`` servers of one service behind HAProxy, the load sent to HAProxy."""
    from pipelines.cluster.serving_replicas import (
        Layout,
        replica_env,
        start_haproxy,
        stop_haproxy,
        wait_status,
    )

    layout = Layout(front_port=args.base_port,
                    ports=tuple(args.base_port + 1 + i for i in range(n)),
                    folder=logs / f"haproxy-x{n}")  # fmt: skip
    procs = start_servers(list(layout.ports), args.replica_workers,
                          replica_env(env, "bench-replicas"), extra, logs)  # fmt: skip
    try:
        start_haproxy(layout)
        try:
            for i in range(n):
                wait_status(layout, f"r{i}", "UP")
            return drive(layout.front_port, f"haproxy x{n} ({args.replica_workers}w each)",
                         args, users)  # fmt: skip
        finally:
            stop_haproxy(layout)
    finally:
        stop_servers(procs)


def table(results: list[dict]) -> str:
    """The results as a Markdown table, ratios against the ``direct`` config at the same rate."""
    base = {r["rate"]: r for r in results if r["config"].startswith("direct")}
    lines = ["| config | rate | ok/requests | errors | degraded | req/s | p50 ms | p99 ms | "
             "req/s vs direct | p99 vs direct | client CPU ms/request | load 1 min before/after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in results:
        b = base.get(r["rate"])
        rps_ratio = f"{r['throughput_rps'] / b['throughput_rps']:.2f}" if b else "-"
        p99_ratio = f"{r['e2e_p99_ms'] / b['e2e_p99_ms']:.2f}" if b else "-"
        lines.append(f"| {r['config']} | {r['rate']:g} | {r['ok']}/{r['requests']} | "
                     f"{sum(r['errors'].values())} | {r['degraded']} | {r['throughput_rps']} | "
                     f"{r['e2e_p50_ms']} | "
                     f"{r['e2e_p99_ms']} | {rps_ratio} | {p99_ratio} | "
                     f"{r.get('client_cpu_ms', '-')} | "
                     f"{r['load_1min'][0]}/{r['load_1min'][1]} |")  # fmt: skip
    return "\n".join(lines)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", default="demo", choices=("tiny", "demo"))
    p.add_argument("--home", type=Path, help="workspace to build or reuse (default: a temp dir)")
    p.add_argument("--large-items", type=int, default=1_000_000, help="items in the index")
    p.add_argument("--rates", default="100,200,300", help="requests per second, comma-separated")
    p.add_argument("--seconds", type=float, default=20.0, help="seconds per rate")
    p.add_argument("--connections", type=int, default=16, help="kept-alive client connections")
    p.add_argument("--replicas", default="1,2,4", help="replica counts behind HAProxy")
    p.add_argument("--replica-workers", type=int, default=1, help="uvicorn workers per replica")
    p.add_argument(
        "--baseline-workers",
        type=int,
        default=2,
        help="uvicorn workers of the direct (no HAProxy) baseline; 0 = no baseline",
    )
    p.add_argument("--redis-port", type=int, default=None, help="default: a free port")
    bs.add_index_args(p)
    p.add_argument(
        "--base-port",
        type=int,
        default=7500,
        help="HAProxy's port; replicas on the next ones, the baseline on +10",
    )
    args = p.parse_args()
    args.rates = [float(x) for x in args.rates.split(",")]
    args.replicas = [int(x) for x in args.replicas.split(",") if x]
    return args


def main() -> int:
    args = parse_args()
    logs = Path(tempfile.mkdtemp(prefix="recloop-bench-replicas-logs-"))
    with bs.workspace(args.home, args.scale, args.redis_port) as env:
        extra = bs.index_extra(args)
        users = bs.champion_users()
        results = []
        if args.baseline_workers:
            results += run_direct(args, env, extra, users, logs)
        for n in args.replicas:
            results += run_haproxy(n, args, env, extra, users, logs)
    print(f"\n{args.large_items} items, {args.seconds:g} s per rate, "
          f"{args.connections} connections (server logs: {logs})\n")  # fmt: skip
    print(table(results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
