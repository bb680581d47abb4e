"""Retrieval training for one logical date: interaction matrices, models, the item index, and
forward evaluation.

**Data.** The validated logs up to and including day D (``RECLOOP_TRAIN_WINDOW_DAYS``-style window,
default all history) are read with DuckDB; positives are ``click``, ``purchase`` and ``rating``
events (impressions alone are not positives). The implicit matrix holds per (user, item) the count
of positive events, purchases counted ``PURCHASE_WEIGHT`` times; the explicit matrix holds the last
rating. Each artifact carries its own vocabularies (raw id ↔ row), built deterministically from
the window (sorted ids; items also from ``items.parquet`` when created by D, so a new item with no
interactions is still indexable through the two-tower item tower) — a rerun of D gives the same
rows whatever ran after it.

**Artifacts** (``artifacts/models/<name>/date=D/``): the model folder (``models.base`` format),
``users.json`` / ``items.json`` (vocabularies), ``seen.npz`` (the training matrix, so
recommendations exclude what the user already engaged with) and ``meta.json``. Written to a temp
folder and renamed into place.

**Evaluation is forward-chained**: on day D, the models trained through D−1 (what would serve on
day D) are scored against D's positives beside the baselines trained on the same history — no
model is ever scored on data it saw.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.core.vocab import Vocab

log = logging.getLogger(__name__)

POSITIVE_EVENTS = ("click", "purchase", "rating")
PURCHASE_WEIGHT = 2.0
MODELS = ("mf", "mf_explicit", "two_tower", "popular", "itemknn", "userknn")
BASELINES = ("popular", "itemknn", "userknn")
POPULAR_WINDOW_DAYS = 7
#: ALS settings for the daily job, chosen on the demo simulator's validation day (train days 1-6,
#: validate day 7; benchmarks/bench_retrieval.py). With ~2 positives per user, weak regularization
#: overfits the long tail (NDCG@10 0.003 at 0.05) and strong regularization toward 0 leaves a
#: popularity model; instead user factors are regularized toward their demographic groups' and item
#: factors toward their category's embeddings (``MF_USER_GROUPS`` / ``MF_ITEM_GROUPS``), and scores
#: add a fixed ``popularity_weight * log(1 + positives)`` prior.
MF_PARAMS: dict[str, Any] = {
    "factors": 64,
    "regularization": 100.0,
    "alpha": 20.0,
    "iterations": 15,
    "group_regularization": 1.0,
    "popularity_weight": 0.1,
}
#: side attributes of MF: per attribute, the feature-store column or the raw ``users.parquet`` /
#: ``items.parquet`` column (the first one present); numeric ones are cut into ``MF_BANDS`` bands
MF_USER_GROUPS = (("user_age", "age"), ("user_gender", "gender"), ("user_country", "country"))
MF_ITEM_GROUPS = (("item_category", "category"),)
MF_BANDS = {"user_age": 10.0, "age": 10.0}
#: Two-tower settings for the daily job, chosen on the demo simulator's validation day (train days
#: 1-6, validate day 7; benchmarks/bench_retrieval.py). With ~2 positives per user, id embeddings,
#: the history mean and near-unique numeric features (counts, tenure, price) only memorize, and
#: the count features computed through D contain the training positives themselves; the towers
#: read stable attributes and learn taste over a fixed log-popularity prior, in 256-row batches
#: (~13 steps an epoch instead of 3) with a 10 % validation split for early stopping.
TWO_TOWER_PARAMS: dict[str, Any] = {
    "dim": 64,
    "batch_size": 256,
    "epochs": 40,
    "patience": 5,
    "val_fraction": 0.1,
    "id_dropout": 0.0,
    "user_ids": False,
    "item_ids": False,
    "history": False,
    "popularity_prior": True,
    "popularity_weight": 0.5,
}
#: feature-store columns the towers read (attributes; others are leaky or near-unique, see above)
TWO_TOWER_USER_FEATURES = ("user_age", "user_gender", "user_country", "age", "gender", "country")
TWO_TOWER_ITEM_FEATURES = ("item_category", "category")


@dataclass
class TrainingData:
    """Everything a retrieval model is trained from, for logical date ``date``.

    ``implicit`` ``(U, I)`` float32 counts; ``explicit`` ``(U, I)`` ratings (may be empty);
    ``recent`` ``(I,)`` positive events per item in the last ``POPULAR_WINDOW_DAYS`` days.
    """

    date: dt.date
    users: Vocab
    items: Vocab
    implicit: sp.csr_matrix
    explicit: sp.csr_matrix
    recent: np.ndarray
    n_events: int


def _files(settings: Settings, first: dt.date | None, last: dt.date) -> list[str]:
    days = [
        d
        for d in schema.partition_dates(settings.validated_dir)
        if d <= last and (first is None or d >= first)
    ]
    return [
        str(f)
        for d in days
        for f in sorted(schema.partition_dir(settings.validated_dir, d).glob("*.parquet"))
    ]


def read_positives(settings: Settings, last: dt.date, first: dt.date | None = None) -> pd.DataFrame:
    """Positive events of the validated days in ``[first, last]``: user_id, item_id, event, value, ts."""
    import duckdb

    files = _files(settings, first, last)
    if not files:
        return pd.DataFrame(columns=["user_id", "item_id", "event", "value", "ts"])
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    events = ", ".join(f"'{e}'" for e in POSITIVE_EVENTS)
    with duckdb.connect() as con:
        return con.execute(
            f"SELECT user_id, item_id, event, value, ts FROM read_parquet([{listed}]) "
            f"WHERE event IN ({events}) ORDER BY ts, user_id, item_id"
        ).df()


def _items_created_by(settings: Settings, date: dt.date) -> list[str]:
    path = settings.data_dir / "items.parquet"
    if not path.exists():
        return []
    items = pd.read_parquet(path, columns=["item_id", "created_date"])
    created = pd.to_datetime(items["created_date"]).dt.date
    return items.loc[created.isna() | (created <= date), "item_id"].astype(str).tolist()


def matrices(
    events: pd.DataFrame, users: Vocab, items: Vocab
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(implicit counts, explicit last ratings), each ``(len(users), len(items))``; events with ids
    outside the vocabularies are dropped."""
    shape = (len(users), len(items))
    u = users.encode(events["user_id"])
    i = items.encode(events["item_id"])
    keep = (u >= 0) & (i >= 0)
    ev = events["event"].to_numpy()
    weight = np.where(ev == "purchase", PURCHASE_WEIGHT, 1.0)
    implicit = sp.csr_matrix((weight[keep].astype(np.float32), (u[keep], i[keep])), shape=shape)
    implicit.sum_duplicates()
    rated = keep & (ev == "rating")
    if rated.any():
        last = pd.DataFrame({"u": u[rated], "i": i[rated], "v": events["value"].to_numpy()[rated]})
        last = last.groupby(["u", "i"], sort=True).last().reset_index()
        explicit = sp.csr_matrix(
            (last["v"].astype(np.float32), (last["u"], last["i"])), shape=shape
        )
    else:
        explicit = sp.csr_matrix(shape, dtype=np.float32)
    return implicit, explicit


