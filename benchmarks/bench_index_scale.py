"""The item index beyond one machine's memory (issue 19): exact vs in-memory IVF / HNSW vs IVF with
on-disk inverted lists vs IndexShards, side by side at one catalog size.

Data: ``bench_faiss.make_data`` (clustered unit vectors, queries mixing 1..3 centres), ``--n``
items x ``--dim`` dims, ``--tune-queries`` queries the builders tune on (recall target 0.95, the
DAG's gate) and ``--queries`` held-out queries every variant is measured on. Each variant runs
in its own process (``nice``-able; peak RSS is per process): build (``build_index`` with its
kind, or the shards below), save to ``--workdir``, drop it, then load it back from disk as the
serving path does and search. Columns:

- ``recall@10``: held-out queries against exact inner-product search;
- ``batch q/s``: all held-out queries in one call, ``--threads`` threads; ``1-query q/s``: one
  query per call, one thread (the serving pattern);
- ``build s``: train + add (+ merge to disk), tuning aside; ``build peak``: the build process's
  peak RSS (the input vectors, ``n * dim * 4`` bytes, included);
- ``load anon`` / ``load file``: anonymous / file-backed RSS the loaded index adds (anonymous
  memory cannot be dropped; file pages of an mmapped ``.ivfdata`` can: the page cache), after
  the searches; ``files``: bytes on disk.

``shards``: ``--shards`` IVF-Flat sub-indexes, each over a contiguous slice of item ids, sharing
one trained coarse quantizer, saved as ``shard-<i>.faiss`` files, loaded into
``faiss.IndexShards`` (threaded) at the in-memory IVF's tuned ``nprobe``.

    nice .venv/bin/python benchmarks/bench_index_scale.py --n 100000
    nice .venv/bin/python benchmarks/bench_index_scale.py --n 1000000 --skip hnsw
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

VARIANTS = ("exact", "ivf", "hnsw", "ivf_ondisk", "shards")


def rss() -> dict[str, int]:
    """``{"anon": bytes, "file": bytes}`` resident now (``/proc/self/status``)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            out[key[3:].lower()] = int(val.split()[0]) * 1024
    return out


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _build_shards(items: np.ndarray, nlist: int, n_shards: int, out: Path, seed: int) -> None:
    """``n_shards`` IVF-Flat files over contiguous id slices, one trained quantizer."""
    import faiss

    from pipelines.retrieval.faiss_index import get_index

    template, _, _ = get_index(items.shape[1], len(items), kind="ivf", params={"nlist": nlist})
    rng = np.random.default_rng(seed)
    n_train = min(len(items), max(64 * nlist, 25_600))
    template.train(items[np.sort(rng.choice(len(items), n_train, replace=False))])
    out.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, len(items), n_shards + 1).astype(int)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        shard = faiss.clone_index(template)
        shard.add_with_ids(items[a:b], np.arange(a, b, dtype=np.int64))
        faiss.write_index(shard, str(out / f"shard-{i:03d}.faiss"))


def _load_shards(folder: Path, dim: int, nprobe: int) -> Any:
    import faiss

    shards = faiss.IndexShards(dim, True, False)  # threaded, ids as stored (global)
    keep = []
    for f in sorted(folder.glob("shard-*.faiss")):
        sub = faiss.read_index(str(f))
        faiss.extract_index_ivf(sub).nprobe = nprobe
        shards.add_shard(sub)
        keep.append(sub)
    shards.referenced_objects = keep
    return shards


def _search_stats(search, queries: np.ndarray, truth: np.ndarray, threads: int) -> dict:
    """recall@10, batch and one-query-per-call queries/s of ``search(q, k) -> labels``."""
    import faiss

    from pipelines.retrieval.faiss_index import recall_at_k

    faiss.omp_set_num_threads(threads)
    search(queries[:10], 10)  # warm-up
    t = time.perf_counter()
    found = search(queries, 10)
    batch_qps = len(queries) / (time.perf_counter() - t)
    faiss.omp_set_num_threads(1)
    n1 = min(len(queries), 300)
    t = time.perf_counter()
    for i in range(n1):
        search(queries[i : i + 1], 10)
    single_qps = n1 / (time.perf_counter() - t)
    faiss.omp_set_num_threads(threads)
    return {"recall": recall_at_k(found, truth), "batch_qps": batch_qps, "single_qps": single_qps}


