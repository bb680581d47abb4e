"""FAISS index types at catalog scale: recall@10 against exact search, queries/s, build time.

Synthetic but clustered data, the shape of trained embeddings: ``--n`` unit item vectors of
``--dim`` dims drawn from a mixture of ``--centers`` Gaussians (noise of norm ``--spread`` with a
``j ** -decay`` spectrum, see ``make_data``); queries (user vectors) mix 1..``--max-mix`` centres
plus the same noise and are normalized. Queries that mix centres fall between clusters, away from
every item: much harder for HNSW than queries near one cluster (``--max-mix 1``). Index builds
use ``--build-threads`` threads; every search runs single-threaded, one query per call (the
serving pattern), so queries/s = 1 / latency. Besides the chosen kind, the other kinds are built
and measured at a few settings each (``--skip`` to leave some out; HNSW at 1M takes minutes).

The "chosen" configuration is what ``pipelines.retrieval.faiss_index.build_index(kind="auto")`` picks and tunes
on ``--tune-queries`` sample queries; it is then measured on the separate ``--queries`` held-out
queries. Floor: recall@10 >= 0.95 at >= 50x exact search's queries/s (exit status 1 if missed).

    .venv/bin/python benchmarks/bench_faiss.py            # 1M x 64, a few minutes
    .venv/bin/python benchmarks/bench_faiss.py --n 100000  # quick
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_data(
    n: int,
    n_queries: int,
    dim: int,
    centers: int,
    spread: float,
    decay: float,
    seed: int,
    max_mix: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """``(items (n, dim), queries (n_queries, dim))``, float32, unit norm.

    Items: a unit centre plus noise of expected norm ``spread`` whose per-direction scale falls
    as ``j ** -decay`` in a random basis (learned embeddings have a decaying spectrum; ``decay=0``
    is isotropic noise). Queries: a random mix of 1..``max_mix`` centres plus the same noise.
    """
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    scale = np.arange(1, dim + 1, dtype=np.float64) ** -decay
    scale *= spread / np.sqrt((scale**2).sum())
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0]
    mix = (scale[:, None] * basis.T).astype(np.float32)  # noise = z @ mix, z ~ N(0, I)

    def noise(m: int) -> np.ndarray:
        return rng.standard_normal((m, dim), dtype=np.float32) @ mix

    items = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 200_000):  # in chunks: keeps the temporaries small
        m = min(200_000, n - s)
        x = c[rng.integers(0, centers, m)] + noise(m)
        items[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    k = rng.integers(1, max_mix + 1, n_queries)
    w = rng.dirichlet(np.ones(max_mix), n_queries) * (np.arange(max_mix)[None, :] < k[:, None])
    mixed = c[rng.integers(0, centers, (n_queries, max_mix))]
    q = np.einsum("qj,qjd->qd", w, mixed) + noise(n_queries)
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    return items, q


SWEEPS: dict[str, list[dict]] = {  # search settings measured per kind (held-out queries)
    "hnsw": [{"efSearch": ef} for ef in (32, 64, 128, 256, 512)],
    "ivf": [{"nprobe": p} for p in (8, 16, 24, 32, 48, 64)],
    "ivffs": [{"nprobe": p, "k_factor": f} for p, f in ((16, 16), (32, 16), (48, 16), (64, 16))],
    "ivfpq": [{"nprobe": 32, "k_factor": 1}]
    + [{"nprobe": p, "k_factor": f} for p, f in ((16, 8), (32, 8), (32, 16), (64, 16))],
}


def label(kind: str, params: dict) -> str:
    """A short name of an index configuration, e.g. ``IVF4096,Flat``."""
    if kind == "hnsw":
        return f"HNSW{params['M']} efC{params['efConstruction']}"
    if kind == "ivf":
        return f"IVF{params['nlist']},Flat"
    if kind == "ivffs":
        return f"IVF{params['nlist']},PQ{params['pq_m']}x4fs+refine"
    return f"IVF{params['nlist']},PQ{params['pq_m']}+refine"


def timed_search(index, queries: np.ndarray, k: int, params=None) -> tuple[np.ndarray, float]:
    """One query per call, single-threaded: ``(labels (Q, k), queries per second)``."""
    out = np.empty((len(queries), k), dtype=np.int64)
    t = time.perf_counter()
    for i in range(len(queries)):
        _, out[i : i + 1] = index.search(queries[i : i + 1], k, params=params)
    return out, len(queries) / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="items (default 1M)")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--queries", type=int, default=1000, help="held-out measurement queries")
    ap.add_argument("--tune-queries", type=int, default=1000, help="queries build_index tunes on")
    ap.add_argument("--exact-queries", type=int, default=200, help="queries to time exact search")
    ap.add_argument("--centers", type=int, default=1000)
    ap.add_argument("--spread", type=float, default=0.8, help="noise norm relative to a centre")
    ap.add_argument("--decay", type=float, default=1.0, help="noise spectrum j**-decay")
    ap.add_argument("--max-mix", type=int, default=3, help="a query mixes 1..this many centres")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--target", type=float, default=0.95)
    ap.add_argument("--build-threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", nargs="*", default=[], choices=list(SWEEPS), help="skip kinds")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    import faiss

    from pipelines.retrieval.faiss_index import (
        IndexRecallError,
        build_index,
        get_index,
        recall_at_k,
        search_params,
    )

    k = args.k
    t0 = time.perf_counter()
    items, queries = make_data(
        args.n,
        args.queries + args.tune_queries,
        args.dim,
        args.centers,
        args.spread,
        args.decay,
        args.seed,
        args.max_mix,
    )
    tune_q, queries = queries[: args.tune_queries], queries[args.tune_queries :]
    print(f"data: {args.n} x {args.dim} items, {len(queries)} queries (+{len(tune_q)} for "
          f"tuning), {args.centers} centres, spread {args.spread}, decay {args.decay}, queries mix <= {args.max_mix}; {time.perf_counter() - t0:.1f} s")  # fmt: skip
    rows: list[tuple] = []

    def row(name: str, build_s: float, recall: float, qps: float) -> None:
        rows.append((name, build_s, recall, qps))
        print(f"  {name:<34} build {build_s:7.1f} s  recall@{k} {recall:.4f}  {qps:9.0f} q/s  "
              f"{1000 / qps:8.3f} ms/q  {qps / exact_qps:7.1f}x exact", flush=True)  # fmt: skip

    # exact: ground truth (batched, build threads) and single-query timing (1 thread)
    faiss.omp_set_num_threads(args.build_threads)
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(items)
    _, truth = flat.search(queries, k)
    faiss.omp_set_num_threads(1)
    _, exact_qps = timed_search(flat, queries[: args.exact_queries], k)
    del flat
    row("Flat (exact)", 0.0, 1.0, exact_qps)

    # the chosen configuration: build_index picks the kind and tunes it on separate queries
    faiss.omp_set_num_threads(args.build_threads)
    t = time.perf_counter()
    chosen_row = None
    try:
        chosen = build_index(items, sample_queries=tune_q, k=k, recall_target=args.target,
                             model_version="bench")  # fmt: skip
    except IndexRecallError as exc:
        print(f"build_index failed its recall check: {exc}")
        chosen = None
    chosen_build = time.perf_counter() - t
    faiss.omp_set_num_threads(1)
    if chosen is not None:
        p = chosen.params
        print(f"build_index chose {chosen.kind} {p}: recall@{k} {chosen.recall:.4f} on the "
              f"tuning queries; build {chosen.meta['build_seconds']:.1f} s + tuning "
              f"{chosen.meta['tune_seconds']:.1f} s")  # fmt: skip
        found, qps = timed_search(chosen.index, queries, k, search_params(chosen.kind, p, k))
        chosen_row = (f"CHOSEN {chosen.kind} {p}", chosen_build, recall_at_k(found, truth), qps)
        if chosen.kind in SWEEPS:  # the same index at other settings: no second build
            for s in SWEEPS[chosen.kind]:
                sp = search_params(chosen.kind, {**p, **s}, k)
                found, qps = timed_search(chosen.index, queries, k, sp)
                row(f"{label(chosen.kind, p)} {s}", chosen_build, recall_at_k(found, truth), qps)
        del chosen

    for kind, settings in SWEEPS.items():
        if kind in args.skip or (chosen_row and chosen_row[0].startswith(f"CHOSEN {kind} ")):
            continue
        faiss.omp_set_num_threads(args.build_threads)
        t = time.perf_counter()
        index, _, params = get_index(args.dim, args.n, kind=kind)
        if not index.is_trained:  # as build_index: 64 points per list, >= 25,600
            n_train = min(args.n, max(64 * params["nlist"], 25_600))
            index.train(items[np.random.default_rng(1).choice(args.n, n_train, replace=False)])
        index.add(items)
        build_s = time.perf_counter() - t
        faiss.omp_set_num_threads(1)
        for s in settings:
            found, qps = timed_search(index, queries, k, search_params(kind, {**params, **s}, k))
            row(f"{label(kind, params)} {s}", build_s, recall_at_k(found, truth), qps)
        del index

    if chosen_row is None:
        print("\nchosen: none (build_index raised IndexRecallError); floor: FAIL")
        return 1
    row(*chosen_row)
    name, _, recall, qps = chosen_row
    speedup = qps / exact_qps
    ok = recall >= args.target and speedup >= 50
    if name.startswith("CHOSEN flat"):
        print("\nchosen: exact search (small catalog); the floor applies to large ones")
        return 0
    print(f"\nchosen: {name}: recall@{k} {recall:.4f} (held-out queries) at {speedup:.0f}x exact "
          f"({1000 / qps:.3f} ms vs {1000 / exact_qps:.2f} ms per query, single thread)")  # fmt: skip
    print(f"floor (recall@{k} >= {args.target}, >= 50x exact): {'PASS' if ok else 'FAIL'}; "
          f"total {time.perf_counter() - t0:.0f} s")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
