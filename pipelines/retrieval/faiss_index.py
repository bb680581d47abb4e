"""FAISS index over item embeddings: chosen by catalog size, recall-checked, versioned.

Inner product throughout (the models' scores are inner products: the two-tower and MF append a
popularity-prior column, so the vectors are not unit norm and this is not cosine). Shapes: ``I``
items, ``D`` dims, ``Q`` sample queries, ``B`` query batch, ``K`` results.

- :func:`choose_kind` / :func:`get_index` pick and construct the index type: exact ``flat`` for
  catalogs under ``FLAT_MAX`` items (or a recall target of 1), ``ivffs`` up to ``IVF_MAX``,
  ``ivfpq`` (IVF + 8-bit product quantization, re-ranked exactly by ``IndexRefineFlat``)
  beyond; ``ivf`` (IVF-Flat) and ``hnsw`` (M=32) on request. ``ivffs``: IVF with about
  ``4 * sqrt(I)`` lists (exact coarse quantizer) whose lists hold one 4-bit residual code a
  dimension, scanned by faiss's SIMD fast-scan, the first candidates re-ranked exactly by
  ``IndexRefineFlat`` (full vectors kept). It visits the same lists as IVF-Flat at the same
  ``nprobe`` but scans them ~5x faster: at 1M items (65 dims, k = 300, one thread, the recall
  gate met) 0.73 against 2.49 ms a search, at 100k 0.27 against 0.45 ms (benchmarks/README,
  "A fast-scan index"); ~12 % more memory than IVF-Flat (the codes beside the vectors).
  Why IVF over HNSW: users with several interests give queries that fall between item
  clusters; there HNSW needs efSearch ~768 for recall@10 0.95 (10-19x exact's speed at 1M),
  IVF4096-Flat nprobe 32 gets 0.96 at 105-140x, nprobe 48 0.97 at 75-95x (bench_faiss.py).
- The refined kinds' ``k_factor`` is tuned at the gate's K: a search for ``k`` results
  re-ranks ``max(k_factor * K, k)`` candidates (:func:`refine_factor`), the gate's own count
  whenever ``k`` is smaller, so the top K is at least what the gate measured.
- :func:`build_index` builds it, tunes the search knob upward (HNSW ``efSearch``, IVF ``nprobe``,
  refinement ``k_factor``) until recall@K against exact search on a sample of real user vectors
  reaches the target, and records the measured recall. A build below its target raises
  :class:`IndexRecallError` with the numbers.
- :class:`ItemIndex` wraps the index, its item ids and metadata; ``save`` writes
  ``<root>/index-<model version>/`` = ``index.faiss`` (``faiss.write_index``), ``meta.json``
  (:mod:`pipelines.core.artifact_meta`) and ``item_ids.npy`` (no pickle), atomically (temporary
  folder, then rename).

Beyond one machine's memory (issue 19): with a ``memory_budget_mb`` (the DAG passes
``RECLOOP_INDEX_MEMORY_BUDGET_MB``, default 4096) :func:`choose_kind` switches an IVF/HNSW
catalog whose in-memory estimate (:func:`memory_bytes`) exceeds the budget to ``ivf_ondisk``:
IVF-Flat whose inverted lists (the item vectors and ids, ``I * (4 * D + 8)`` bytes) live in an
``OnDiskInvertedLists`` file, memory-mapped read-only at load. Only the coarse quantizer
(``nlist * D * 4`` bytes: 1 MiB at 4096 lists x 64 dims) and the list table stay resident; the
pages a search touches are clean file-backed pages the kernel can drop. Searched, tuned and
recall-gated exactly like ``ivf`` (same ``nprobe`` ladder, same results for the same lists).
Measured (``benchmarks/bench_index_scale.py``, D=64, README "Index beyond one machine's memory"):
a loaded in-memory IVF-Flat holds about 265 bytes an item (254 MB at 1M; 2.6 GB at 10M,
extrapolated), HNSW M=32 about 510 (51 MB at 100k; 5.1 GB at 10M, extrapolated), the on-disk
IVF 1.6 MB at 1M (its 253 MB of lists in the page cache) at the same recall; the default budget
keeps today's choice up to ~14M items at D=64 (``ivffs``: ~296 bytes an item).
Built in blocks of ``ONDISK_BLOCK`` rows (each added to an in-memory copy of the trained IVF,
written, memory-mapped back), merged once into the on-disk lists (``merge_from_multiple``), so
adding holds the input vectors plus one block (the recall check's exact search still copies the
vectors into an ``IndexFlatIP``: ~1 GB peak at 1M, ~4x the input). A GPU (``faiss.get_num_gpus() > 0``, the
faiss-gpu build) runs the coarse k-means of every IVF kind (``clustering_index``); without one
the same code runs on the CPU.

The other way past one machine, not built here: ``faiss.IndexShards`` over N IVF sub-indexes,
each over a contiguous slice of item ids sharing one trained quantizer (one file per shard, so
each can live on its own machine), searched in parallel and merged by score. Measured at 1M
with 4 shards: the same recall as one IVF (0.962 at the same ``nprobe``), the same memory in
total (261 MB, a quarter per shard), 4 quantizer scans a query. On one machine it saves nothing;
across machines it is the step after on-disk lists, when one machine's disk or page cache is
not enough (its latency is the slowest shard's plus a network hop).

Artifact layout, ``<root>/index-<model version>/``: ``meta.json`` (keys: ``format``, ``kind``,
``params``, ``metric``, ``k``, ``recall_target``, ``recall``, ``n_queries``, ``tuning``,
``n_items``, ``dim``, ``model_version``, ``ids``, ``build_seconds``, ``tune_seconds``,
``faiss_version``, ``created_at``; ``ivf_ondisk`` adds ``ivfdata`` (the lists' file name),
``ivfdata_bytes`` and ``memory_budget_mb``; a GPU build adds ``gpus``), ``index.faiss``,
``item_ids.npy`` (when ids were given) and, for ``ivf_ondisk``, ``index.ivfdata`` (its
``index.faiss`` names it relative to its folder: the folder may be moved or copied whole).

faiss is imported inside functions: importing this module does no work.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.core import schema
from pipelines.core.artifact_meta import (
    artifact_meta_path,
    require_artifact_meta,
    write_artifact_meta,
)
from pipelines.core.progress import progress

log = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
IDS_FILE = "item_ids.npy"
IVFDATA_FILE = "index.ivfdata"  # the on-disk inverted lists of an ``ivf_ondisk`` index
FORMAT_VERSION = 1
KINDS = ("flat", "hnsw", "ivf", "ivffs", "ivfpq", "ivf_ondisk")
IVF_KINDS = ("ivf", "ivffs", "ivfpq", "ivf_ondisk")
REFINED_KINDS = ("ivffs", "ivfpq")  # an IVF-PQ re-ranked exactly by IndexRefineFlat
ONDISK_BLOCK = 250_000  # rows added per in-memory block before the merge into on-disk lists
# faiss starts this many threads per search to pre-read an on-disk index's lists (default 32):
# 0 leaves the page-ins to the kernel; one query per call ran 25x faster (bench_index_scale.py)
ONDISK_PREFETCH_THREADS = 0
FLAT_MAX = 50_000  # below this many items exact search is fast enough (~1 ms/query at D=64)
IVF_MAX = 5_000_000  # above this full-vector memory (4 * D bytes per item) favours IVF-PQ
IVF_LISTS_PER_SQRT = 4  # IVF-Flat lists = this * sqrt(I): 4096 at 1M (~244 items per list)
HNSW_EF_LADDER = (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
K_FACTOR_LADDER = (1, 2, 4, 8, 16, 32, 64)
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class IndexRecallError(RuntimeError):
    """A build whose measured recall@K is below its target."""

    def __init__(
        self,
        kind: str,
        params: dict[str, Any],
        recall: float,
        target: float,
        k: int,
        n_queries: int,
    ) -> None:
        self.kind, self.params, self.recall, self.target = kind, params, recall, target
        self.k, self.n_queries = k, n_queries
        super().__init__(
            f"{kind} index {params}: recall@{k} {recall:.4f} < target {target:.4f} "
            f"on {n_queries} sample queries"
        )


# --- choosing and constructing ------------------------------------------------------------


def choose_kind(
    n: int,
    recall_target: float = 0.95,
    flat_max: int = FLAT_MAX,
    ivf_max: int = IVF_MAX,
    *,
    dim: int = 64,
    memory_budget_mb: float | None = None,
) -> str:
    """Index type for ``n`` items: ``flat`` (small or recall target 1), ``ivffs``, ``ivfpq``;
    ``ivf_ondisk`` when a ``memory_budget_mb`` is given and the in-memory choice's
    :func:`memory_bytes` for ``dim`` dims exceeds it (``None``: no budget; a recall target of 1
    stays ``flat``). The default budget (4096 MB) never moves a ``flat`` catalog (< 50k items
    need D > 20,000 to reach it) nor an ``ivffs`` one below ~14M items at D=64."""
    if recall_target >= 1.0:
        return "flat"  # exactness asked for: whatever the budget
    kind = "flat" if n < flat_max else "ivffs" if n <= ivf_max else "ivfpq"
    if memory_budget_mb is not None:
        if memory_bytes(kind, n, dim) > memory_budget_mb * 2**20:
            return "ivf_ondisk"
    return kind


def memory_bytes(kind: str, n: int, dim: int, params: dict[str, Any] | None = None) -> int:
    """Estimated resident bytes of a loaded ``kind`` index over ``n`` x ``dim`` vectors (float32
    vectors, int64 ids; HNSW: ``2M`` level-0 links plus the upper levels' ``~M/(M-1)`` share,
    4-byte links). ``ivf_ondisk``: the quantizer and list table only (its lists are mapped
    pages the kernel can drop). Checked against measured RSS in bench_index_scale.py."""
    p = {**default_params(kind, n, dim), **(params or {})}
    vec = 4 * dim
    if kind == "flat":
        return n * vec
    if kind == "hnsw":
        links = 4 * int(p["M"]) * (2 + 1 / max(1, int(p["M"]) - 1))
        return int(n * (vec + links + 16))
    quantizer = int(p["nlist"]) * (vec + 48)
    if kind == "ivf":
        return n * (vec + 8) + quantizer
    if kind == "ivf_ondisk":
        return quantizer
    code = int(p["pq_m"]) * int(p["pq_bits"]) // 8
    if kind == "ivffs":  # fast-scan codes pad the sub-quantizers to an even count
        code = (int(p["pq_m"]) + 1) // 2
    return n * (code + 8 + vec) + quantizer  # ivfpq + IndexRefineFlat's full vectors


def default_params(kind: str, n: int, dim: int) -> dict[str, Any]:
    """Build and starting search parameters of ``kind`` for ``n`` vectors of ``dim``."""
    if kind == "flat":
        return {}
    if kind == "hnsw":
        return {"M": 32, "efConstruction": 40, "efSearch": HNSW_EF_LADDER[0]}
    if kind in ("ivf", "ivf_ondisk"):
        return {"nlist": _nlist_for(n, IVF_LISTS_PER_SQRT), "nprobe": 1}
    if kind == "ivffs":  # one 4-bit code a dimension
        nlist = _nlist_for(n, IVF_LISTS_PER_SQRT)
        return {"nlist": nlist, "pq_m": dim, "pq_bits": 4, "nprobe": 1, "k_factor": 1}
    nlist = _nlist_for(n, 1)
    if kind == "ivfpq":
        pq_m = next(m for m in (dim // 4, dim // 2, dim, 1) if m >= 1 and dim % m == 0)
        pq_bits = 8 if n >= 256 * 39 else max(1, int(math.log2(max(2, n // 39))))
        return {"nlist": nlist, "pq_m": pq_m, "pq_bits": pq_bits, "nprobe": 1, "k_factor": 1}
    raise ValueError(f"unknown index kind {kind!r} (known: {KINDS} or 'auto')")


def _nlist_for(n: int, per_sqrt: int) -> int:
    """About ``per_sqrt * sqrt(n)`` lists, a power of two, >= 39 training points per list."""
    nlist = 2 ** max(0, round(math.log2(max(1.0, per_sqrt * math.sqrt(n)))))
    return max(1, min(nlist, n // 39 or 1, 65536))


def get_index(
    dim: int,
    n: int,
    *,
    kind: str = "auto",
    recall_target: float = 0.95,
    params: dict[str, Any] | None = None,
    memory_budget_mb: float | None = None,
) -> tuple[Any, str, dict[str, Any]]:
    """Pick (``kind="auto"``, :func:`choose_kind` under ``memory_budget_mb``) and construct an
    empty inner-product index for ``n`` vectors (``ivf_ondisk``: an in-memory IVF-Flat; its
    lists move to disk when :func:`build_index` adds the vectors).

    (faiss's Python constructors keep the sub-indexes alive; never set ``own_fields`` here,
    or the quantizer is freed twice.)

    Returns ``(index, kind, params)``; ``params`` = defaults for the kind updated by ``params``.
    IVF kinds still need ``train``; nothing is added.
    """
    import faiss

    if kind == "auto":
        kind = choose_kind(n, recall_target, dim=dim, memory_budget_mb=memory_budget_mb)
    p = {**default_params(kind, n, dim), **(params or {})}
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(p["M"]), ip)
        index.hnsw.efConstruction = int(p["efConstruction"])
    elif kind in ("ivf", "ivf_ondisk"):
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, int(p["nlist"]), ip)
    else:
        if dim % int(p["pq_m"]):
            raise ValueError(f"{kind}: pq_m={p['pq_m']} must divide dim={dim}")
        ivf_pq = faiss.IndexIVFPQFastScan if kind == "ivffs" else faiss.IndexIVFPQ
        base = ivf_pq(
            faiss.IndexFlatIP(dim), dim, int(p["nlist"]), int(p["pq_m"]), int(p["pq_bits"]), ip
        )
        base.by_residual = True  # the fast-scan constructor's default (False) for inner
        # product loses ~0.1 of recall@10 at 1M items at the same candidates (index_factory's
        # "IVF4096,PQ64x4fs" encodes residuals)
        index = faiss.IndexRefineFlat(base)
    return index, kind, p


def search_params(kind: str, params: dict[str, Any], k: int, tuned_k: int | None = None) -> Any:
    """faiss per-search parameters for ``k`` results (thread-safe; the index itself is not
    modified). ``tuned_k``: the K a refined kind's ``k_factor`` was tuned at (None: ``k``); the
    search re-ranks :func:`refine_factor`'s count of candidates."""
    import faiss

    if kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=max(int(params["efSearch"]), k))
    if kind in ("ivf", "ivf_ondisk"):
        return faiss.SearchParametersIVF(nprobe=int(params["nprobe"]))
    if kind in REFINED_KINDS:
        return faiss.IndexRefineSearchParameters(
            k_factor=refine_factor(float(params["k_factor"]), tuned_k or k, k),
            base_index_params=faiss.SearchParametersIVF(nprobe=int(params["nprobe"])),
        )
    return None


