"""Retrieval training for one logical date (the ``train_mf``, ``train_two_tower``,
``train_popular`` and ``train_itemknn`` tasks; ``ncf``, ``bpr``, ``userknn`` and ``mf_explicit``
through ``recloop train``): fit a model on the training data of
:mod:`pipelines.retrieval.data` and save it as an artifact.

**Artifacts** (``artifacts/models/<name>/date=D/``): the model folder (``models.base`` format),
``users.json`` / ``items.json`` (vocabularies), ``seen.npz`` (the training matrix, so
recommendations exclude what the user already engaged with) and ``meta.json``
(:mod:`pipelines.core.artifact_meta`). Written to a temp folder and renamed into place.
:func:`load_artifact` reads one back.

The item index over the two-tower's embeddings is :mod:`pipelines.retrieval.index` (task
``build_index``), forward evaluation :mod:`pipelines.retrieval.evaluate` (task ``evaluate``),
recommendations and pair scores from an artifact :mod:`pipelines.retrieval.predict`.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from pipelines.core import distributed, layout, schema
from pipelines.core.artifact_meta import require_artifact_meta, write_artifact_meta
from pipelines.core.settings import Settings
from pipelines.core.vocab import Vocab
from pipelines.retrieval.data import (
    POPULAR_WINDOW_DAYS,
    TrainingData,
    entity_features,
    group_codes,
    item_impressions,
    load_training_data,
    select_columns,
)

log = logging.getLogger(__name__)

MODELS = (
    "mf", "mf_explicit", "two_tower", "popular", "itemknn", "userknn", "ncf", "bpr",
    "gru4rec", "sasrec", "bert4rec", "dssm",
)  # fmt: skip
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
#: ``items.parquet`` column (the first one present); numeric ones are cut into ``pipelines.retrieval.data.MF_BANDS`` bands
MF_USER_GROUPS = (("user_age", "age"), ("user_gender", "gender"), ("user_country", "country"))
MF_ITEM_GROUPS = (("item_category", "category"),)
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
    "max_steps_per_epoch": 1000,  # ~13 a day at demo; ~600 on large day 2, 28 days: ~9,000
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
#: NCF (``models.ncf``: GMF + MLP fused, BCE with 4 sampled negatives per positive): the
#: chapter's sizes (MLP embeddings 64, layers 128-64-32) and a 32-factor GMF tower; 10 epochs,
#: the best of 5/7/10/20 on MovieLens 100K's validation split (benchmarks/bench_ncf_bpr.py
#: --validate: more epochs overfit, NDCG@10 0.179 at 10, 0.147 at 20)
NCF_PARAMS: dict[str, Any] = {
    "factors": 32,
    "embed_dim": 64,
    "layers": (128, 64, 32),
    "n_negatives": 4,
    "epochs": 10,
    "batch_size": 1024,
    "lr": 1e-3,
}
#: BPR-trained MF (``models.bpr``), Adam over sampled triples; L2 and epochs the best of a small
#: grid on the same validation split (NDCG@10 0.168; L2 1e-3 / 30 epochs: 0.132)
BPR_PARAMS: dict[str, Any] = {
    "factors": 64,
    "lr": 0.01,
    "regularization": 0.01,
    "epochs": 15,
    "batch_size": 1024,
    "optimizer": "adam",
}

#: item KNN (``models.baselines.ItemKNN``) for top-N ranking: each of the user's items votes
#: ``sim`` for its own 50 neighbours, votes summed (not divided by the candidate's neighbours'
#: similarities), cosine shrunk by ``co / (sqrt(n_i n_j) + 10)``. On MovieLens 100K's validation
#: split (benchmarks/bench_itemknn.py --validate) NDCG@10 0.153 against the reference formula's
#: 0.126 (most-popular 0.130); shrinkage 2-10 tie there, 10 is better on the simulator (truth
#: NDCG@10 0.148 vs 0.137 at 1, validation day). ``popularity_weight`` stays 0: a log-popularity
#: prior over the last 7 days (``item_counts=data.recent``) gives 0.186 with the reference's
#: normalisation, but on both data sets its list is then the 7-day popular list's (on the
#: simulator it scores as that list from w = 3; benchmarks/README.md, "Item KNN for top-N")
ITEMKNN_PARAMS: dict[str, Any] = {
    "k": 50,
    "shrinkage": 10.0,
    "neighbours_of": "history",
    "normalize": "none",
    "popularity_weight": 0.0,
}


#: GRU4Rec / SASRec (``models.sequential``) on each user's positive items in time order; one
#: layer of width 32, full softmax up to 1000 items (sampled above); 100 epochs at 3e-3: on the
#: simulator (small, 28 days, sequential 0.5; benchmarks/bench_sequential.py) 30 epochs at 1e-3
#: underfit (truth NDCG@10 0.29 vs 0.36), 200 epochs or width 64 gained nothing.
#: ``popularity_weight``: ``+ w * log(1 + positives of the item)`` on every score (all-time
#: training counts); on MovieLens 100K's validation split (bench_ncf_bpr.py --sequential
#: --validate --prior-weights ...) w 0/1/3/6/10 gave NDCG@10 gru4rec .125/.137/.141/.149/.145,
#: sasrec .136/.155/.161/.150/.151, bert4rec .104/.123/.142/.143/.145 (most-popular .130).
#: It costs the simulator's truth (bench_sequential.py, small, 14 days, S = 0.5: gru4rec NDCG@10
#: .415 at w 0, .393 at 1, .366 at 3; two-tower .385): the simulator wants w = 0. So w is a
#: setting, ``RECLOOP_SEQUENTIAL_POPULARITY_WEIGHT`` (default 0; 6 for MovieLens-like data, over
#: the last 7 days' counts as the daily job passes them: validation .190/.204/.180, test
#: .203/.202/.197 vs the 7-day most-popular .193)
#: ``exposure_weight``: ``- e * log(1 + impressions of the item in the training days)`` on every
#: score (``data.item_impressions``; logs without impressions, as MovieLens's: no change). Chosen
#: on the simulator's seeds 11 and 12 (small, 28 days, sequential 0.5; truth NDCG@10 of gru4rec
#: / sasrec, mean of the four): e 0 .428, .25 .446, .35 .451, .4 .452, .5 .450, .75 .430, 1 .389;
#: held-out seeds 42, 7, 1, 2: best / two-tower 1.12-1.25x (before 1.09-1.13x; benchmarks/README.md)
SEQUENTIAL_PARAMS: dict[str, Any] = {
    "dim": 32,
    "max_len": 50,
    "n_layers": 1,
    "n_heads": 1,
    "dropout": 0.3,
    "n_negatives": 1000,
    "epochs": 100,
    "batch_size": 128,
    "lr": 3e-3,
    "popularity_weight": 0.0,  # replaced by settings.sequential_popularity_weight
    "exposure_weight": 0.4,
}
#: side attributes of the sequential models (as ``MF_USER_GROUPS`` / ``MF_ITEM_GROUPS``; ``()``:
#: none): the item's category embedded beside the item on the input and the tied output, so a
#: transition between categories is learned from every item of both; the user's demographics'
#: vectors added to the sequence's state (a taste term, as MF's). On the simulator (small, 28
#: days, sequential 0.5; benchmarks/bench_sequential.py) truth NDCG@10 gru4rec 0.366 -> 0.390
#: with categories -> 0.413 with both, sasrec 0.360 -> 0.370 -> 0.420 (two-tower 0.371)
SEQUENTIAL_ITEM_GROUPS: tuple[tuple[str, ...], ...] = MF_ITEM_GROUPS
SEQUENTIAL_USER_GROUPS: tuple[tuple[str, ...], ...] = MF_USER_GROUPS


#: DSSM (``models.dssm``): word-hashed item titles (``pipelines.data.titles``: MovieLens titles,
#: the simulator's generated ones) + category, users as their recent history's trigrams +
#: demographics; tanh towers, cosine / 0.1. On the demo simulator's validation day
#: (benchmarks/bench_dssm.py --validate) 16 negatives beat the paper's 4 (truth NDCG@10 0.285 vs
#: 0.271) and the log-popularity prior at 0.5 helped a little; 10 or 40 epochs, temperature
#: 0.05 / 0.2 no better
DSSM_PARAMS: dict[str, Any] = {
    "n_buckets": 1 << 13,
    "hidden": (128,),
    "dim": 64,
    "n_negatives": 16,
    "temperature": 0.1,
    "epochs": 20,
    "batch_size": 256,
    "lr": 1e-3,
    "max_history": 50,
    "popularity_weight": 0.5,
}


def build_model(
    name: str,
    data: TrainingData,
    settings: Settings,
    seed: int = 0,
    users: np.ndarray | None = None,
) -> Any:
    """Construct and fit model ``name`` (one of ``MODELS``) on ``data``. ``users`` (``userknn``
    only): the rows that need neighbours (default all; the others score their mean)."""
    from models.als import ALS
    from models.baselines import ItemKNN, MostPopular, UserKNN
    from models.bpr import BPR
    from models.ncf import NCF
    from models.two_tower import TwoTower

    if name == "mf":
        users = entity_features(settings, "user", data.date, data.users)
        items = entity_features(settings, "item", data.date, data.items)
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
        users = entity_features(settings, "user", data.date, data.users)
        items = entity_features(settings, "item", data.date, data.items)
        model = TwoTower(**TWO_TOWER_PARAMS, seed=seed)
        return model.fit(
            data.implicit,
            user_features=select_columns(users, TWO_TOWER_USER_FEATURES),
            item_features=select_columns(items, TWO_TOWER_ITEM_FEATURES),
        )
    if name == "popular":
        return MostPopular(window_days=POPULAR_WINDOW_DAYS).fit(
            data.implicit, item_weights=data.recent
        )
    if name == "itemknn":
        return ItemKNN(**ITEMKNN_PARAMS).fit(data.implicit, item_counts=data.recent)
    if name == "userknn":
        return UserKNN(k=50).fit(data.implicit, users=users)
    if name == "ncf":
        return NCF(**NCF_PARAMS, seed=seed).fit(data.implicit)
    if name == "bpr":
        return BPR(**BPR_PARAMS, seed=seed).fit(data.implicit)
    if name in ("gru4rec", "sasrec", "bert4rec"):
        from models.sequential import BERT4Rec, GRU4Rec, SASRec

        cls = {"gru4rec": GRU4Rec, "sasrec": SASRec, "bert4rec": BERT4Rec}[name]
        items = entity_features(settings, "item", data.date, data.items)
        users = entity_features(settings, "user", data.date, data.users)
        params = {**SEQUENTIAL_PARAMS, "popularity_weight": settings.sequential_popularity_weight}
        shown = item_impressions(settings, data) if params.get("exposure_weight") else None
        return cls(**params, seed=seed).fit(
            data.implicit,
            sequences=data.sequences,
            item_counts=data.recent,  # the prior's counts: positives of the last 7 days
            item_exposure=shown,  # the exposure correction's: impressions of the training days
            item_groups=group_codes(items, SEQUENTIAL_ITEM_GROUPS, len(data.items)),
            user_groups=group_codes(users, SEQUENTIAL_USER_GROUPS, len(data.users)),
        )
    if name == "dssm":
        from models.dssm import DSSM
        from pipelines.data.titles import load_item_text

        users = entity_features(settings, "user", data.date, data.users)
        items = entity_features(settings, "item", data.date, data.items)
        return DSSM(**DSSM_PARAMS, seed=seed).fit(
            data.implicit,
            item_text=load_item_text(settings, data.items),
            user_groups=group_codes(users, MF_USER_GROUPS, len(data.users)),
            item_groups=group_codes(items, MF_ITEM_GROUPS, len(data.items)),
            sequences=data.sequences,
        )
    raise ValueError(f"unknown model {name!r}: expected one of {MODELS}")


def artifact_dir(settings: Settings, name: str, date: str | dt.date) -> Path:
    """``artifacts/models/<name>/date=D``."""
    return layout.model_dir(settings, name, date)


def save_artifact(
    settings: Settings, name: str, model: Any, data: TrainingData, meta: dict[str, Any]
) -> Path:
    """Write model + vocabularies + seen matrix + meta to ``artifact_dir`` atomically."""

    def build(tmp: Path) -> None:
        model.save(tmp / "model")
        data.users.save(tmp / "users.json")
        data.items.save(tmp / "items.json")
        sp.save_npz(tmp / "seen.npz", data.implicit.astype(np.float32))
        write_artifact_meta(tmp, meta)

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
        for d in schema.partition_dates(layout.models_dir(settings, name))
        if on_or_before is None or d <= on_or_before
    ]
    return dates[-1] if dates else None


def load_artifact(settings: Settings, name: str, date: str | dt.date | None = None) -> Artifact:
    """Load artifact ``name`` of ``date`` (default: the newest). ``FileNotFoundError`` if none."""
    from models.base import load_model

    day = schema.parse_date(date) if date else latest_date(settings, name)
    if day is None:
        raise FileNotFoundError(
            f"no trained {name!r} model under {layout.models_dir(settings, name)}: run `recloop run --date D` first"
        )
    folder = artifact_dir(settings, name, day)
    if not folder.exists():
        raise FileNotFoundError(f"no {name!r} model trained for {day} at {folder}")
    try:
        seen = sp.load_npz(folder / "seen.npz").tocsr()
        meta = require_artifact_meta(folder)
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
    if distributed.is_main():  # data-parallel training: rank 0 writes, the others trained along
        path = save_artifact(settings, name, model, data, meta)
    else:
        path = artifact_dir(settings, name, data.date)
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
