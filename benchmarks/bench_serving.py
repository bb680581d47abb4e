"""Serving load test: the real service under uvicorn on loopback, an async open-loop load generator.

    .venv/bin/python benchmarks/bench_serving.py [--scale demo] [--rate 100] [--seconds 20]
        [--large-items 1000000] [--home DIR] [--item-cache-ttl S] [--workers 2]

1. **Workspace**: ``--scale`` (tiny/demo) simulated for 2 days and run through the daily task
   functions (validate, features → Redis, two-tower, index, ranker, register, gate), so a
   champion bundle exists; a ``redis-server`` is started by this script on a free loopback port
   (``--home`` reuses a workspace built before; its latest features are re-materialized).
2. **Runs**, each a fresh ``uvicorn`` server (``--workers`` processes, default 2 = the cores;
   torch one thread each) serving the champion:
   ``index`` = the bundle's own index (Flat below 50k items); with ``--large-items N`` also the
   champion with its index replaced by an N-item index (the real items + synthetic items,
   ``--synthetic`` clustered around the real ones by default; ``--index-kind`` auto by default:
   built as the daily DAG builds one and held to its recall gate, see :data:`INDEX_KINDS`;
   built once and cached under the workspace), then the same N items with exact search (Flat)
   for comparison. Synthetic items get the online features of the first real
   item (:func:`synthetic_features`: its Redis hash copied), so they hydrate and rank like real
   ones.
3. **Load**: requests sent at a steady ``--rate`` per second for ``--seconds`` (open loop: a
   request is due on schedule whether or not earlier ones finished, waits for one of
   ``--connections`` kept-alive connections of a minimal asyncio HTTP/1.1 client, and its
   latency counts from when it was due), users drawn from the bundle's known users (90 %) and
   new ids (10 %), k=10, 500 candidates. Printed: requests, errors (non-200), degraded answers,
   throughput, end-to-end p50/p99 ms (client side, over loopback) and each stage's p50/p99 ms
   (server side, from the response's ``timings_ms``), the client's own CPU ms a request
   (``client_cpu_ms``) and the machine's load average (1 min) before and after each run.

The server's ``ServingConfig`` comes from the environment (``RECLOOP_SERVE_*``) with the reload
check off; ``--item-cache-ttl 0`` turns the item-feature cache off (every candidate read from
Redis on every request), to compare. The load generator runs on the same 2 cores as the server
and Redis: figures are conservative.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STAGES = ("route", "retrieve", "hydrate", "rank", "rerank", "log", "total")


def prepare(home: Path, scale: str, redis_url: str) -> None:
    """A workspace with a champion bundle (built once), features materialized into Redis."""
    os.environ.update({"RECLOOP_HOME": str(home), "RECLOOP_REDIS_URL": redis_url,
                       "RECLOOP_SCALE": scale})  # fmt: skip
    os.environ.pop("RECLOOP_MLFLOW_URI", None)
    from pipelines.core import layout
    from pipelines.core.settings import Settings
    from pipelines.core.validated import validated_dates
    from pipelines.data.simulate import simulate
    from pipelines.features.store import apply_repo, materialize_date
    from pipelines.orchestration import tasks
    from pipelines.release import registry

    settings = Settings.from_env()
    settings.ensure_dirs()
    if layout.mlflow_db_path(settings).exists() and registry.get_alias(settings, "champion"):
        last = validated_dates(settings)[-1]
        apply_repo(settings)
        materialize_date(settings, last, force=True)
        print(f"workspace {home}: champion {registry.get_alias(settings, 'champion')}", flush=True)
        return
    t0 = time.perf_counter()
    days = ["2026-01-01", "2026-01-02"]
    simulate(settings, len(days), scale)
    for ds in days:
        tasks.validate(ds)
        tasks.features(ds)
        tasks.train_model(ds, "two_tower")
        tasks.build_index(ds)
        tasks.train_ranker(ds)
        tasks.register(ds)
    tasks.gate(days[-1])
    print(f"workspace {home} built in {time.perf_counter() - t0:.0f}s: champion "
          f"{registry.get_alias(settings, 'champion')}", flush=True)  # fmt: skip


SYNTHETIC = ("uniform", "clustered")
"""How :func:`large_vectors` draws the synthetic items: ``clustered`` (each a real item's vector
plus noise, the shape ``bench_faiss.py`` gives trained embeddings; the default) or ``uniform``
(isotropic unit vectors: no structure, the hardest case for an ANN index)."""
INDEX_KINDS = ("auto", "ivf", "hnsw", "flat")
"""The ``--large-items`` index: ``auto`` (the default) is built as the daily DAG builds one and
passes its recall gate (at 1M items the fast-scan IVF ``ivffs``, ``nprobe`` and the re-ranked
candidates tuned to recall@10 >= 0.96 on the bundle's user vectors); ``ivf`` is IVF-Flat held to
the same gate (the DAG's choice before the seventeenth session); ``hnsw`` (M=32, searched at
efSearch = k) is not recall-checked and finds about 0.57-0.59 of the exact top 10 at 1M uniform
items (benchmarks/README.md, sixteenth session): faster, but below the gate the service would
be held to; ``flat`` is exact search."""


def add_index_args(p: argparse.ArgumentParser) -> None:
    """``--index-kind`` (:data:`INDEX_KINDS`) and ``--synthetic`` (:data:`SYNTHETIC`) on ``p``."""
    p.add_argument("--index-kind", default="auto", choices=INDEX_KINDS,
                   help="the --large-items index: auto = recall-gated as the DAG builds it "
                        "(default); ivf = IVF-Flat, recall-gated; hnsw = not recall-checked; "
                        "flat = exact")  # fmt: skip
    p.add_argument("--synthetic", default="clustered", choices=SYNTHETIC,
                   help="synthetic items: clustered around real items (default) or isotropic "
                        "unit vectors (uniform)")  # fmt: skip


def index_extra(args: argparse.Namespace, kind: str | None = None) -> list[str]:
    """The benchmark server's arguments for ``args``' large index, of ``kind`` when given (else
    ``args.index_kind``); empty without ``--large-items``."""
    if not args.large_items:
        return []
    return ["--large-items", str(args.large_items), "--index-kind", kind or args.index_kind,
            "--synthetic", args.synthetic]  # fmt: skip


def large_vectors(bundle, n_items: int, synthetic: str):
    """``(vectors (n_items, D) float32, ids (n_items,) str)``: the bundle's two-tower item vectors
    and ids, then synthetic unit vectors (seeded) ``syn<i>`` up to ``n_items``: isotropic
    (``uniform``) or ``clustered``: a random real item's vector plus noise of norm 0.8 times its
    own whose scale falls as ``j ** -1`` over the directions of a random basis (``bench_faiss.py``'s
    model: ``--spread 0.8 --decay 1``), normalized."""
    import numpy as np

    real = bundle.two_tower.item_embeddings()
    ids_real = np.asarray(bundle.items.ids, dtype=str)
    rng = np.random.default_rng(0)
    m, dim = n_items - len(real), real.shape[1]
    extra = rng.standard_normal((m, dim)).astype(np.float32)
    if synthetic == "clustered":
        scale = np.arange(1, dim + 1, dtype=np.float64) ** -1.0
        scale *= 0.8 / np.sqrt((scale**2).sum())
        basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
        mix = (scale[:, None] * basis.T).astype(np.float32)
        centre = real[rng.integers(0, len(real), m)]
        extra = centre + np.linalg.norm(centre, axis=1, keepdims=True) * (extra @ mix)
    elif synthetic != "uniform":
        raise ValueError(f"synthetic must be one of {SYNTHETIC}, got {synthetic!r}")
    extra /= np.linalg.norm(extra, axis=1, keepdims=True)
    vectors = np.concatenate([real, extra]).astype(np.float32)
    ids = np.concatenate([ids_real, np.char.add("syn", np.arange(m).astype(str))])
    return vectors, ids


def large_index(settings, bundle, n_items: int, kind: str, synthetic: str):
    """The bundle's items + synthetic unit vectors up to ``n_items`` (:func:`large_vectors`,
    ``synthetic`` uniform or clustered), as an index of ``kind``, cached under
    ``RECLOOP_HOME/bench/`` but ``flat``: ``hnsw`` (M=32, efSearch 128, searched at
    ``max(128, k)``), ``flat`` (exact), ``auto`` as the daily DAG builds one
    (:func:`pipelines.retrieval.faiss_index.build_index`: at 1M items the fast-scan IVF, 4096
    lists, tuned to recall@10 >= 0.95 + 0.01 on the bundle's user vectors) or ``ivf``
    (IVF-Flat, built and gated the same way). A cached ``auto`` index of another kind than
    :func:`~pipelines.retrieval.faiss_index.choose_kind` now picks is rebuilt."""
    from pipelines.core import layout
    from pipelines.retrieval.faiss_index import (
        ItemIndex,
        build_index,
        choose_kind,
        get_index,
        index_dir,
    )

    version = f"synthetic-{n_items}-{kind}" + ("" if synthetic == "uniform" else f"-{synthetic}")
    root = layout.bench_dir(settings)
    if index_dir(root, version).exists():
        cached = ItemIndex.load(index_dir(root, version))
        if kind != "auto" or cached.kind == choose_kind(n_items):
            return cached
    vectors, ids = large_vectors(bundle, n_items, synthetic)
    t0 = time.perf_counter()
    if kind in ("auto", "ivf"):
        out = build_index(vectors, ids, sample_queries=bundle.user_vecs, k=10, kind=kind,
                          model_version=version, seed=settings.seed)  # fmt: skip
        out.save(root)
        print(f"built {out.kind} {out.params} over {len(vectors)} items in "
              f"{time.perf_counter() - t0:.0f}s, recall@10 {out.recall}", flush=True)  # fmt: skip
        return out
    index, kind, params = get_index(vectors.shape[1], len(vectors), kind=kind)
    if kind == "hnsw":
        params["efSearch"] = 128
    index.add(vectors)
    meta = {"kind": kind, "params": params, "recall": None, "model_version": version,
            "n_items": len(vectors), "dim": int(vectors.shape[1]), "ids": "str",
            "build_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    out = ItemIndex(index, ids, meta)
    if kind != "flat":
        out.save(root)
    print(f"built {kind} index over {len(vectors)} items in {meta['build_seconds']}s", flush=True)
    return out


def synthetic_features(settings, index, batch: int = 10_000) -> int:
    """Give every synthetic item of a :func:`large_index` (ids ``syn<i>``) the online features
    of the index's first real item: its Feast Redis hash copied (``DUMP`` once, pipelined
    ``RESTORE ... REPLACE``), so a request over synthetic candidates hydrates and ranks as over
    real ones instead of answering "degraded". Returns the number of keys written (0 when the
    first synthetic item already has a row, or the template has none)."""
    from pipelines.features.online import redis_key
    from pipelines.features.redis_client import make_client

    ids = [str(i) for i in index.item_ids]
    syn = [i for i in ids if i.startswith("syn")]
    client = make_client(settings.redis_url, timeout_s=30.0)
    template = redis_key("item_id", ids[0])
    payload = client.dump(template)
    if not syn or payload is None or client.exists(redis_key("item_id", syn[0])):
        return 0
    t0 = time.perf_counter()
    for start in range(0, len(syn), batch):
        pipe = client.pipeline(transaction=False)
        for i in syn[start : start + batch]:
            pipe.restore(redis_key("item_id", i), 0, payload, replace=True)
        pipe.execute()
    print(f"features of {len(syn)} synthetic items written in {time.perf_counter() - t0:.0f}s",
          flush=True)  # fmt: skip
    return len(syn)


def bench_app():
    """The server app of one worker: the champion, its index replaced when
    ``BENCH_LARGE_ITEMS`` is set (``BENCH_INDEX_KIND``, :data:`INDEX_KINDS`)."""
    import torch

    from pipelines.core.settings import Settings
    from serving.app import create_app
    from serving.config import ServingConfig

    torch.set_num_threads(1)
    settings = Settings.from_env()
    cfg = ServingConfig.from_env(reload_interval_s=0, max_in_flight=64)
    app = create_app(settings, cfg, load=False)
    manager = app.state.engine.bundles
    print("bundle check:", manager.check(), flush=True)
    n = int(os.environ.get("BENCH_LARGE_ITEMS") or 0)
    if n:
        champion = manager.get("champion")
        champion.index = large_index(settings, champion, n, os.environ["BENCH_INDEX_KIND"],
                                     os.environ["BENCH_SYNTHETIC"])  # fmt: skip
    return app


def serve(args: argparse.Namespace) -> None:
    """The server: ``--workers`` uvicorn processes of :func:`bench_app` (a large index is
    built once here first, then loaded from its cache by each worker)."""
    import uvicorn

    os.environ["BENCH_LARGE_ITEMS"] = str(args.large_items or 0)
    os.environ["BENCH_INDEX_KIND"] = args.index_kind
    os.environ["BENCH_SYNTHETIC"] = args.synthetic
    if args.large_items and args.index_kind != "flat":
        from pipelines.core.settings import Settings
        from serving.bundle import load as load_bundle

        settings = Settings.from_env()
        index = large_index(settings, load_bundle(settings, "champion"), args.large_items,
                            args.index_kind, args.synthetic)  # fmt: skip
        synthetic_features(settings, index)
    uvicorn.run(
        "bench_serving:bench_app", factory=True, app_dir=str(Path(__file__).parent),
        host="127.0.0.1", port=args.port, workers=args.workers, log_level="warning",
        access_log=False,
    )  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


async def _http_post(reader, writer, path: str, body: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 POST on a kept-alive connection; ``(status, body)``."""
    writer.write(
        b"POST %s HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


async def load(port: int, users: list[str], rate: float, seconds: float, connections: int) -> dict:
    """Open-loop load: request ``i`` is due at ``start + i / rate``; it waits for a free
    kept-alive connection (of ``connections``) and its latency counts from when it was due,
    so a slow server shows up as latency, not as a slower send rate."""
    import numpy as np

    rng = np.random.default_rng(0)
    n = int(rate * seconds)
    lat: list[float] = []
    at: list[float] = []  # when each answered request was due (perf_counter seconds)
    stages: dict[str, list[float]] = {s: [] for s in STAGES}
    errors: dict[str, int] = {}
    degraded = 0
    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))

    async def one(user: str, due: float) -> None:
        nonlocal degraded
        body = json.dumps({"user_id": user, "k": 10}).encode()
        reader, writer = await pool.get()
        try:
            status, raw = await _http_post(reader, writer, "/recommend", body)
        except (OSError, asyncio.IncompleteReadError) as exc:
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            writer.close()
            pool.put_nowait(await asyncio.open_connection("127.0.0.1", port))
            return
        pool.put_nowait((reader, writer))
        if status != 200:
            errors[str(status)] = errors.get(str(status), 0) + 1
            return
        lat.append((time.perf_counter() - due) * 1e3)
        at.append(due)
        out = json.loads(raw)
        degraded += bool(out["degraded"])
        for s in STAGES:
            stages[s].append(out["timings_ms"].get(s, 0.0))

    for i in range(50):  # warm-up, not counted
        await one(users[i % len(users)], time.perf_counter())
    lat.clear()
    at.clear()
    degraded = 0
    for v in stages.values():
        v.clear()
    tasks = []
    gc.collect()
    gc.freeze()  # the load generator's own full collections paused its event loop 0.1-0.3 s
    gc.disable()  # late in a 30 s run, counted as the server's latency (benchmarks/README.md)
    start, cpu0 = time.perf_counter(), time.process_time()
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        user = users[rng.integers(len(users))] if rng.random() < 0.9 else f"new-{i}"
        tasks.append(asyncio.create_task(one(user, due)))
    await asyncio.gather(*tasks)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    gc.enable()
    gc.unfreeze()
    while not pool.empty():
        pool.get_nowait()[1].close()
    return {
        "requests": n,
        "ok": len(lat),
        "errors": errors,
        "degraded": degraded,
        "throughput_rps": round(len(lat) / wall, 1),
        "client_cpu_ms": round(1e3 * cpu / max(n, 1), 3),
        "e2e_p50_ms": round(percentile(lat, 50), 2),
        "e2e_p99_ms": round(percentile(lat, 99), 2),
        "stages_p50_ms": {s: round(percentile(v, 50), 2) for s, v in stages.items()},
        "stages_p99_ms": {s: round(percentile(v, 99), 2) for s, v in stages.items()},
        "p99_ms_by_window": p99_by_window(np.asarray(at) - start, np.asarray(lat)),
    }