def load_training_data(
    settings: Settings, date: str | dt.date, window_days: int | None = None
) -> TrainingData:
    """Positives of the validated days up to ``date`` (the last ``window_days`` when given)."""
    day = schema.parse_date(date)
    first = day - dt.timedelta(days=window_days - 1) if window_days else None
    events = read_positives(settings, day, first)
    if events.empty:
        raise ValueError(
            f"no positive events (click/purchase/rating) in validated logs up to {day} under {settings.validated_dir}"
        )
    users = Vocab(sorted(events["user_id"].astype(str).unique()))
    items = Vocab(
        sorted(set(events["item_id"].astype(str)) | set(_items_created_by(settings, day)))
    )
    implicit, explicit = matrices(events, users, items)
    ts = pd.to_datetime(events["ts"], utc=True)
    recent_mask = (
        ts >= pd.Timestamp(day, tz="UTC") - pd.Timedelta(days=POPULAR_WINDOW_DAYS - 1)
    ).to_numpy()
    recent = np.bincount(items.encode(events["item_id"][recent_mask]), minlength=len(items)).astype(
        np.float32
    )
    return TrainingData(day, users, items, implicit.tocsr(), explicit.tocsr(), recent, len(events))


def _entity_features(
    settings: Settings, entity: str, date: dt.date, vocab: Vocab
) -> pd.DataFrame | None:
    """Feature-store table of ``entity`` as of ``date`` (attributes otherwise), indexed by row."""
    key = f"{entity}_id"
    frame = None
    try:
        from pipelines.features.tables import read_table

        frame = read_table(settings, entity, date).to_pandas()
    except (FileNotFoundError, ValueError, OSError):
        path = settings.data_dir / f"{entity}s.parquet"
        frame = pd.read_parquet(path) if path.exists() else None
    if frame is None or frame.empty:
        return None
    frame = frame.drop(columns=[c for c in ("event_timestamp", "created") if c in frame.columns])
    frame = frame.drop_duplicates(key, keep="last")
    rows = vocab.encode(frame[key])
    frame = frame[rows >= 0].drop(columns=[key])
    frame.index = rows[rows >= 0]
    return frame.sort_index()


