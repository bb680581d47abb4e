"""Redis Cluster online store figures (issue 18): serving reads on one Redis vs a cluster, and
the failover window when a master is killed.

    .venv/bin/python benchmarks/bench_redis_cluster.py [--reads 300] [--failovers 3]
        [--base-port 7100] [--node-timeout-ms 1500]

One day of ``bench_features``' ``demo`` world (50k events, 5k users, 2k items) is materialized
through Feast into a ``redis-server`` and into a cluster of 3 masters + 3 replicas started by
``infra/redis-cluster.sh`` (ports ``--base-port`` .. +5, files in a temporary folder), then:

- **reads**: serving's hydrate read (``serving.hydrate.read_features``: 1 user + C candidates,
  no item cache) on each, interleaved, ``--reads`` times for C = 100 and 500; p50/p99 ms;
- **failover** (``--failovers`` times): the master holding a user's row is killed (SIGKILL) while
  serving's hydrate stage (``redis_call``, 1 s budget, no breaker cooldown) reads that user and
  100 items every 10 ms; the window is from the kill to the first read that succeeds after the
  last failed one. Every successful read is checked equal to the single Redis' answer. The
  killed node is then restarted (``redis-cluster.sh start``: it rejoins as a replica).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_features import END, SIZES, pct, write_world  # noqa: E402

from pipelines.core.net import port_open  # noqa: E402
from pipelines.core.redis_server import RedisServer  # noqa: E402
from pipelines.core.settings import Settings  # noqa: E402
from pipelines.features import online  # noqa: E402
from pipelines.features import store as fs  # noqa: E402
from pipelines.features.tables import compute_features  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SERVICE = "ranker_v1"


def cluster(action: str, env: dict[str, str]) -> str:
    out = subprocess.run(["bash", str(REPO / "infra" / "redis-cluster.sh"), action], env=env,
                         capture_output=True, text=True, timeout=120, check=True)  # fmt: skip
    return out.stdout


def same(a, b) -> bool:
    return (a.user == b.user and a.missing_items == b.missing_items
            and all(list(a.items[k]) == list(b.items[k]) for k in b.items))  # fmt: skip


def read_latency(single: Settings, on_cluster: Settings, reads: int) -> None:
    from serving.hydrate import read_features

    print("| candidates | one Redis p50 / p99 ms | cluster p50 / p99 ms |\n|---|---|---|")
    for c in (100, 500):
        ids = [f"i{i}" for i in range(c)]
        times: dict[str, list[float]] = {"single": [], "cluster": []}
        for k in range(reads):
            for name, s in (("single", single), ("cluster", on_cluster)):
                t0 = time.perf_counter()
                read_features(s, SERVICE, f"u{k % 1000}", ids)
                times[name].append((time.perf_counter() - t0) * 1e3)
        cells = [f"{pct(times[n], 50):.2f} / {pct(times[n], 99):.2f}" for n in times]
        print(f"| {c} | {cells[0]} | {cells[1]} |")


def failover(single: Settings, on_cluster: Settings, env: dict, user: str) -> dict:
    """Kill the master of ``user``'s row while reading; the window and the reads."""
    from redis.crc import key_slot

    from serving.engine import Breaker
    from serving.hydrate import read_features, redis_call

    logging.getLogger("recloop.serving.hydrate").setLevel(logging.ERROR)  # a warning per read
    ids = [f"i{i}" for i in range(100)]
    ref = read_features(single, SERVICE, user, ids)
    client = online.redis_client(on_cluster)
    node = client.nodes_manager.get_node_from_slot(key_slot(online.redis_key("user_id", user)))
    pid = int(
        (Path(env["RECLOOP_HOME"]) / "redis-cluster" / str(node.port) / "redis.pid").read_text()
    )
    engine = SimpleNamespace(breaker=Breaker(cooldown_s=0.0), hydrate_pool=ThreadPoolExecutor(2),
                             config=SimpleNamespace(redis_cooldown_s=0.0))  # fmt: skip
    os.kill(pid, signal.SIGKILL)
    t_kill = time.monotonic()
    reads: list[tuple[float, bool]] = []
    wrong = 0
    while len(reads) < 20 or not all(ok for _, ok in reads[-20:]):
        got, err = redis_call(engine, 1000, read_features, on_cluster, SERVICE, user, ids)
        reads.append((time.monotonic() - t_kill, err is None))
        wrong += got is not None and not same(got, ref)
        if reads[-1][0] > 60:
            raise RuntimeError("reads did not recover within 60 s")
        time.sleep(0.01)
    engine.hydrate_pool.shutdown()
    last_fail = max((t for t, ok in reads if not ok), default=0.0)
    back = next(t for t, ok in reads if ok and t > last_fail)
    t0 = time.monotonic()
    cluster("start", env)  # the killed node rejoins, as a replica
    return {"port": node.port, "window_s": back, "failed": sum(not ok for _, ok in reads),
            "reads": len(reads), "wrong": wrong, "rejoin_s": time.monotonic() - t0}  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reads", type=int, default=300)
    ap.add_argument("--failovers", type=int, default=3)
    ap.add_argument("--base-port", type=int, default=7100)
    ap.add_argument("--node-timeout-ms", type=int, default=1500)
    args = ap.parse_args()
    if any(port_open(args.base_port + i) for i in range(6)):
        raise SystemExit(f"ports {args.base_port}..+5 in use: pick another --base-port")
    root = Path(tempfile.mkdtemp(prefix="recloop-cluster-bench-"))
    env = {**os.environ, "RECLOOP_HOME": str(root), "RECLOOP_REDIS_MAXMEMORY": "256mb",
           "RECLOOP_REDIS_CLUSTER_PORT": str(args.base_port),
           "RECLOOP_REDIS_CLUSTER_NODE_TIMEOUT_MS": str(args.node_timeout_ms)}  # fmt: skip
    with RedisServer(root) as server:
        url = cluster("start", env).split("RECLOOP_REDIS_URL=")[-1].strip()
        try:
            single = Settings.from_env(
                {"RECLOOP_HOME": str(root / "ws"), "RECLOOP_REDIS_URL": server.url}
            )
            single.ensure_dirs()
            on_cluster = dataclasses.replace(single, redis_url=url)
            write_world(single, SIZES["demo"], 1)
            compute_features(single, END)
            fs.apply_repo(single)
            for name, s in (("one Redis", single), ("cluster", on_cluster)):
                out = fs.materialize_date(s, END)
                print(f"materialize into {name}: {out['rows']} rows in {out['seconds']:.2f} s")
            read_latency(single, on_cluster, args.reads)
            print(f"\nfailover (node timeout {args.node_timeout_ms} ms)")
            for k in range(args.failovers):
                print(failover(single, on_cluster, env, f"u{k}"))
        finally:
            cluster("stop", env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