def build_variant(variant: str, work: Path, args: dict, nprobe: int, result: Any) -> None:
    """Child process: build and save one variant; puts its build figures on ``result``."""
    import faiss

    from pipelines.retrieval.faiss_index import build_index

    faiss.omp_set_num_threads(args["threads"])
    items, tune_q = np.load(work / "items.npy"), np.load(work / "tune_q.npy")
    out: dict[str, Any] = {"variant": variant}
    t0 = time.perf_counter()
    folder = work / variant
    if variant == "shards":
        _build_shards(items, args["nlist"], args["shards"], folder, args["seed"])
        out["params"] = {"nlist": args["nlist"], "nprobe": nprobe, "shards": args["shards"]}
    else:
        kind = "flat" if variant == "exact" else variant
        idx = build_index(
            items, sample_queries=tune_q, kind=kind, recall_target=0.95, model_version=variant,
            seed=args["seed"], workdir=work, params={"nlist": args["nlist"]} if "ivf" in kind else None,
        )  # fmt: skip
        out["params"], out["tune_s"] = idx.params, idx.meta["tune_seconds"]
        folder = idx.save(work)
    out["build_s"] = time.perf_counter() - t0 - out.get("tune_s", 0.0)
    out["build_peak"] = peak_rss()
    out["files"] = folder_bytes(folder)
    out["folder"] = str(folder)
    result.put(out)


def search_variant(built: dict, work: Path, args: dict, result: Any) -> None:
    """Fresh child process: load the saved variant (the serving path) and search it."""
    import faiss

    from pipelines.retrieval.faiss_index import ItemIndex

    faiss.omp_set_num_threads(args["threads"])
    held, truth = np.load(work / "held_q.npy"), np.load(work / "truth.npy")
    before = rss()
    t = time.perf_counter()
    folder = Path(built["folder"])
    if built["variant"] == "shards":
        index = _load_shards(folder, held.shape[1], built["params"]["nprobe"])

        def search(q, k):
            return index.search(q, k)[1]
    else:
        index = ItemIndex.load(folder)

        def search(q, k):
            return index.search(q, k)[0]

    out = {"load_s": time.perf_counter() - t}
    out |= _search_stats(search, held, truth, args["threads"])
    after = rss()
    out["load_anon"] = after["anon"] - before["anon"]
    out["load_file"] = after["file"] - before["file"]
    out["serve_peak"] = peak_rss()
    result.put(out)


def _in_child(ctx: Any, target: Any, *args: Any) -> dict:
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    out = q.get()
    p.join()
    return out


def prepare(args: argparse.Namespace, work: Path) -> None:
    import faiss
    from bench_faiss import make_data

    items, q = make_data(args.n, args.tune_queries + args.queries, args.dim, args.centers,
                         0.8, 1.0, args.seed)  # fmt: skip
    exact = faiss.IndexFlatIP(args.dim)
    exact.add(items)
    held = q[args.tune_queries :]
    _, truth = exact.search(held, 10)
    np.save(work / "items.npy", items)
    np.save(work / "tune_q.npy", q[: args.tune_queries])
    np.save(work / "held_q.npy", held)
    np.save(work / "truth.npy", truth)


def fmt_row(r: dict, base: dict) -> str:
    mb = 2**20
    return (
        f"| {r['variant']} | {r['params']} | {r['recall']:.3f} | {r['batch_qps']:,.0f} "
        f"({r['batch_qps'] / base['batch_qps']:.1f}x) | {r['single_qps']:,.0f} "
        f"({r['single_qps'] / base['single_qps']:.1f}x) | {r['build_s']:.1f} | "
        f"{r['build_peak'] / mb:,.0f} MB | {r['load_anon'] / mb:,.1f} MB | "
        f"{r['load_file'] / mb:,.1f} MB | {r['files'] / mb:,.1f} MB |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--centers", type=int, default=1000)
    ap.add_argument("--tune-queries", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", nargs="*", default=[], choices=VARIANTS)
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here too")
    args = ap.parse_args(argv)
    from pipelines.retrieval.faiss_index import default_params, memory_bytes

    nlist = default_params("ivf", args.n, args.dim)["nlist"]
    work = Path(tempfile.mkdtemp(prefix="bench-index-scale-", dir=args.workdir))
    t0 = time.perf_counter()
    try:
        prepare(args, work)
        print(f"# {args.n:,} x {args.dim}, nlist {nlist}, {args.queries} held-out queries; "
              f"data + exact truth {time.perf_counter() - t0:.1f} s", flush=True)  # fmt: skip
        child = vars(args) | {"nlist": nlist, "workdir": None, "json": None}
        ctx, rows, nprobe = mp.get_context("spawn"), [], 0
        for variant in [v for v in VARIANTS if v not in args.skip]:
            r = _in_child(ctx, build_variant, variant, work, child, nprobe)
            r |= _in_child(ctx, search_variant, r, work, child)
            nprobe = r["params"].get("nprobe", nprobe) if variant == "ivf" else nprobe
            rows.append(r)
            print(f"  {variant}: {json.dumps(r, default=str)}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| variant | params | recall@10 | batch q/s (vs exact) | 1-query q/s (vs exact) | "
          "build s | build peak RSS | load anon | load file | files |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(fmt_row(r, rows[0]))
    est = {
        k: memory_bytes(k, args.n, args.dim) / 2**20 for k in ("flat", "ivf", "hnsw", "ivf_ondisk")
    }
    print("\nestimated resident MB (faiss_index.memory_bytes): "
          + ", ".join(f"{k} {v:,.1f}" for k, v in est.items()))  # fmt: skip
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args), "rows": rows, "est_mb": est},
                                        default=str, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