def _columns(frame: pd.DataFrame | None, names: tuple[str, ...]) -> pd.DataFrame | None:
    """The listed columns of ``frame`` that it has (``None`` when it has none of them)."""
    if frame is None:
        return None
    keep = [c for c in names if c in frame.columns]
    return frame[keep] if keep else None


def group_codes(
    frame: pd.DataFrame | None, attributes: tuple[tuple[str, ...], ...], n: int
) -> np.ndarray | None:
    """Integer codes ``(n, A)`` of the categorical side attributes of rows ``0..n-1`` (``-1`` where
    unknown), one column per attribute of ``attributes`` that ``frame`` has (the first of its
    alternative column names present); numeric columns named in ``MF_BANDS`` are cut into bands of
    that width first. Codes follow the sorted distinct values, so they are deterministic.
    ``None`` when ``frame`` has none of the attributes."""
    if frame is None:
        return None
    frame = frame.reindex(range(n))
    out = []
    for names in attributes:
        col = next((c for c in names if c in frame.columns), None)
        if col is None:
            continue
        values = frame[col]
        if col in MF_BANDS and pd.api.types.is_numeric_dtype(values):
            values = np.floor(values / MF_BANDS[col])
        known = values.notna().to_numpy()
        codes = np.full(n, -1, dtype=np.int64)
        if known.any():
            kept = values[known].astype(str)
            codes[known] = pd.Categorical(kept, categories=sorted(kept.unique())).codes
        out.append(codes)
    return np.stack(out, axis=1) if out else None


def build_model(name: str, data: TrainingData, settings: Settings, seed: int = 0) -> Any:
    """Construct and fit model ``name`` (one of ``MODELS``) on ``data``."""
    from models.als import ALS
    from models.baselines import ItemKNN, MostPopular, UserKNN
    from models.two_tower import TwoTower

    if name == "mf":
        users = _entity_features(settings, "user", data.date, data.users)
        items = _entity_features(settings, "item", data.date, data.items)
        return ALS(**MF_PARAMS, seed=seed).fit(
            data.implicit,
            user_groups=group_codes(users, MF_USER_GROUPS, len(data.users)),
            item_groups=group_codes(items, MF_ITEM_GROUPS, len(data.items)),
        )
    if name == "mf_explicit":
        if data.explicit.nnz == 0:
            raise ValueError(f"no rating events up to {data.date}: explicit MF needs ratings")
        return ALS(
            factors=32, regularization=0.1, iterations=15, feedback="explicit", seed=seed
        ).fit(data.explicit)
    if name == "two_tower":
        users = _entity_features(settings, "user", data.date, data.users)
        items = _entity_features(settings, "item", data.date, data.items)
        model = TwoTower(**TWO_TOWER_PARAMS, seed=seed)
        return model.fit(
            data.implicit,
            user_features=_columns(users, TWO_TOWER_USER_FEATURES),
            item_features=_columns(items, TWO_TOWER_ITEM_FEATURES),
        )
    if name == "popular":
        return MostPopular(window_days=POPULAR_WINDOW_DAYS).fit(
            data.implicit, item_weights=data.recent
        )
    if name == "itemknn":
        return ItemKNN(k=50).fit(data.implicit)
    if name == "userknn":
        return UserKNN(k=50).fit(data.implicit)
    raise ValueError(f"unknown model {name!r}: expected one of {MODELS}")


def artifact_dir(settings: Settings, name: str, date: str | dt.date) -> Path:
    return settings.artifacts_dir / "models" / name / f"date={schema.parse_date(date).isoformat()}"


def save_artifact(
    settings: Settings, name: str, model: Any, data: TrainingData, meta: dict[str, Any]
) -> Path:
    """Write model + vocabularies + seen matrix + meta to ``artifact_dir`` atomically."""

    def build(tmp: Path) -> None:
        model.save(tmp / "model")
        data.users.save(tmp / "users.json")
        data.items.save(tmp / "items.json")
        sp.save_npz(tmp / "seen.npz", data.implicit.astype(np.float32))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))

    return schema.publish_dir(build, artifact_dir(settings, name, data.date))


