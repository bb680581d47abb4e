"""FAISS index over item embeddings: chosen by catalog size, recall-checked, versioned.

Inner product throughout (the models' scores are inner products: the two-tower and MF append a
popularity-prior column, so the vectors are not unit norm and this is not cosine). Shapes: ``I``
items, ``D`` dims, ``Q`` sample queries, ``B`` query batch, ``K`` results.

- :func:`choose_kind` / :func:`get_index` pick and construct the index type: exact ``flat`` for
  catalogs under ``FLAT_MAX`` items (or a recall target of 1), ``ivf`` (IVF-Flat, about
  ``4 * sqrt(I)`` lists, exact coarse quantizer) up to ``IVF_MAX``, ``ivfpq`` (IVF + product
  quantization, re-ranked exactly by ``IndexRefineFlat``) beyond; ``hnsw`` (M=32) on request.
  Why IVF-Flat over HNSW: users with several interests give queries that fall between item
  clusters; there HNSW needs efSearch ~768 for recall@10 0.95 (10-19x exact's speed at 1M),
  IVF4096-Flat nprobe 32 gets 0.96 at 105-140x, nprobe 48 0.97 at 75-95x (bench_faiss.py).
- :func:`build_index` builds it, tunes the search knob upward (HNSW ``efSearch``, IVF ``nprobe``,
  refinement ``k_factor``) until recall@K against exact search on a sample of real user vectors
  reaches the target, and records the measured recall. A build below its target raises
  :class:`IndexRecallError` with the numbers.
- :class:`ItemIndex` wraps the index, its item ids and metadata; ``save`` writes
  ``<root>/index-<model version>/`` = ``index.faiss`` (``faiss.write_index``), ``meta.json``
  (:mod:`pipelines.core.artifact_meta`) and ``item_ids.npy`` (no pickle), atomically (temporary
  folder, then rename).

faiss is imported inside functions: importing this module does no work.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import time
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
FORMAT_VERSION = 1
KINDS = ("flat", "hnsw", "ivf", "ivfpq")
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
    n: int, recall_target: float = 0.95, flat_max: int = FLAT_MAX, ivf_max: int = IVF_MAX
) -> str:
    """Index type for ``n`` items: ``flat`` (small or recall target 1), ``ivf``, ``ivfpq``."""
    if n < flat_max or recall_target >= 1.0:
        return "flat"
    if n <= ivf_max:
        return "ivf"
    return "ivfpq"


def default_params(kind: str, n: int, dim: int) -> dict[str, Any]:
    """Build and starting search parameters of ``kind`` for ``n`` vectors of ``dim``."""
    if kind == "flat":
        return {}
    if kind == "hnsw":
        return {"M": 32, "efConstruction": 40, "efSearch": HNSW_EF_LADDER[0]}
    if kind == "ivf":
        return {"nlist": _nlist_for(n, IVF_LISTS_PER_SQRT), "nprobe": 1}
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
) -> tuple[Any, str, dict[str, Any]]:
    """Pick (``kind="auto"``) and construct an empty inner-product index for ``n`` vectors.

    (faiss's Python constructors keep the sub-indexes alive; never set ``own_fields`` here,
    or the quantizer is freed twice.)

    Returns ``(index, kind, params)``; ``params`` = defaults for the kind updated by ``params``.
    IVF kinds still need ``train``; nothing is added.
    """
    import faiss

    kind = choose_kind(n, recall_target) if kind == "auto" else kind
    p = {**default_params(kind, n, dim), **(params or {})}
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(p["M"]), ip)
        index.hnsw.efConstruction = int(p["efConstruction"])
    elif kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, int(p["nlist"]), ip)
    else:
        if dim % int(p["pq_m"]):
            raise ValueError(f"ivfpq: pq_m={p['pq_m']} must divide dim={dim}")
        ivfpq = faiss.IndexIVFPQ(
            faiss.IndexFlatIP(dim), dim, int(p["nlist"]), int(p["pq_m"]), int(p["pq_bits"]), ip
        )
        index = faiss.IndexRefineFlat(ivfpq)
    return index, kind, p


def search_params(kind: str, params: dict[str, Any], k: int) -> Any:
    """faiss per-search parameters (thread-safe; the index itself is not modified)."""
    import faiss

    if kind == "hnsw":
        return faiss.SearchParametersHNSW(efSearch=max(int(params["efSearch"]), k))
    if kind == "ivf":
        return faiss.SearchParametersIVF(nprobe=int(params["nprobe"]))
    if kind == "ivfpq":
        return faiss.IndexRefineSearchParameters(
            k_factor=float(params["k_factor"]),
            base_index_params=faiss.SearchParametersIVF(nprobe=int(params["nprobe"])),
        )
    return None


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


def _train_add(index: Any, kind: str, vectors: np.ndarray, seed: int) -> None:
    if kind in ("ivf", "ivfpq"):
        rng = np.random.default_rng(seed)
        # 64 points per list (faiss's k-means warns under 39); >= 25,600 for PQ's 256 codes
        n_train = min(len(vectors), max(64 * _nlist(index, kind), 100 * 256))
        sample = vectors[np.sort(rng.choice(len(vectors), n_train, replace=False))]
        index.train(sample)
    index.add(vectors)


def _nlist(index: Any, kind: str) -> int:
    import faiss

    ivf = faiss.extract_index_ivf(index) if kind in ("ivf", "ivfpq") else None
    return int(ivf.nlist) if ivf is not None else 0


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
    if kind == "ivf":
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
) -> ItemIndex:
    """Build a recall-checked inner-product index over ``item_vectors`` ``(I, D)``.

    ``item_ids``: ``(I,)`` raw ids (str or int) returned by ``search``; ``None`` → row indices.
    ``sample_queries``: ``(Q, D)`` real user vectors (at most ``max_queries`` are used, a seeded
    sample). ``kind``: ``auto`` (:func:`choose_kind`) or one of ``KINDS``. ``params`` override
    :func:`default_params`; a search knob given there (``efSearch``, ``nprobe``, ``k_factor``) is
    used as is, the others are tuned upward until recall@``k`` reaches ``recall_target`` +
    ``tune_margin`` (a sample's recall is an estimate: the margin keeps unseen queries above the
    target), or at least ``recall_target``.
    Raises :class:`IndexRecallError` when no setting reaches it, ``ValueError`` on bad input.
    """
    import faiss

    vectors, ids, queries = _check_inputs(
        item_vectors, item_ids, sample_queries, model_version, max_queries, seed
    )
    n, dim = vectors.shape
    k_eff = min(k, n)

    t0 = time.perf_counter()
    index, kind, p = get_index(dim, n, kind=kind, recall_target=recall_target, params=params)
    log.info("index: building %s over %d x %d vectors, params %s", kind, n, dim, p)
    with progress(desc=f"index {kind} build + tune", unit="step") as bar:
        _train_add(index, kind, vectors, seed)
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
        "faiss_version": faiss.__version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    log.info(
        "index: %s %s recall@%d %.4f >= %.2f on %d queries (build %.1f s, tuning %.1f s)",
        kind, p, k_eff, recall, recall_target, len(queries), build_s, tune_s,
    )  # fmt: skip
    return ItemIndex(index, ids, meta)


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
        scores, labels = self.index.search(q, kk, params=search_params(self.kind, self.params, kk))
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
