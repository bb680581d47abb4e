"""The served two-tower search at 1M items: recall at the served ``k`` and CPU per search, by
index kind and search setting.

    RECLOOP_HOME=<workspace with a champion> .venv/bin/python benchmarks/bench_served_ann.py
        [--large-items 1000000] [--users 300] [--kinds hnsw,auto] [--synthetic clustered]

The workspace's champion; its index replaced by ``bench_serving.large_index`` (the real items +
synthetic unit vectors, ``--synthetic`` uniform or clustered, cached under the workspace;
``auto`` built as the daily DAG builds an index,
:func:`pipelines.retrieval.faiss_index.build_index`: IVF-Flat at 1M). The queries are the
first ``--users`` known users' two-tower vectors, each asking what the retrieve stage asks:
``k = quota + |seen|`` (``serving.retrieve.search``: the two-tower quota, 300 by default, plus
the user's seen items, which are dropped afterwards). Truth: exact inner-product top ``k`` over
the same vectors. Printed per setting: recall@k (mean over users of the share of the exact top
``k`` found), recall of the served list (the exact top ``quota`` after the seen items are
dropped, against the served one), recall@10, and CPU ms per search (one query per call, one
faiss thread: the serving pattern). HNSW searches at ``efSearch = max(efSearch, k)``
(:func:`pipelines.retrieval.faiss_index.search_params`): settings below ``k`` search at ``k``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def served_recall(found: list[np.ndarray], exact: list[np.ndarray], at: int | None = None) -> float:
    """Mean over users of ``|found[:at] ∩ exact[:at]| / |exact[:at]|`` (labels, -1 = none)."""
    out = []
    for f, e in zip(found, exact, strict=True):
        f, e = f[:at], e[:at]
        e = e[e >= 0]
        out.append(len(set(f[f >= 0].tolist()) & set(e.tolist())) / max(len(e), 1))
    return float(np.mean(out))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--large-items", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--kinds", default="hnsw,auto")
    p.add_argument("--synthetic", default="uniform", choices=("uniform", "clustered"))
    p.add_argument("--quota", type=int, default=0, help="two-tower quota (default: the config's)")
    p.add_argument("--efs", default="128,256,384,512,768")
    p.add_argument("--nprobes", default="32,128,512,2048")
    args = p.parse_args()

    import bench_serving as bs
    import faiss

    from pipelines.core.settings import Settings
    from pipelines.retrieval.faiss_index import search_params
    from serving.bundle import load
    from serving.config import ServingConfig

    faiss.omp_set_num_threads(1)
    settings = Settings.from_env()
    bundle = load(settings, "champion")
    quota = args.quota or dict(ServingConfig().source_quotas)["two_tower"]
    rows = list(range(min(args.users, len(bundle.user_vecs))))
    queries = bundle.user_vecs[rows]
    seen = [len(bundle.seen_items(r)) for r in rows]
    ks = [quota + s for s in seen]
    indexes = {kind: bs.large_index(settings, bundle, args.large_items, kind, args.synthetic)
               for kind in args.kinds.split(",")}  # fmt: skip
    vectors = bs.large_vectors(bundle, args.large_items, args.synthetic)[0]
    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    truth = [exact.search(queries[i : i + 1], k)[1][0] for i, k in enumerate(ks)]
    names = np.asarray(indexes[next(iter(indexes))].item_ids)
    seen_rows = [np.flatnonzero(np.isin(names, list(bundle.seen_items(r)))) for r in rows]

    def unseen(labels: np.ndarray, i: int) -> np.ndarray:
        return labels[~np.isin(labels, seen_rows[i])][:quota]

    truth_served = [unseen(t, i) for i, t in enumerate(truth)]
    real = int(np.mean([np.mean(t < len(bundle.items.ids)) * len(t) for t in truth]))
    print(f"{len(rows)} users, k = quota {quota} + seen (mean k {np.mean(ks):.0f}); exact top k "
          f"holds {real} real items on average", flush=True)  # fmt: skip
    results = []
    for kind, idx in indexes.items():
        settings_list = (
            [{"efSearch": int(e)} for e in args.efs.split(",")]
            if kind == "hnsw"
            else [{"nprobe": int(n)} for n in args.nprobes.split(",")]
        )
        for setting in settings_list:
            params = {**idx.params, **setting}
            found = []
            cpu0 = time.process_time()
            for i, k in enumerate(ks):
                sp = search_params(idx.kind, params, k)
                found.append(idx.index.search(queries[i : i + 1], k, params=sp)[1][0])
            cpu = (time.process_time() - cpu0) / len(ks) * 1e3
            served = [unseen(f, i) for i, f in enumerate(found)]
            row = {
                "kind": idx.kind, **setting,
                "recall_at_k": round(served_recall(found, truth), 4),
                "recall_served": round(served_recall(served, truth_served), 4),
                "recall_at_10": round(served_recall(served, truth_served, 10), 4),
                "cpu_ms": round(cpu, 3),
            }  # fmt: skip
            results.append(row)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