@dataclass
class Artifact:
    """A trained model loaded back with its vocabularies and seen matrix."""

    name: str
    date: dt.date
    model: Any
    users: Vocab
    items: Vocab
    seen: sp.csr_matrix
    meta: dict[str, Any]
    path: Path


def latest_date(
    settings: Settings, name: str, on_or_before: dt.date | None = None
) -> dt.date | None:
    """Date of the newest artifact of ``name`` (optionally no later than ``on_or_before``)."""
    dates = [
        d
        for d in schema.partition_dates(settings.artifacts_dir / "models" / name)
        if on_or_before is None or d <= on_or_before
    ]
    return dates[-1] if dates else None


def load_artifact(settings: Settings, name: str, date: str | dt.date | None = None) -> Artifact:
    """Load artifact ``name`` of ``date`` (default: the newest). ``FileNotFoundError`` if none."""
    from models.base import load_model

    day = schema.parse_date(date) if date else latest_date(settings, name)
    if day is None:
        raise FileNotFoundError(
            f"no trained {name!r} model under {settings.artifacts_dir / 'models' / name}: run `recloop run --date D` first"
        )
    folder = artifact_dir(settings, name, day)
    if not folder.exists():
        raise FileNotFoundError(f"no {name!r} model trained for {day} at {folder}")
    try:
        seen = sp.load_npz(folder / "seen.npz").tocsr()
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder}: broken artifact ({exc})") from exc
    model = load_model(folder / "model")
    return Artifact(
        name,
        day,
        model,
        Vocab.load(folder / "users.json"),
        Vocab.load(folder / "items.json"),
        seen,
        meta,
        folder,
    )


def train(
    settings: Settings, name: str, date: str | dt.date, window_days: int | None = None
) -> dict[str, Any]:
    """Train model ``name`` on the validated history up to ``date`` and save the artifact."""
    data = load_training_data(settings, date, window_days)
    t0 = time.perf_counter()
    model = build_model(name, data, settings, seed=settings.seed)
    seconds = time.perf_counter() - t0
    meta = {
        "model": name,
        "version": f"{name}-{data.date.isoformat()}",
        "trained_through": data.date.isoformat(),
        "window_days": window_days,
        "n_users": len(data.users),
        "n_items": len(data.items),
        "n_events": data.n_events,
        "nnz": int(data.implicit.nnz),
    }
    # the fit time is logged and returned, not saved: a rerun must write identical bytes
    path = save_artifact(settings, name, model, data, meta)
    log.info(
        "trained %s through %s in %.1fs: %d users x %d items, %d nonzeros -> %s",
        name,
        data.date,
        seconds,
        len(data.users),
        len(data.items),
        data.implicit.nnz,
        path,
    )
    return {**meta, "fit_seconds": round(seconds, 3), "path": str(path)}


def build_item_index(
    settings: Settings, date: str | dt.date, name: str = "two_tower", recall_target: float = 0.95
) -> dict[str, Any]:
    """FAISS index over the item embeddings of model ``name`` trained through ``date``; recall@10
    is measured against exact search on real user vectors (a build below target fails)."""
    from pipelines.retrieval.faiss_index import build_index, index_dir

    art = load_artifact(settings, name, date)
    items = art.model.item_embeddings()
    queries = art.model.user_embeddings()
    version = art.meta["version"]
    index = build_index(
        items,
        np.array(art.items.ids),
        sample_queries=queries,
        recall_target=recall_target,
        k=10,
        model_version=version,
        seed=settings.seed,
    )
    root = settings.artifacts_dir / "index"
    path = index.save(root)
    assert path == index_dir(root, version)
    log.info(
        "index for %s: %s, recall@10 %.4f",
        version,
        index.meta.get("kind"),
        index.meta.get("recall", float("nan")),
    )
    return {
        k: v for k, v in index.meta.items() if isinstance(v, (str, int, float, bool, type(None)))
    } | {"path": str(path)}


def day_relevance(settings: Settings, date: dt.date, users: Vocab, items: Vocab) -> sp.csr_matrix:
    """Day ``date``'s positives as a ``(U, I)`` graded matrix over the given vocabularies
    (1 = click/rating, 2 = purchase; ids the vocabularies do not know are dropped)."""
    events = read_positives(settings, date, date)
    implicit, _ = matrices(events, users, items)
    implicit.data = np.minimum(implicit.data, 2.0)
    return implicit