def p99_by_window(due_s, lat_ms, window_s: float = 5.0) -> list[float]:
    """The p99 latency (ms) of the requests due in each ``window_s`` of a run (``due_s``:
    seconds from its start): where in the run the tail is."""
    import numpy as np

    if len(due_s) == 0:
        return []
    w = (np.asarray(due_s) // window_s).astype(int)
    return [round(float(np.percentile(lat_ms[w == i], 99)), 1) if (w == i).any() else 0.0
            for i in range(int(w.max()) + 1)]  # fmt: skip


def server_cmd(port: int, workers: int, extra: list[str]) -> list[str]:
    """The command line of one benchmark server (:func:`serve`) on ``port``; ``extra`` e.g.
    ``["--large-items", "1000000"]``."""
    return [sys.executable, __file__, "--serve", "--port", str(port),
            "--workers", str(workers), *extra]  # fmt: skip


def champion_users() -> list[str]:
    """The champion's known user ids (its two-tower vocabulary); settings from the environment."""
    from pipelines.core.settings import Settings
    from pipelines.core.vocab import Vocab
    from pipelines.release import registry

    settings = Settings.from_env()
    tt = Path(registry.load_bundle(settings, "champion")["paths"]["two_tower"])
    return Vocab.load(tt / "users.json").ids


def run_case(args: argparse.Namespace, env: dict, label: str, extra: list[str]) -> dict:
    from pipelines.core.net import free_port
    from pipelines.core.service_process import start_service

    port = free_port()
    load_before = os.getloadavg()[0]
    cmd = server_cmd(port, args.workers, extra)
    ready_url = f"http://127.0.0.1:{port}/health/ready"  # the server's output: this console
    proc = start_service(cmd, env, ready_url, 900, cwd=REPO, name=f"{label}: the server")
    try:
        users = champion_users()
        out = asyncio.run(load(port, users, args.rate, args.seconds, args.connections))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    out["case"] = label
    out["load_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    print(json.dumps(out), flush=True)
    return out


@contextlib.contextmanager
def workspace(home: Path | None, scale: str, redis_port: int | None = None) -> Iterator[dict]:
    """A ``redis-server`` (``redis_port``, default a free one) and a prepared workspace
    (:func:`prepare`; ``home`` or a temporary one); yields the servers' environment. On exit
    Redis is stopped and a temporary workspace removed."""
    from pipelines.core.redis_server import RedisServer

    temp = home is None
    home = home or Path(tempfile.mkdtemp(prefix="recloop-bench-serving-")) / "home"
    home.mkdir(parents=True, exist_ok=True)
    redis_server = RedisServer(home.parent, port=redis_port)
    redis_server.start()
    try:
        prepare(home, scale, redis_server.url)
        yield {**os.environ, "RECLOOP_HOME": str(home), "RECLOOP_REDIS_URL": redis_server.url}
    finally:
        redis_server.stop()
        if temp:
            shutil.rmtree(home.parent, ignore_errors=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", default="demo", choices=("tiny", "demo"))
    p.add_argument("--home", type=Path, help="workspace to build or reuse (default: a temp dir)")
    p.add_argument("--rate", type=float, default=100.0, help="requests per second")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--connections", type=int, default=16, help="kept-alive client connections")
    p.add_argument("--large-items", type=int, default=0, help="also run with an N-item index")
    p.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    p.add_argument("--item-cache-ttl", type=float, default=None,
                   help="the server's item-feature cache TTL in seconds (0 = off; default: "
                        "the service's default)")  # fmt: skip
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    add_index_args(p)
    args = p.parse_args()
    if args.serve:
        serve(args)
        return 0
    with workspace(args.home, args.scale) as env:
        if args.item_cache_ttl is not None:
            env["RECLOOP_SERVE_ITEM_CACHE_TTL_S"] = str(args.item_cache_ttl)
        results = [run_case(args, env, f"{args.scale}: bundle index", [])]
        if args.large_items:
            n = f"{args.large_items} {args.synthetic} items"
            results.append(run_case(args, env, f"{n}: {args.index_kind}", index_extra(args)))
            if args.index_kind != "flat":
                results.append(run_case(args, env, f"{n}: flat (exact)", index_extra(args, "flat")))
        print("\ncase | ok/requests | errors | degraded | rps | p50 | p99 | "
              "stage p50/p99 ms | load 1 min before/after")  # fmt: skip
        for r in results:
            st = " ".join(f"{s}={r['stages_p50_ms'][s]}/{r['stages_p99_ms'][s]}" for s in STAGES)
            print(f"{r['case']} | {r['ok']}/{r['requests']} | {r['errors']} | "
                  f"{r['degraded']} | {r['throughput_rps']} | {r['e2e_p50_ms']} | "
                  f"{r['e2e_p99_ms']} | {st} | {r['load_1min'][0]}/{r['load_1min'][1]}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
