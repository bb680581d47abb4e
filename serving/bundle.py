"""Serving bundles in memory: load a registered bundle, smoke-score it, swap it in atomically.

A :class:`LoadedBundle` is everything one arm needs, loaded once and then only read (safe to share
between request threads): the two-tower model with its vocabularies, precomputed user vectors and
seen matrix, the FAISS index built from it, the ranker (or None), the item table (the newest
offline item feature table on disk: category, age, trending, counts), which backs popularity
answers, cold start and exploration even while Redis is down, and the :class:`UserTower` (or
None) that gives users outside the two-tower's vocabulary a vector from their online features.

**User vectors.** A user in the two-tower's ``users.json`` (positives in the training window) gets
their precomputed vector. When the user tower reads attributes only (no user id embedding, no
history mean: the daily two-tower since demographics-only training), any other user is encoded from
the ``user_features`` attributes the tower reads (``user_age``, ``user_gender``, ``user_country``),
read from the online store at request time; vectors are cached by the attribute values (a few
thousand distinct tuples cover every user) and the cache is filled at load, in one batch, with
every distinct tuple of the newest offline user feature table, so a request almost never runs the
network. Older bundles, whose user tower reads ids or history, have no :class:`UserTower`: their
unknown users get cold start (trending), as before.

Only bundles from the configured registry are loaded (:func:`pipelines.release.registry.load_bundle`
re-checks pins and artifact hashes), and models load through ``models.base.load_model``
(JSON config + ``torch.load(weights_only=True)``): no arbitrary pickle.

:class:`BundleManager` holds the arms (``champion``, ``challenger``). :meth:`BundleManager.check`
asks the registry where the aliases point; a new version is loaded beside the current one,
smoke-scored (:func:`smoke_score`), then swapped in with one reference assignment, so a request
sees either the old bundle or the new one, never a mix. A bundle that fails to load or score is
rejected: logged, counted in ``rejected``, and the old one keeps serving (the rejected version
is tried again after ``retry_rejected_s``). A registry that does not answer changes nothing: the
arms keep their bundles (``registry.get_alias`` tells "unset" from a store error).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.settings import Settings
from pipelines.retrieval.cold_start import item_popularity, trending_order
from serving.sources import (
    MODEL_SOURCES,
    CovisitSource,
    MFSource,
    ModelSource,
    catalog_cumulative,
)

log = logging.getLogger("recloop.serving.bundle")

COVISIT_MAX_ITEMS = 20_000
"""Largest catalog whose ``covisit`` source is built at load (a dense ``(I, I)`` float32 pass)."""

ARMS = ("champion", "challenger")


class SmokeError(RuntimeError):
    """A loaded bundle that does not answer a smoke request."""


@dataclass
class ItemTable:
    """Per-item facts for popularity, cold start, re-ranking rules and exploration.

    Arrays are aligned with ``ids`` (``(I,)``): ``category`` (str), ``age_days`` (int, -1
    unknown), ``popularity`` (clicks + 2 purchases over 7 days; 28-day ratings for a ratings-only
    log), ``trending`` (the features' ``item_trending``), ``clicks`` / ``impressions`` (28 days,
    for the click posteriors). ``order`` = item rows by descending trending score (popularity ×
    trending, ties by id): :mod:`pipelines.retrieval.cold_start`, shared with ``recloop recommend``.
    """

    ids: np.ndarray
    category: np.ndarray
    age_days: np.ndarray
    popularity: np.ndarray
    trending: np.ndarray
    clicks: np.ndarray
    impressions: np.ndarray
    order: np.ndarray
    date: str | None
    row: dict[str, int] = field(default_factory=dict)
    catalog_cum: np.ndarray = field(init=False, repr=False, compare=False)
    """Cumulative normalised ``1 / (1 + impressions)`` ``(I,)`` float64, the ``catalog`` source's
    draw table (:func:`serving.sources.catalog_cumulative`), computed once at construction."""

    def __post_init__(self) -> None:
        self.catalog_cum = catalog_cumulative(self.impressions)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, date: str | None) -> ItemTable:
        f = frame.drop_duplicates("item_id", keep="last").reset_index(drop=True)

        def col(name: str, default: Any) -> np.ndarray:
            return f[name].to_numpy() if name in f.columns else np.full(len(f), default)

        ids = f["item_id"].astype(str).to_numpy()
        pop = item_popularity(col)  # the cold-start definition, shared with `recloop recommend`
        trending = col("item_trending", 1.0).astype(np.float64)
        order = trending_order(ids, pop, trending)
        return cls(
            ids=ids,
            category=col("item_category", "unknown").astype(str),
            age_days=col("item_age_days", -1).astype(np.int64),
            popularity=pop,
            trending=trending,
            clicks=col("item_clicks_28d", 0).astype(np.float64),
            impressions=col("item_impressions_28d", 0).astype(np.float64),
            order=order,
            date=date,
            row={i: r for r, i in enumerate(ids)},
        )

    @classmethod
    def load(cls, settings: Settings, item_ids: np.ndarray, as_of: str | None = None) -> ItemTable:
        """The newest item feature table under ``settings.features_dir`` (of a day no later than
        ``as_of``, ISO, when given: a replay of a past day sees that day's table), restricted to
        nothing (every item it lists) plus ``item_ids`` (the index's items) with defaults."""
        from pipelines.core import schema
        from pipelines.features.tables import read_table, table_dir

        dates = schema.partition_dates(table_dir(settings, "item"))
        if as_of is not None:
            dates = [d for d in dates if d.isoformat() <= as_of]
        frame = pd.DataFrame({"item_id": pd.Series([], dtype=object)})
        date = None
        if dates:
            date = dates[-1].isoformat()
            frame = read_table(settings, "item", dates[-1]).to_pandas()
        else:
            log.warning("no item feature table under %s: popularity is flat", settings.features_dir)
        # both as fixed-width strings: with an object array numpy compares every pair (at
        # 100k items, 10^10 comparisons: ~400 s of a large day's stage gate and service start)
        listed = frame["item_id"].astype(str).to_numpy(dtype=str)
        extra = np.setdiff1d(np.asarray(item_ids, dtype=str), listed)
        if len(extra):
            frame = pd.concat([frame, pd.DataFrame({"item_id": extra})], ignore_index=True)
            for c, d in (
                ("item_category", "unknown"),
                ("item_age_days", -1),
                ("item_trending", 1.0),
            ):
                if c in frame.columns:
                    frame[c] = frame[c].fillna(d)
            frame = frame.fillna(0)
        return cls.from_frame(frame, date)

    def rows(self, item_ids: list[str] | np.ndarray) -> np.ndarray:
        """Rows ``(N,)`` int64 of ``item_ids`` (``-1`` when unknown): dict lookups, cheaper than
        an index lookup for the few hundred ids of a request."""
        get = self.row.get
        return np.fromiter((get(i, -1) for i in item_ids), dtype=np.int64, count=len(item_ids))


class UserTower:
    """A feature-only user tower serving users outside the vocabulary, with a vector cache.

    ``columns``: the tower's feature columns as trained (feature-table names such as
    ``user_age``, or raw attribute names such as ``age`` when it was trained from
    ``users.parquet``); ``online``: the ``user_features`` feature each is read from (``age`` →
    ``user_age``). Values are passed as the feature table holds them (``-1`` / ``"unknown"`` =
    unknown), converted to missing for attribute-named columns (trained on raw, null-able
    attributes).

    Two caches, both bounded and living as long as the bundle: vectors by attribute tuple
    (:meth:`vectors`), and, per user id, the vector of a user whose features were read
    (:meth:`remember` / :meth:`cached`), so a returning user costs no Redis read; attributes are
    slowly changing and a bundle is replaced daily. Users without features are never cached
    (their row may be materialized later). Thread-safe: a lock guards the caches, encoding runs
    outside it.
    """

    def __init__(
        self, model: Any, columns: list[str], max_cache: int = 100_000, max_users: int = 200_000
    ) -> None:
        self.model = model
        self.columns = list(columns)
        self.online = [c if c.startswith("user_") else f"user_{c}" for c in self.columns]
        self.max_cache = max_cache
        self.max_users = max_users
        self._by_user: OrderedDict[str, tuple] = OrderedDict()
        self.hits = 0  # lookups answered from the cache
        self.encoded = 0  # attribute tuples run through the network
        self._cache: dict[tuple, np.ndarray] = {}
        self._item_vecs: np.ndarray | None = None  # (I, D) float32, read once when first asked
        self._lock = threading.Lock()

    @classmethod
    def for_model(cls, model: Any) -> UserTower | None:
        """The bundle's user tower, or None when it cannot encode users from online features
        (it reads user ids or history, or a column the ``user_features`` view lacks)."""
        from pipelines.features.tables import USER_FEATURES

        columns_of = getattr(model, "user_feature_columns", None)
        columns = columns_of() if columns_of is not None else None
        if not columns:
            return None
        tower = cls(model, columns)
        available = {n for n, _, _ in USER_FEATURES}
        lacking = [n for n in tower.online if n not in available]
        if lacking:
            log.warning("user tower reads %s, not in the user_features view: disabled", lacking)
            return None
        return tower

    def key(self, values: Mapping[str, Any]) -> tuple:
        """The cache key of one user: the ``online`` features' values, in order (absent = None)."""
        return tuple(values.get(n) for n in self.online)

    def _frame(self, keys: list[tuple]) -> pd.DataFrame:
        cols: dict[str, list[Any]] = {}
        for j, (col, name) in enumerate(zip(self.columns, self.online, strict=True)):
            vals = [k[j] for k in keys]
            if col != name:  # a raw attribute column: the feature table's "unknown" is missing
                vals = [None if v in (-1, "unknown") else v for v in vals]
            cols[col] = vals
        return pd.DataFrame(cols, index=pd.RangeIndex(len(keys)))

    def vectors(self, rows: list[Mapping[str, Any]]) -> np.ndarray:
        """Vectors ``(B, D)`` float32 of ``B`` users from their online features (``{feature:
        value}`` each, keyed by ``online`` names); cache misses are encoded in one batch."""
        keys = [self.key(r) for r in rows]
        with self._lock:
            found = [self._cache.get(k) for k in keys]
        missing = sorted({k for k, v in zip(keys, found, strict=True) if v is None}, key=repr)
        fresh: dict[tuple, np.ndarray] = {}
        if missing:
            vecs = np.asarray(self.model.encode_user_features(self._frame(missing)), np.float32)
            fresh = dict(zip(missing, vecs, strict=True))
            with self._lock:
                if len(self._cache) + len(fresh) > self.max_cache:
                    self._cache.clear()  # rare: more distinct attribute tuples than the cap
                self._cache.update(fresh)
        with self._lock:
            self.hits += sum(1 for v in found if v is not None)
            self.encoded += len(missing)
        if not keys:
            return np.zeros((0, self.model.user_embeddings().shape[1]), np.float32)
        return np.stack(
            [v if v is not None else fresh[k] for k, v in zip(keys, found, strict=True)]
        )

    def item_scores(self, values: Mapping[str, Any], cols: np.ndarray) -> np.ndarray:
        """The tower's scores ``(C,)`` float64 (inner products) of the user with online features
        ``values`` for the model's item columns ``cols`` ``(C,)`` int (-1: not in the model,
        NaN). The item embeddings are read from the model on first use."""
        if self._item_vecs is None:
            vecs = np.ascontiguousarray(self.model.item_embeddings(), dtype=np.float32)
            with self._lock:
                self._item_vecs = vecs
        user = self.vectors([values])[0]
        cols = np.asarray(cols, dtype=np.int64)
        out = np.full(len(cols), np.nan)
        ok = cols >= 0
        out[ok] = self._item_vecs[cols[ok]] @ user
        return out

    def cached(self, user_id: str) -> np.ndarray | None:
        """The vector ``(1, D)`` of ``user_id``'s remembered features, or None."""
        with self._lock:
            key = self._by_user.get(user_id)
            vec = None if key is None else self._cache.get(key)
        return None if vec is None else vec[None, :]

    def remember(self, user_id: str, values: Mapping[str, Any]) -> None:
        """Remember ``user_id``'s features (their cache key; the oldest user dropped beyond
        ``max_users``), whose vector :meth:`vectors` has cached."""
        key = self.key(values)
        with self._lock:
            self._by_user[user_id] = key
            while len(self._by_user) > self.max_users:
                self._by_user.popitem(last=False)

    def prewarm(self, frame: pd.DataFrame) -> int:
        """Encode every distinct tuple of ``frame``'s ``online`` columns (an offline user feature
        table) in one batch into the cache; returns how many were encoded."""
        lacking = [n for n in self.online if n not in frame.columns]
        if lacking:
            raise ValueError(f"user feature table lacks {lacking}")
        distinct = frame[self.online].drop_duplicates()
        rows = [
            {n: (None if pd.isna(v) else v) for n, v in zip(self.online, r, strict=True)}
            for r in distinct.itertuples(index=False, name=None)
        ]
        self.vectors(rows)
        return len(rows)


def _prewarm_user_tower(settings: Settings, tower: UserTower) -> None:
    """Fill ``tower``'s cache from the newest user feature table on disk (none: logged)."""
    import pyarrow.parquet as pq

    from pipelines.core import schema
    from pipelines.features.tables import table_dir, table_path

    dates = schema.partition_dates(table_dir(settings, "user"))
    if not dates:
        log.warning("no user feature table under %s: user tower cache starts empty",
                    settings.features_dir)  # fmt: skip
        return
    path = table_path(settings, "user", dates[-1])
    t0 = time.perf_counter()
    frame = pq.read_table(path, columns=tower.online).to_pandas()
    n = tower.prewarm(frame)
    log.info("user tower: %d distinct attribute tuples of %s encoded in %.2fs",
             n, path, time.perf_counter() - t0)  # fmt: skip


@dataclass
class LoadedBundle:
    """One registered serving bundle, loaded (read-only after :func:`load`)."""

    version: str
    pins: dict[str, Any]
    paths: dict[str, str | None]
    feature_service: str
    two_tower: Any
    users: Any  # pipelines.core.vocab.Vocab
    items: Any
    seen: Any  # scipy.sparse.csr_matrix (U, I)
    user_vecs: np.ndarray  # (U, D) float32
    index: Any  # pipelines.retrieval.faiss_index.ItemIndex
    ranker: Any | None
    item_table: ItemTable
    user_tower: UserTower | None = None
    mf: Any | None = None  # serving.sources.MFSource: the MF trained with the two-tower
    covisit: Any | None = None  # serving.sources.CovisitSource over the training matrix
    model_sources: dict[str, Any] = field(default_factory=dict)  # name → sources.ModelSource
    new_users: str | None = None
    """The stage gate's choice for users without a vector (``trending`` / ``user_tower``,
    version tag :data:`pipelines.release.registry.NEW_USERS_TAG`), or None (not judged)."""
    retrieval_weight: float | None = None
    """The stage gate's ``w`` for :func:`serving.rerank.retrieval_tempered` (version tag
    :data:`pipelines.release.registry.RETRIEVAL_WEIGHT_TAG`), or None (not judged)."""
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0

    @property
    def versions(self) -> dict[str, str | None]:
        """``{bundle, two_tower, index, ranker}`` version numbers, for responses and logs."""
        out: dict[str, str | None] = {"bundle": self.version}
        for comp in ("two_tower", "index", "ranker"):
            pin = self.pins.get(comp)
            out[comp] = str(pin["version"]) if pin else None
        return out

    @property
    def model_version(self) -> str:
        """The impression log's ``model_version``: ``bundle-<v>`` (pins in the registry)."""
        return f"bundle-{self.version}"

    def tower_scores(self, user: Mapping[str, Any] | None, ids: list[str]) -> np.ndarray | None:
        """The user tower's scores ``(C,)`` float64 of the user with hydrated online features
        ``user`` for candidates ``ids`` (NaN: an item the two-tower has no embedding for), or
        None without a user tower or features, or when the tower fails (logged)."""
        if self.user_tower is None or user is None or not ids:
            return None
        try:
            return self.user_tower.item_scores(user, self.items.encode(ids))
        except Exception as exc:  # noqa: BLE001 - the ranker's own order serves
            log.error("user tower scores of bundle %s failed: %r", self.version, exc)
            return None

    def user_row(self, user_id: str) -> int:
        return int(self.users.encode([user_id])[0])

    def seen_items(self, row: int) -> set[str]:
        """Item ids user ``row`` engaged with in the training window (empty for -1)."""
        if row < 0 or row >= self.seen.shape[0]:
            return set()
        cols = self.seen.indices[self.seen.indptr[row] : self.seen.indptr[row + 1]]
        return set(self.items.decode(cols))


def load(settings: Settings, ref: str, as_of: str | None = None) -> LoadedBundle:
    """Load bundle ``ref`` (alias or version number) from the registry; ``as_of`` (ISO day): the
    item table of that day or the newest before it (:meth:`ItemTable.load`; default the newest).

    Raises :class:`pipelines.release.registry.BundleError` (mismatched/corrupt set), ``ValueError``
    (unreadable model or index, naming the file) or ``FileNotFoundError``.
    """
    import scipy.sparse as sp

    from models.base import load_model
    from pipelines.core.artifact_meta import require_artifact_meta
    from pipelines.core.vocab import Vocab
    from pipelines.release import registry
    from pipelines.retrieval.faiss_index import ItemIndex

    t0 = time.perf_counter()
    b = registry.load_bundle(settings, ref)
    paths = b["paths"]
    tt = Path(paths["two_tower"])
    try:
        seen = sp.load_npz(tt / "seen.npz").tocsr()
        require_artifact_meta(tt)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{tt}: broken two-tower artifact ({exc})") from exc
    model = load_model(tt / "model")
    users, items = Vocab.load(tt / "users.json"), Vocab.load(tt / "items.json")
    user_vecs = np.ascontiguousarray(model.user_embeddings(), dtype=np.float32)
    index = ItemIndex.load(Path(paths["index"]))
    ranker = None
    if paths.get("ranker"):
        rk = Path(paths["ranker"])
        ranker = load_model(rk / "model" if (rk / "model").is_dir() else rk)
    ids = index.item_ids if index.item_ids is not None else np.asarray(items.ids)
    table = ItemTable.load(settings, np.asarray(ids, dtype=str), as_of)
    tower = UserTower.for_model(model)
    if tower is not None:
        _prewarm_user_tower(settings, tower)
    covisit = None
    if len(items) <= COVISIT_MAX_ITEMS:  # a dense (I, I) similarity pass; beyond: no source
        covisit = CovisitSource.from_matrix(seen, np.asarray(items.ids, dtype=str))
    out = LoadedBundle(
        version=str(b["bundle_version"]),
        pins={k: b.get(k) for k in ("two_tower", "index", "ranker")},
        paths=paths,
        feature_service=str(b.get("feature_service") or "serving_v1"),
        two_tower=model,
        users=users,
        items=items,
        seen=seen,
        user_vecs=user_vecs,
        index=index,
        ranker=ranker,
        item_table=table,
        user_tower=tower,
        mf=_load_mf(settings, b.get("logical_date")),
        covisit=covisit,
        model_sources=_load_model_sources(settings, b.get("logical_date")),
        new_users=_choice_tag(b.get("tags") or {}, "new_users", registry.NEW_USERS_TAG),
        retrieval_weight=_choice_tag(
            b.get("tags") or {}, "retrieval_weight", registry.RETRIEVAL_WEIGHT_TAG
        ),
    )
    out.load_seconds = time.perf_counter() - t0
    log.info(
        "loaded bundle %s (%s) in %.2fs: %d users, %d indexed items (%s), ranker %s, "
        "new users by %s (stage gate: %s)",
        out.version, ref, out.load_seconds, len(users), index.n_items, index.kind,
        out.versions["ranker"], f"user tower {tower.online}" if tower else "cold start",
        out.new_users or "not judged",
    )  # fmt: skip
    return out


def _choice_tag(tags: dict[str, str], key: str, name: str) -> Any:
    """Serving choice ``key`` from the bundle version's tag ``name``
    (:func:`serving.config.gate_choice_value`); None when absent or invalid (logged)."""
    from serving.config import gate_choice_value

    value = gate_choice_value(key, tags.get(name))
    if value is None and tags.get(name) is not None:
        log.warning("ignoring bundle tag %s=%r (not a valid %s)", name, tags[name], key)
    return value


def _load_mf(settings: Settings, logical_date: str | None) -> MFSource | None:
    """The ``mf`` candidate source: the MF artifact trained through the bundle's logical date
    (``artifacts/models/mf/date=D``), or None (:func:`_load_artifact`)."""
    art = _load_artifact(settings, "mf", logical_date)
    return None if art is None else MFSource.from_model(art.model, art.users, art.items)


def _load_model_sources(settings: Settings, logical_date: str | None) -> dict[str, ModelSource]:
    """The :data:`serving.sources.MODEL_SOURCES` with an artifact trained through the bundle's
    logical date, by name (usually none: the daily DAG trains them only when
    ``RECLOOP_TRAIN_EXTRA`` names them)."""
    out = {}
    for name in MODEL_SOURCES:
        art = _load_artifact(settings, name, logical_date)
        if art is not None:
            out[name] = ModelSource(name, art.model, art.users, np.asarray(art.items.ids, str))
    return out


def _load_artifact(settings: Settings, name: str, logical_date: str | None) -> Any | None:
    """Retriever artifact ``name`` trained through ``logical_date`` (``artifacts/models/<name>/
    date=D``), or None when there is none or it cannot be read (logged: the other sources
    serve). Found by date, not pinned by hash like the bundle's components."""
    from pipelines.retrieval.train import load_artifact

    if not logical_date:
        return None
    try:
        return load_artifact(settings, name, logical_date)
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - a broken model leaves the other sources serving
        log.error("%s source for %s not loaded: %r", name, logical_date, exc)
        return None


def smoke_score(bundle: LoadedBundle, n_users: int = 4, k: int = 10) -> None:
    """Score a few known users end to end without Redis (vectors → index → ranker on default
    features), and a new user with default features through the user tower when there is one;
    :class:`SmokeError` if anything raises or returns non-finite or empty results."""
    from pipelines.features import tables as ft

    try:
        rows = np.arange(min(n_users, len(bundle.user_vecs)))
        queries = bundle.user_vecs[rows] if len(rows) else np.zeros((1, bundle.index.dim), "f4")
        if bundle.user_tower is not None:
            new = bundle.user_tower.vectors([{n: ft.DEFAULTS[n] for n in bundle.user_tower.online}])
            if new.shape != (1, bundle.index.dim) or not np.isfinite(new).all():
                raise SmokeError(f"user tower returned {new!r} (index dim {bundle.index.dim})")
            queries = np.concatenate([queries, new]).astype(np.float32)
        ids, scores = bundle.index.search(queries, k)
        if ids.shape[0] != len(queries) or not np.isfinite(scores[:, 0]).all():
            raise SmokeError(f"index returned no finite top result ({scores[:, :3]})")
        if bundle.ranker is not None:
            cols = bundle.ranker.feature_columns
            frame = pd.DataFrame({c: [ft.DEFAULTS.get(c, 0)] * k for c in cols})
            probs = bundle.ranker.predict_proba(frame)
            if probs.shape != (k,) or not np.isfinite(probs).all():
                raise SmokeError(f"ranker returned {probs!r}")
    except SmokeError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure rejects the bundle
        raise SmokeError(f"bundle {bundle.version} failed its smoke test: {exc!r}") from exc


def warm_up(settings: Settings, bundle: LoadedBundle) -> None:
    """First-call costs paid at load, not by a request: the Feast read plan of the ranker's
    feature service (registry read), scipy's special functions, the ranker's trace."""
    from pipelines.features import online
    from serving.rerank import thompson_probabilities

    thompson_probabilities(np.array([1.0, 2.0]), np.array([3.0, 4.0]))
    try:  # the protobuf decoders of the Redis fast path (built once per process)
        online.column_decoders()
    except Exception as exc:  # noqa: BLE001 - requests build them on first use instead
        log.warning("warm-up: no Redis value decoders (%r)", exc)
    service = "ranker_v1"
    if bundle.ranker is not None and getattr(bundle.ranker, "feature_service", ""):
        service = bundle.ranker.feature_service
    try:
        online.read_plan(settings, service)
    except Exception as exc:  # noqa: BLE001 - the registry may not exist yet; requests will try
        log.warning("warm-up: no Feast read plan for %s yet (%r)", service, exc)


class BundleManager:
    """The arms' bundles and the reload logic (thread-safe; swaps are single assignments).

    ``rejected_versions``: arm → ``(version, time.monotonic() of the rejection)`` of the last
    bundle that failed to load or score; it is tried again after ``retry_rejected_s`` seconds (a
    fixed bundle file, a transient failure the registry did not name), never rejected for ever.
    A load that failed because the registry store did (:func:`pipelines.release.registry.
    is_store_error`) is not a rejection: it is tried again at the next check."""

    def __init__(
        self, settings: Settings, smoke_users: int = 4, retry_rejected_s: float = 300.0
    ) -> None:
        self.settings = settings
        self.smoke_users = smoke_users
        self.retry_rejected_s = retry_rejected_s
        self.arms: dict[str, LoadedBundle | None] = {a: None for a in ARMS}
        self.rejected: dict[str, int] = {a: 0 for a in ARMS}
        self.reloads: dict[str, int] = {a: 0 for a in ARMS}
        self.rejected_versions: dict[str, tuple[str, float]] = {}
        self.last_error: str | None = None
        self.last_check: float | None = None
        self._lock = threading.Lock()  # one check at a time

    def get(self, arm: str) -> LoadedBundle | None:
        return self.arms.get(arm)

    def check(self) -> dict[str, str]:
        """Follow the registry aliases once; returns ``{arm: what happened}``.

        Outcomes: ``unchanged``, ``loaded <v>``, ``rejected <v>: <error>``, ``rejected <v>
        (earlier)`` (within ``retry_rejected_s`` of its rejection), ``unset`` (the alias points
        nowhere: a challenger is dropped; a champion is kept), ``registry error: ...`` (the
        registry store did not answer, after :func:`~pipelines.release.registry.get_alias`'s
        retries, or failed while the bundle loaded: nothing changes, the next check tries again).
        """
        from pipelines.release import registry

        out: dict[str, str] = {}
        with self._lock:
            self.last_check = time.time()
            for arm in ARMS:
                try:
                    version = registry.get_alias(self.settings, arm)
                except Exception as exc:  # noqa: BLE001 - keep serving what we have
                    out[arm] = f"registry error: {exc!r}"
                    log.error("reload check: registry unreachable for %s: %r", arm, exc)
                    continue
                current = self.arms[arm]
                if version is None:
                    if arm == "challenger" and current is not None:
                        self.arms[arm] = None
                        log.info("challenger alias unset: challenger arm dropped")
                    out[arm] = "unset"
                    continue
                if current is not None and current.version == version:
                    out[arm] = self._refresh_item_table(arm, current)
                    continue
                if self._still_rejected(arm, version):
                    out[arm] = f"rejected {version} (earlier)"
                    continue
                out[arm] = self._load_into(arm, version)
        return out

    def _load_into(self, arm: str, version: str) -> str:
        try:
            other = self.arms["challenger" if arm == "champion" else "champion"]
            if other is not None and other.version == version:
                fresh = other  # the same bundle serves both arms (e.g. a challenger promoted)
            else:
                fresh = load(self.settings, version)
                smoke_score(fresh, self.smoke_users)
                warm_up(self.settings, fresh)
        except Exception as exc:  # noqa: BLE001 - a bad bundle must never take the service down
            from pipelines.release.registry import is_store_error

            if is_store_error(exc):  # the store failed, not the bundle: try at the next check
                self.last_error = f"{arm} bundle {version}: registry error {exc!r}"
                log.error("reload: registry error loading %s bundle %s (%r); tried again at "
                          "the next check", arm, version, exc)  # fmt: skip
                return f"registry error loading {version}: {exc!r}"
            self.rejected[arm] += 1
            self.rejected_versions[arm] = (version, time.monotonic())
            self.last_error = f"{arm} bundle {version}: {exc}"
            old = self.arms[arm]
            log.error(
                "reload: rejected %s bundle %s (%r); still serving %s",
                arm, version, exc, old.version if old else "nothing",
            )  # fmt: skip
            return f"rejected {version}: {exc}"
        old = self.arms[arm]
        self.arms[arm] = fresh  # the atomic swap
        self.reloads[arm] += 1
        self.rejected_versions.pop(arm, None)
        log.info("reload: %s now bundle %s (was %s)", arm, version, old.version if old else None)
        return f"loaded {version}"

    def _refresh_item_table(self, arm: str, current: LoadedBundle) -> str:
        """``unchanged``, or, when a newer item feature table than ``current``'s was written
        since it loaded (a champion that serves another day: the trending list, the click
        posteriors of exploration and the catalog weights are the day's, as a freshly loaded
        bundle's and the served OPE's replay are), ``unchanged, item table D`` after swapping in
        the same bundle with that table. A table that fails to load keeps the current one; a
        bundle without an item table (a stand-in) is left as it is."""
        from pipelines.core import schema
        from pipelines.features.tables import table_dir

        if getattr(current, "item_table", None) is None:
            return "unchanged"
        have = current.item_table.date
        try:
            dates = schema.partition_dates(table_dir(self.settings, "item"))
            if not dates or (have is not None and dates[-1].isoformat() <= have):
                return "unchanged"
            ids = current.index.item_ids
            ids = np.asarray(current.items.ids if ids is None else ids, dtype=str)
            table = ItemTable.load(self.settings, ids)
        except Exception as exc:  # noqa: BLE001 - keep serving the table we have
            log.error("reload: newer item table for %s bundle %s unreadable (%r); keeping %s",
                      arm, current.version, exc, have)  # fmt: skip
            return f"unchanged (newer item table unreadable: {exc!r})"
        self.arms[arm] = replace(current, item_table=table)  # the atomic swap
        log.info("reload: %s bundle %s now serves item table %s (was %s)",
                 arm, current.version, table.date, have)  # fmt: skip
        return f"unchanged, item table {table.date}"

    def _still_rejected(self, arm: str, version: str) -> bool:
        """Whether ``version`` was rejected for ``arm`` less than ``retry_rejected_s`` ago."""
        seen = self.rejected_versions.get(arm)
        if seen is None or seen[0] != version:
            return False
        return time.monotonic() - seen[1] < self.retry_rejected_s

    def ready(self) -> tuple[bool, str]:
        """Ready when a champion is loaded and its index answers a query."""
        b = self.arms["champion"]
        if b is None:
            return False, "no champion bundle loaded"
        try:
            ids, _ = b.index.search(np.zeros((1, b.index.dim), dtype=np.float32), 1)
        except Exception as exc:  # noqa: BLE001
            return False, f"champion index does not answer: {exc!r}"
        return True, f"champion bundle {b.version}"


def now_date() -> str:
    """Today's UTC date (the impression log partition)."""
    return dt.datetime.now(dt.UTC).date().isoformat()