def refine_factor(k_factor: float, tuned_k: int, k: int) -> float:
    """The ``k_factor`` a search for ``k`` results uses on a refined kind tuned (and gated) at
    ``tuned_k`` results with ``k_factor``: exactly as many re-ranked candidates as the gate
    measured, ``k_factor * tuned_k``, or ``k`` when more are asked for. Its top ``tuned_k`` is
    then the one the gate measured or a better one (the candidates are the approximate search's
    first ``max(k_factor * tuned_k, k)``, a superset), while the exact re-ranking's work does
    not grow with ``k``: a factor tuned at k = 10 (often 16-64) taken as is at k = 300 would
    re-rank 5,000-19,000 vectors a search."""
    return max(1.0, k_factor * tuned_k / max(1, k))


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over rows of ``|found ∩ exact| / K``; both ``(Q, K)`` int labels (``-1`` = none)."""
    pairs = zip(found, exact, strict=True)
    hits = [len(set(f[f >= 0].tolist()) & set(e[e >= 0].tolist())) for f, e in pairs]
    return float(np.mean(hits) / exact.shape[1]) if len(hits) else 1.0


# --- building -----------------------------------------------------------------------------


def _as_matrix(x: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"{what}: expected a non-empty (N, D) matrix, got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{what}: dimension {x.shape[1]} != item vectors' {dim}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"{what}: row {int(np.flatnonzero(bad)[0])} has a non-finite value")
    return x


def _train_add(
    index: Any, kind: str, vectors: np.ndarray, seed: int, workdir: Path | None = None
) -> Any:
    """Train (IVF kinds, on a seeded sample) and add ``vectors``; the index to use (for
    ``ivf_ondisk`` the same object, its lists moved to ``workdir/index.ivfdata``)."""
    if kind in IVF_KINDS:
        rng = np.random.default_rng(seed)
        # 64 points per list (faiss's k-means warns under 39); >= 25,600 for PQ's 256 codes
        n_train = min(len(vectors), max(64 * _nlist(index, kind), 100 * 256))
        sample = vectors[np.sort(rng.choice(len(vectors), n_train, replace=False))]
        index.train(sample)
        _ivf(index).clustering_index = None  # a GPU one is not saved (nor kept)
    if kind == "ivf_ondisk":
        if workdir is None:
            raise ValueError("ivf_ondisk: a workdir for the inverted lists is required")
        return _add_ondisk(index, vectors, Path(workdir))
    index.add(vectors)
    return index


def _ivf(index: Any) -> Any:
    import faiss

    return faiss.extract_index_ivf(index)


def _nlist(index: Any, kind: str) -> int:
    return int(_ivf(index).nlist) if kind in IVF_KINDS else 0


def use_gpus(index: Any, kind: str) -> int:
    """GPUs the coarse k-means of an IVF ``index`` will run on: all of them when the faiss build
    has any (``clustering_index``, an IP flat index copied to every GPU), else 0 (the CPU)."""
    import faiss

    gpus = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    if kind not in IVF_KINDS or gpus < 1:
        return 0
    ivf = _ivf(index)
    on_gpus = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(ivf.d))
    ivf.clustering_index = on_gpus
    # the C++ pointer does not keep the Python object alive: the index does, until training
    index.referenced_objects = [*getattr(index, "referenced_objects", []), on_gpus]
    log.info("index: coarse k-means on %d GPU(s)", gpus)
    return gpus


@contextlib.contextmanager
def _c_stdout_to_stderr() -> Iterator[None]:
    """Send what C code prints on stdout (faiss's on-disk lists print progress lines) to stderr
    while inside: commands print JSON on stdout."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    libc.fflush(None)
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def _add_ondisk(index: Any, vectors: np.ndarray, workdir: Path, block: int = 0) -> Any:
    """Add ``vectors`` to the trained, empty IVF ``index`` through on-disk inverted lists at
    ``workdir/index.ivfdata``: each block of ``block`` rows (default ``ONDISK_BLOCK``) goes into
    an in-memory copy, written and memory-mapped back, then all merge once into the file."""
    import faiss

    block = block or ONDISK_BLOCK
    ivf = _ivf(index)
    parts, lists = [], faiss.InvertedListsPtrVector()
    try:
        for i, start in enumerate(range(0, len(vectors), block)):
            part = faiss.clone_index(index)
            rows = vectors[start : start + block]
            part.add_with_ids(rows, np.arange(start, start + len(rows), dtype=np.int64))
            name = str(workdir / f"block-{i:05d}.faiss")
            faiss.write_index(part, name)
            del part
            mapped = faiss.read_index(name, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
            parts.append(mapped)  # keeps its lists alive until the merge
            lists.push_back(_ivf(mapped).invlists)
        ondisk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(workdir / IVFDATA_FILE))
        with _c_stdout_to_stderr():
            ntotal = ondisk.merge_from_multiple(lists.data(), lists.size(), False, False)
        ondisk.prefetch_nthread = ONDISK_PREFETCH_THREADS
        ivf.replace_invlists(ondisk, True)
        ondisk.this.disown()  # owned by the index now
        index.ntotal = ivf.ntotal = int(ntotal)
    finally:
        del parts, lists
        for f in workdir.glob("block-*.faiss"):
            f.unlink()
    return index


def ondisk_lists(index: Any) -> Any:
    """The ``OnDiskInvertedLists`` of an ``ivf_ondisk`` index (``filename``: its data file)."""
    import faiss

    return faiss.downcast_InvertedLists(_ivf(index).invlists)


def _tuning_ladder(
    kind: str, params: dict[str, Any], fixed: set[str]
) -> list[list[dict[str, Any]]]:
    """Search settings to try: groups in rising cost, each group's settings in rising cost (its
    last one its most accurate). Keys the caller fixed are not varied."""
    if kind == "flat":
        return [[{}]]
    if kind == "hnsw":
        efs = [params["efSearch"]] if "efSearch" in fixed else list(HNSW_EF_LADDER)
        return [[{"efSearch": ef}] for ef in efs]
    probes = [params["nprobe"]] if "nprobe" in fixed else probe_ladder(int(params["nlist"]))
    if kind in ("ivf", "ivf_ondisk"):
        return [[{"nprobe": p}] for p in probes]
    factors = [params["k_factor"]] if "k_factor" in fixed else list(K_FACTOR_LADDER)
    return [[{"nprobe": p, "k_factor": f} for f in factors] for p in probes]


def _tune(
    index: Any,
    kind: str,
    params: dict[str, Any],
    fixed: set[str],
    queries: np.ndarray,
    truth: np.ndarray,
    target: float,
    margin: float = 0.0,
    bar: Any = None,
) -> tuple[float, dict[str, Any], list[dict[str, Any]]]:
    """Cheapest setting whose recall reaches ``target + margin`` (else the cheapest reaching
    ``target``, else the best one seen): ``(recall, params, trials)``. Within a group the most
    accurate setting is tried first; the group is scanned from its cheapest only when that one
    reaches the goal. ``bar``: a progress bar advanced by one per setting tried."""
    k = truth.shape[1]
    trials: list[dict[str, Any]] = []
    best: tuple[float, dict[str, Any]] = (-1.0, params)

    def measure(setting: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        nonlocal best
        trial = {**params, **setting}
        _, found = index.search(queries, k, params=search_params(kind, trial, k))
        recall = recall_at_k(found, truth)
        trials.append({**setting, "recall": round(recall, 5)})
        log.info("index: %s %s recall@%d = %.4f", kind, setting, k, recall)
        if bar is not None:
            bar.set_postfix_str(f"recall@{k} {recall:.3f}", refresh=False)
            bar.update(1)
        best = max(best, (recall, trial), key=lambda b: b[0])
        return recall, trial

    goal = min(1.0, target + margin)
    first_ok: tuple[float, dict[str, Any]] | None = None
    for group in _tuning_ladder(kind, params, fixed):
        chosen = measure(group[-1])
        if chosen[0] < goal:
            if first_ok is None and chosen[0] >= target:
                first_ok = chosen
            continue
        for setting in group[:-1]:
            got = measure(setting)
            if got[0] >= goal:
                chosen = got
                break
        return chosen[0], chosen[1], trials
    if first_ok is not None:  # the target but not the margin: the cheapest that made it
        return first_ok[0], first_ok[1], trials
    return best[0], best[1], trials


def probe_ladder(limit: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and 1.5x them) below ``limit``, then
    ``limit``: the half steps keep a setting that just misses from doubling the cost."""
    out, p = [], 1
    while p < limit:
        out += [p] + ([p * 3 // 2] if p >= 2 and p * 3 // 2 < limit else [])
        p *= 2
    return out + [limit]


def _check_inputs(
    item_vectors: np.ndarray,
    item_ids: np.ndarray | list | None,
    sample_queries: np.ndarray,
    model_version: str,
    max_queries: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Checked ``(vectors (I, D) float32, ids (I,) or None, queries (Q, D) float32)`` for
    :func:`build_index`: ids that are neither int nor str become str; more than ``max_queries``
    queries are cut to a seeded sample of that many (in their original order)."""
    vectors = _as_matrix(item_vectors, "item vectors")
    n, dim = vectors.shape
    queries = _as_matrix(sample_queries, "sample queries", dim)
    if not _VERSION_RE.match(str(model_version)):
        raise ValueError(f"model version {model_version!r}: use letters, digits, '.', '_', '-'")
    ids = None if item_ids is None else np.asarray(item_ids)
    if ids is not None and ids.shape != (n,):
        raise ValueError(f"item ids: expected shape ({n},), got {ids.shape}")
    if ids is not None and ids.dtype.kind not in "iuU":
        ids = ids.astype(str)
    if len(queries) > max_queries:
        pick = np.random.default_rng(seed).choice(len(queries), max_queries, replace=False)
        queries = queries[np.sort(pick)]
    return vectors, ids, queries


def _exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row labels ``(Q, k)`` of the exact inner-product top ``k`` of each query: the truth the
    recall is measured against."""
    import faiss

    exact = faiss.IndexFlatIP(vectors.shape[1])
    exact.add(vectors)
    _, truth = exact.search(queries, k)
    return truth


def build_index(
    item_vectors: np.ndarray,
    item_ids: np.ndarray | list | None = None,
    *,
    sample_queries: np.ndarray,
    recall_target: float = 0.95,
    k: int = 10,
    kind: str = "auto",
    params: dict[str, Any] | None = None,
    model_version: str = "unversioned",
    max_queries: int = 1000,
    tune_margin: float = 0.01,
    seed: int = 0,
    memory_budget_mb: float | None = None,
    workdir: Path | None = None,
) -> ItemIndex:
    """Build a recall-checked inner-product index over ``item_vectors`` ``(I, D)``.

    ``item_ids``: ``(I,)`` raw ids (str or int) returned by ``search``; ``None`` → row indices.
    ``sample_queries``: ``(Q, D)`` real user vectors (at most ``max_queries`` are used, a seeded
    sample). ``kind``: ``auto`` (:func:`choose_kind`) or one of ``KINDS``. ``params`` override
    :func:`default_params`; a search knob given there (``efSearch``, ``nprobe``, ``k_factor``) is
    used as is, the others are tuned upward until recall@``k`` reaches ``recall_target`` +
    ``tune_margin`` (a sample's recall is an estimate: the margin keeps unseen queries above the
    target), or at least ``recall_target``. ``memory_budget_mb``: see :func:`choose_kind`
    (``None``: no budget). ``ivf_ondisk`` writes its lists under ``workdir`` (a new temporary
    folder there, default the system's; put it on the disk of the index root so :meth:`ItemIndex.save`
    links instead of copying; removed when the returned index is garbage-collected).
    Raises :class:`IndexRecallError` when no setting reaches it, ``ValueError`` on bad input.
    """
    vectors, ids, queries = _check_inputs(
        item_vectors, item_ids, sample_queries, model_version, max_queries, seed
    )
    n, dim = vectors.shape
    k_eff = min(k, n)

    t0 = time.perf_counter()
    index, kind, p = get_index(
        dim, n, kind=kind, recall_target=recall_target, params=params,
        memory_budget_mb=memory_budget_mb,
    )  # fmt: skip
    log.info("index: building %s over %d x %d vectors, params %s", kind, n, dim, p)
    gpus = use_gpus(index, kind)
    lists_dir = _lists_dir(workdir) if kind == "ivf_ondisk" else None
    try:
        with progress(desc=f"index {kind} build + tune", unit="step") as bar:
            index = _train_add(index, kind, vectors, seed, lists_dir)
            build_s = time.perf_counter() - t0
            bar.update(1)
            t1 = time.perf_counter()
            truth = _exact_top_k(vectors, queries, k_eff)
            fixed = set(params or {})
            recall, p, tried = _tune(
                index, kind, p, fixed, queries, truth, recall_target, tune_margin, bar
            )
            tune_s = time.perf_counter() - t1
        if recall < recall_target:
            raise IndexRecallError(kind, p, recall, recall_target, k_eff, len(queries))
    except BaseException:
        if lists_dir is not None:
            shutil.rmtree(lists_dir, ignore_errors=True)
        raise
    meta = {
        "format": FORMAT_VERSION,
        "kind": kind,
        "params": p,
        "metric": "inner_product",
        "k": k_eff,
        "recall_target": recall_target,
        "recall": recall,
        "n_queries": len(queries),
        "tuning": tried,
        "n_items": n,
        "dim": dim,
        "model_version": str(model_version),
        "ids": "index" if ids is None else ("str" if ids.dtype.kind == "U" else "int"),
        "build_seconds": round(build_s, 3),
        "tune_seconds": round(tune_s, 3),
        "faiss_version": _faiss_version(),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    } | _scale_meta(lists_dir, gpus, memory_budget_mb)
    log.info(
        "index: %s %s recall@%d %.4f >= %.2f on %d queries (build %.1f s, tuning %.1f s)",
        kind, p, k_eff, recall, recall_target, len(queries), build_s, tune_s,
    )  # fmt: skip
    out = ItemIndex(index, ids, meta)
    if lists_dir is not None:  # the built lists' folder goes with the object
        weakref.finalize(out, shutil.rmtree, lists_dir, True)
    return out


def _lists_dir(workdir: Path | None) -> Path:
    """A new folder for the on-disk lists being built: ``<workdir>/.tmp-index-build-<pid>@<host>-
    <random>`` (the system's temporary folder by default); those of ended processes (a build
    killed part way) are deleted first (:func:`pipelines.core.schema._tmp_sibling`)."""
    root = Path(workdir) if workdir is not None else Path(tempfile.gettempdir())
    root.mkdir(parents=True, exist_ok=True)
    folder = schema._tmp_sibling(root / "index-build")
    folder.mkdir()
    return folder


def _scale_meta(lists_dir: Path | None, gpus: int, budget_mb: float | None) -> dict[str, Any]:
    """meta.json keys of an on-disk (``ivfdata``, ``ivfdata_bytes``, ``memory_budget_mb``) or a
    GPU build (``gpus``); none for an in-memory CPU build (its meta as before issue 19)."""
    out: dict[str, Any] = {"gpus": gpus} if gpus else {}
    if lists_dir is not None:
        size = (lists_dir / IVFDATA_FILE).stat().st_size
        out |= {"ivfdata": IVFDATA_FILE, "ivfdata_bytes": size, "memory_budget_mb": budget_mb}
    return out


def _faiss_version() -> str:
    import faiss

    return faiss.__version__


# --- the wrapper --------------------------------------------------------------------------


def index_dir(root: Path, model_version: str) -> Path:
    """Where the index for ``model_version`` lives under ``root``."""
    return Path(root) / f"index-{model_version}"


class ItemIndex:
    """A built index, its item ids and its metadata (``meta``: kind, params, recall, ...)."""

    def __init__(self, index: Any, item_ids: np.ndarray | None, meta: dict[str, Any]) -> None:
        self.index = index
        self.item_ids = item_ids
        self.meta = meta

    kind = property(lambda self: self.meta["kind"])
    params = property(lambda self: self.meta["params"])
    recall = property(lambda self: self.meta["recall"])
    model_version = property(lambda self: self.meta["model_version"])
    n_items = property(lambda self: self.meta["n_items"])
    dim = property(lambda self: self.meta["dim"])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items for each query ``(B, D)``: ``(ids (B, k), scores (B, k) float32)``.

        ``ids`` are the raw item ids given at build (row indices when none were), best first;
        missing results (``k`` > items found) are ``-1`` (int/index ids) or ``""`` (str ids)
        with score ``-inf``.
        """
        q = _as_matrix(queries, "queries", self.dim)
        k = int(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        kk = min(k, self.n_items)
        sp = search_params(self.kind, self.params, kk, int(self.meta["k"]))
        scores, labels = self.index.search(q, kk, params=sp)
        if kk < k:
            labels = np.pad(labels, ((0, 0), (0, k - kk)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, k - kk)), constant_values=-np.inf)
        scores = np.where(labels >= 0, scores, -np.inf).astype(np.float32)
        if self.item_ids is None:
            return labels.astype(np.int64), scores
        ids = self.item_ids[np.maximum(labels, 0)]
        empty = "" if self.item_ids.dtype.kind == "U" else -1
        return np.where(labels >= 0, ids, np.asarray(empty, dtype=ids.dtype)), scores

    def save(self, root: Path) -> Path:
        """Write ``index_dir(root, model_version)`` atomically and durably; an existing one is
        replaced (:func:`pipelines.core.schema.publish_dir`: a crash part way leaves the old
        folder, recovered by the next save or :meth:`load`, and no temporary a rerun keeps)."""
        import faiss

        target = index_dir(root, self.model_version)

        def build(tmp: Path) -> None:
            if self.kind == "ivf_ondisk":
                _write_ondisk(self.index, tmp)
            else:
                faiss.write_index(self.index, str(tmp / INDEX_FILE))
            if self.item_ids is not None:
                np.save(tmp / IDS_FILE, self.item_ids, allow_pickle=False)
            write_artifact_meta(tmp, self.meta)

        schema.publish_dir(build, target)
        log.info("index: saved %s (%s, %d items)", target, self.kind, self.n_items)
        return target

    @classmethod
    def load(cls, folder: Path) -> ItemIndex:
        """Read a folder written by :meth:`save`; ``ValueError`` naming the file on any problem."""
        import faiss

        folder = Path(folder)
        schema.recover_dir(folder)  # a save killed between its renames
        meta_path, index_path = artifact_meta_path(folder), folder / INDEX_FILE
        ids_path = folder / IDS_FILE
        try:
            meta = require_artifact_meta(folder)
            kind, n, dim = meta["kind"], int(meta["n_items"]), int(meta["dim"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{meta_path}: cannot read index metadata ({exc!r})") from exc
        if kind not in KINDS:
            raise ValueError(f"{meta_path}: unknown index kind {kind!r}")
        if not index_path.is_file():
            raise ValueError(f"{index_path}: index file is missing")
        if kind == "ivf_ondisk":
            index = _read_ondisk(folder, meta)
        else:
            try:
                index = faiss.read_index(str(index_path))
            except RuntimeError as exc:
                raise ValueError(f"{index_path}: cannot read FAISS index ({exc})") from exc
        if index.ntotal != n or index.d != dim:
            raise ValueError(
                f"{index_path}: holds {index.ntotal} x {index.d} vectors, "
                f"{meta_path.name} says {n} x {dim}"
            )
        ids = None
        if meta.get("ids", "index") != "index":
            try:
                ids = np.load(ids_path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise ValueError(f"{ids_path}: cannot read item ids ({exc})") from exc
            if ids.shape != (n,):
                raise ValueError(f"{ids_path}: {ids.shape[0]} ids for {n} items")
        return cls(index, ids, meta)


def _write_ondisk(index: Any, folder: Path) -> None:
    """``folder/index.faiss`` naming its lists ``index.ivfdata`` (relative: found beside it at
    load) and ``folder/index.ivfdata``, a hard link to the lists' file where the file system
    allows (same disk), else a copy."""
    import faiss

    lists = ondisk_lists(index)
    source = lists.filename
    if not os.path.isfile(source):
        raise ValueError(f"{source}: the index's on-disk inverted lists are gone (moved?)")
    lists.filename = IVFDATA_FILE
    try:
        faiss.write_index(index, str(folder / INDEX_FILE))
    finally:
        lists.filename = source
    try:
        os.link(source, folder / IVFDATA_FILE)
    except OSError:
        shutil.copyfile(source, folder / IVFDATA_FILE)


def _read_ondisk(folder: Path, meta: dict[str, Any]) -> Any:
    """The ``ivf_ondisk`` index in ``folder``, its lists memory-mapped read-only from
    ``index.ivfdata``; ``ValueError`` naming the file when it is missing, of another size than
    ``meta.json`` records (truncated, replaced) or unreadable."""
    import faiss

    index_path, data_path = folder / INDEX_FILE, folder / str(meta.get("ivfdata", IVFDATA_FILE))
    if not data_path.is_file():
        raise ValueError(f"{data_path}: the index's on-disk inverted lists are missing")
    size, expected = data_path.stat().st_size, meta.get("ivfdata_bytes")
    if expected is not None and size != int(expected):
        raise ValueError(
            f"{data_path}: {size} bytes, {artifact_meta_path(folder).name} says {expected} "
            "(truncated or replaced): rebuild the index"
        )
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY
    try:
        with _c_stdout_to_stderr():  # faiss prints the file name it resolves
            index = faiss.read_index(str(index_path), flags)
        lists = ondisk_lists(index)
    except RuntimeError as exc:
        raise ValueError(
            f"{index_path} + {data_path.name}: cannot read FAISS index ({exc})"
        ) from exc
    if not isinstance(lists, faiss.OnDiskInvertedLists) or lists.totsize > size:
        raise ValueError(f"{data_path}: does not hold the lists {index_path.name} points to")
    lists.prefetch_nthread = ONDISK_PREFETCH_THREADS
    return index