def evaluate_forward(
    settings: Settings,
    date: str | dt.date,
    k: int = 10,
    models: tuple[str, ...] = ("mf", "two_tower"),
) -> dict[str, Any]:
    """Score the models trained through D−1 on day D's positives, beside baselines fit on the same
    history. Writes ``reports/eval/date=D.json`` and returns it; says so when there is no D−1 model."""
    from pipelines.core.metrics import compare_models

    day = schema.parse_date(date)
    prev = day - dt.timedelta(days=1)
    loaded = {}
    for name in models:
        try:
            loaded[name] = load_artifact(settings, name, prev)
        except FileNotFoundError:
            continue
    out: dict[str, Any] = {"date": day.isoformat(), "trained_through": prev.isoformat(), "k": k}
    if not loaded:
        out["note"] = f"no models trained through {prev}: nothing to evaluate yet"
        log.info(out["note"])
    else:
        ref = next(iter(loaded.values()))
        data = load_training_data(settings, prev)
        if data.users.ids != ref.users.ids or data.items.ids != ref.items.ids:
            raise RuntimeError(
                f"validated history through {prev} changed since the models were trained: retrain {prev} first"
            )
        test = day_relevance(settings, day, data.users, data.items)
        candidates = {name: art.model for name, art in loaded.items()}
        for name in BASELINES:
            candidates[name] = build_model(name, data, settings, seed=settings.seed)
        table = compare_models(candidates, data.implicit, test, k=k, recall_ks=(100,))
        out["metrics"] = json.loads(table.to_json(orient="index"))
        log.info(
            "forward evaluation on %s (models through %s):\n%s",
            day,
            prev,
            table.to_string(float_format="%.4f"),
        )
    schema.write_json_atomic(out, settings.reports_dir / "eval" / f"date={day.isoformat()}.json")
    return out


def recommend(
    settings: Settings,
    name: str,
    k: int,
    user_ids: list[str] | None = None,
    date: str | None = None,
) -> pd.DataFrame:
    """Top-``k`` unseen items for the listed users (default: every user the model knows).

    Returns ``user_id, item_id, rank, score`` (rank 1 = best). Unknown users are logged and
    skipped; ``popular`` gives them the popular list instead."""
    art = load_artifact(settings, name, date)
    ids = art.users.ids if user_ids is None else [str(u) for u in user_ids]
    rows = art.users.encode(ids)
    unknown = [u for u, r in zip(ids, rows, strict=True) if r < 0]
    if unknown:
        log.warning(
            "%d user id(s) unknown to %s (e.g. %s): skipped",
            len(unknown),
            art.meta.get("version"),
            unknown[:5],
        )
    known = rows[rows >= 0]
    items, scores = art.model.recommend(known, k, exclude=art.seen)
    n = items.shape[1]
    frame = pd.DataFrame(
        {
            "user_id": np.repeat(np.array(art.users.ids, dtype=object)[known], n)
            if len(known)
            else [],
            "item_idx": items.reshape(-1),
            "rank": np.tile(np.arange(1, n + 1), len(known)),
            "score": scores.reshape(-1),
        }
    )
    frame = frame[frame["item_idx"] >= 0]
    frame.insert(1, "item_id", np.array(art.items.ids, dtype=object)[frame["item_idx"].to_numpy()])
    return frame.drop(columns="item_idx").reset_index(drop=True)


def predict_pairs(
    settings: Settings, name: str, pairs: pd.DataFrame, date: str | None = None
) -> pd.DataFrame:
    """Scores for ``pairs`` (columns ``user_id``, ``item_id``): adds ``score`` (NaN where an id is
    unknown to the model) and ``known``."""
    for col in ("user_id", "item_id"):
        if col not in pairs.columns:
            raise ValueError(
                f"pairs need columns user_id and item_id; missing {col!r} (have {list(pairs.columns)})"
            )
    art = load_artifact(settings, name, date)
    u = art.users.encode(pairs["user_id"].astype(str))
    i = art.items.encode(pairs["item_id"].astype(str))
    known = (u >= 0) & (i >= 0)
    scores = np.full(len(pairs), np.nan, dtype=np.float64)
    if known.any():
        scores[known] = art.model.score(u[known], i[known])
    out = pairs[["user_id", "item_id"]].copy()
    out["score"] = scores
    out["known"] = known
    if (~known).any():
        log.warning(
            "%d of %d pairs name an id unknown to %s: score left empty",
            int((~known).sum()),
            len(pairs),
            art.meta.get("version"),
        )
    return out
