"""Two-tower retrieval model: sampled softmax with log-Q correction and mixed negatives.

Shapes: ``U`` users, ``I`` items, ``D`` = ``dim`` output dimension, ``B`` batch, ``L`` history
length. Users and items are dense indices (see ``models.base``).

**User tower**: user id embedding + user features + mean of the user's recent item embeddings
(the item tower's id embedding table, so history and candidates share one space) → MLP → L2 norm.
**Item tower**: item id embedding + item features → MLP → L2 norm. Each id table has one extra
row, the shared "unknown" id, which training reaches through id dropout (a random share of ids is
replaced by it), so a new user or item with no trained id still gets a vector from its features
(and, for users, its history). Scores are cosine similarities in ``[-1, 1]``, plus, with
``popularity_prior``, ``temperature * popularity_weight * log(1 + positives of the item)`` (the
towers then learn taste over popularity; see :class:`TwoTower`).

**Features** are plain ``pandas.DataFrame`` frames (later filled from the Feast feature store,
point in time, by the training pipeline; this module only needs the frames):

- at ``fit``: indexed by the dense index (row ``u`` = user ``u``), integer index in ``[0, n)``;
  rows missing from the frame are all-missing. Columns ``user_id`` / ``item_id`` are ignored.
- at ``encode_users`` / ``encode_items``: positional (row ``j`` = the ``j``-th requested entity).
- column kinds, decided by dtype at ``fit`` and stored in the config: numbers and booleans →
  numeric (standardized with the training mean/std; columns named in ``log_columns``, default
  ``price``, go through ``sign(x) * log1p(|x|)`` first); dates/timestamps → numeric (days since
  1970-01-01, standardized); anything else (strings, categoricals) → categorical (one embedding
  per column; vocabulary = values seen at ``fit``, index 0 = missing or unseen).
- the platform's attributes (``pipelines/core/schema.py``): users ``age`` (numeric), ``gender``,
  ``country`` (categorical), ``signup_date`` (date); items ``category`` (categorical), ``price``
  (numeric, logged), ``created_date`` (date). Missing values: numeric → the mean, categorical →
  the "missing" bucket. No frame at all → an id-only tower (users keep their history mean).

**Training** (every nonzero above ``positive_threshold`` is one positive pair per epoch): logits
``u . v / temperature`` of each user against the batch's items (in-batch negatives) plus
``n_extra_negatives`` extra items drawn once per batch from the ``negatives`` mix (``uniform``,
``popularity`` ∝ count^0.75) and, per row, ``hard`` negatives: items a previous model ranked high
for that user that the user did not engage with (``fit(hard_negatives=...)``, see
:func:`mine_hard_negatives`). With ``logq`` every sampled column ``j`` is corrected by
``- log E_j``, where ``E_j = B * freq_j + M * q_j`` is the expected number of times item ``j``
appears among a batch's sampled columns (``freq`` = its share of the positive stream, ``q`` =
the extra-negative proposal; Yi et al., RecSys 2019). Hard negatives are deliberately biased and
are not corrected. Accidental hits (the row's own positive, or another positive of the same user
in the batch) are masked out. A seeded ``val_fraction`` of the positives (at most ``max_val``)
is held out, from the histories too; after each epoch their full-catalog softmax loss is measured,
training stops when it has not improved for ``patience`` epochs and the best epoch's weights are
kept (``loss_history`` / ``val_history`` record both curves). Deterministic under ``seed`` on CPU.

Persistence follows ``models.base``: the config holds hyperparameters, shapes, feature
normalization stats and categorical vocabularies (plain JSON); the state holds the network and the
encoded training features and histories, so a loaded model reproduces its embeddings exactly and
encodes raw features identically. No pickle.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from models.base import Retriever, pick_device, register
from pipelines.core import distributed as ddp

log = logging.getLogger(__name__)

NEGATIVE_SOURCES = ("uniform", "popularity", "hard")
DEFAULT_NEGATIVES = {"uniform": 0.0, "popularity": 1.0, "hard": 0.0}
ID_COLUMNS = ("user_id", "item_id")
_EPOCH = pd.Timestamp("1970-01-01", tz="UTC")

#: values of config keys added after models were first saved, for configs that lack them
LEGACY_DEFAULTS = {
    "user_ids": True,
    "item_ids": True,
    "history": True,
    "popularity_prior": False,
    "popularity_weight": 1.0,
    "max_steps_per_epoch": 0,
}

HardNegatives = Mapping[int, np.ndarray] | Callable[[int], np.ndarray]


# --- features -----------------------------------------------------------------------------


def _column_kind(col: pd.Series) -> str:
    """``numeric``, ``date`` or ``categorical`` by dtype (object columns: by their first value)."""
    if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
        return "numeric"
    if pd.api.types.is_datetime64_any_dtype(col):
        return "date"
    if col.dtype == object:
        first = col.dropna()
        if len(first) and isinstance(first.iloc[0], (pd.Timestamp, np.datetime64)):
            return "date"
        import datetime as dt

        if len(first) and isinstance(first.iloc[0], dt.date):
            return "date"
    return "categorical"


def _numeric_values(col: pd.Series, transform: str) -> np.ndarray:
    """Raw column → float64 ``(n,)`` after ``transform`` (``none``/``log1p``/``days``); NaN = missing."""
    if transform == "days":
        ts = pd.to_datetime(col, errors="coerce", utc=True)
        return ((ts - _EPOCH) / pd.Timedelta(days=1)).to_numpy(dtype=np.float64, na_value=np.nan)
    x = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if transform == "log1p":
        x = np.sign(x) * np.log1p(np.abs(x))
    return x


def fit_feature_spec(
    frame: pd.DataFrame | None, log_columns: Sequence[str] = ("price",)
) -> dict[str, list[dict[str, Any]]]:
    """Learn how to encode ``frame``'s columns: ``{"numeric": [...], "categorical": [...]}``.

    Numeric entries: ``{"name", "transform", "mean", "std"}``; categorical entries:
    ``{"name", "vocab"}`` (sorted string values; code = position + 1, 0 = missing/unseen).
    Plain JSON, stored in the model config.
    """
    spec: dict[str, list[dict[str, Any]]] = {"numeric": [], "categorical": []}
    if frame is None:
        return spec
    for name in frame.columns:
        if name in ID_COLUMNS:
            continue
        col = frame[name]
        kind = _column_kind(col)
        if kind == "categorical":
            vocab = sorted({str(v) for v in col.dropna().unique()})
            spec["categorical"].append({"name": str(name), "vocab": vocab})
            continue
        transform = "days" if kind == "date" else ("log1p" if name in log_columns else "none")
        x = _numeric_values(col, transform)
        finite = x[np.isfinite(x)]
        mean = float(finite.mean()) if len(finite) else 0.0
        std = float(finite.std()) if len(finite) else 1.0
        spec["numeric"].append(
            {
                "name": str(name),
                "transform": transform,
                "mean": mean,
                "std": std if std > 1e-12 else 1.0,
            }
        )
    return spec


def encode_features(
    frame: pd.DataFrame | None,
    spec: Mapping[str, list[dict[str, Any]]],
    n: int,
    what: str = "features",
) -> tuple[np.ndarray, np.ndarray]:
    """Raw frame (``n`` rows, positional) → ``(numeric float32 (n, Fn), categorical int64 (n, Fc))``.

    ``frame=None`` encodes every feature as missing. Raises ``ValueError`` naming a column the
    spec needs that the frame lacks.
    """
    num = np.zeros((n, len(spec["numeric"])), dtype=np.float32)
    cat = np.zeros((n, len(spec["categorical"])), dtype=np.int64)
    if frame is None:
        return num, cat
    if len(frame) != n:
        raise ValueError(f"{what}: expected {n} rows, got {len(frame)}")
    for j, entry in enumerate(spec["numeric"]):
        name = entry["name"]
        if name not in frame.columns:
            raise ValueError(f"{what}: missing numeric column {name!r} (model has {_names(spec)})")
        x = (_numeric_values(frame[name], entry["transform"]) - entry["mean"]) / entry["std"]
        num[:, j] = np.where(np.isfinite(x), x, 0.0)
    for j, entry in enumerate(spec["categorical"]):
        name = entry["name"]
        if name not in frame.columns:
            raise ValueError(
                f"{what}: missing categorical column {name!r} (model has {_names(spec)})"
            )
        codes = {v: i + 1 for i, v in enumerate(entry["vocab"])}
        col = frame[name]
        cat[:, j] = [0 if pd.isna(v) else codes.get(str(v), 0) for v in col.to_numpy(dtype=object)]
    return num, cat


def _names(spec: Mapping[str, list[dict[str, Any]]]) -> list[str]:
    return [e["name"] for e in spec["numeric"]] + [e["name"] for e in spec["categorical"]]


def _align(frame: pd.DataFrame | None, n: int, what: str) -> pd.DataFrame | None:
    """A fit-time frame indexed by dense index → exactly rows ``0..n-1`` in order."""
    if frame is None:
        return None
    if not pd.api.types.is_integer_dtype(frame.index):
        raise ValueError(f"{what}: index must be the dense integer index, got {frame.index.dtype}")
    bad = (frame.index < 0) | (frame.index >= n)
    if bad.any():
        raise ValueError(f"{what}: index {int(frame.index[bad][0])} is outside [0, {n})")
    if frame.index.has_duplicates:
        raise ValueError(f"{what}: duplicate index {int(frame.index[frame.index.duplicated()][0])}")
    missing = n - len(frame)
    if missing:
        log.info("%s: %d of %d rows missing, encoded as missing values", what, missing, n)
    return frame.reindex(pd.RangeIndex(n))


# --- network ------------------------------------------------------------------------------


class _Tower(nn.Module):
    """id embedding (+ extra input) + numeric + categorical embeddings → MLP → L2 norm."""

    def __init__(
        self,
        n_ids: int,
        id_dim: int,
        n_numeric: int,
        cat_sizes: Sequence[int],
        cat_dim: int,
        extra_dim: int,
        hidden: Sequence[int],
        dim: int,
        use_ids: bool = True,
    ) -> None:
        super().__init__()
        self.use_ids = use_ids
        self.ids = nn.Embedding(n_ids + 1, id_dim)  # last row: the shared "unknown" id
        nn.init.normal_(self.ids.weight, std=0.1)
        self.cats = nn.ModuleList(nn.Embedding(size + 1, cat_dim) for size in cat_sizes)
        for emb in self.cats:
            nn.init.normal_(emb.weight, std=0.1)
        width = id_dim * use_ids + extra_dim + n_numeric + cat_dim * len(cat_sizes)
        layers: list[nn.Module] = []
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, dim))
        self.mlp = nn.Sequential(*layers)

    def forward(
        self, ids: torch.Tensor, num: torch.Tensor, cat: torch.Tensor, extra: torch.Tensor | None
    ) -> torch.Tensor:
        parts = [self.ids(ids)] if self.use_ids else []
        if extra is not None:
            parts.append(extra)
        if num.shape[-1]:
            parts.append(num)
        parts += [emb(cat[..., j]) for j, emb in enumerate(self.cats)]
        return F.normalize(self.mlp(torch.cat(parts, dim=-1)), dim=-1)


class _TwoTowerNet(nn.Module):
    def __init__(
        self, n_users: int, n_items: int, user_spec: dict, item_spec: dict, hp: dict
    ) -> None:
        super().__init__()
        common = {
            "id_dim": hp["id_dim"],
            "cat_dim": hp["cat_dim"],
            "hidden": hp["hidden"],
            "dim": hp["dim"],
        }
        self.use_history = bool(hp["history"])
        self.user = _Tower(
            n_users,
            n_numeric=len(user_spec["numeric"]),
            cat_sizes=[len(e["vocab"]) for e in user_spec["categorical"]],
            extra_dim=hp["id_dim"] if self.use_history else 0,
            use_ids=bool(hp["user_ids"]),
            **common,
        )
        self.item = _Tower(
            n_items,
            n_numeric=len(item_spec["numeric"]),
            cat_sizes=[len(e["vocab"]) for e in item_spec["categorical"]],
            extra_dim=0,
            use_ids=bool(hp["item_ids"]),
            **common,
        )

    def history_mean(
        self, hist: torch.Tensor, exclude: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Mean item id embedding over ``hist`` ``(B, L)`` (``-1`` = padding), minus ``exclude``;
        ``None`` when the user tower has no history input (``history=False``)."""
        if not self.use_history:
            return None
        mask = hist >= 0
        if exclude is not None:
            mask &= hist != exclude[:, None]
        counts = mask.sum(1)
        offsets = torch.zeros_like(counts)
        offsets[1:] = torch.cumsum(counts, 0)[:-1]
        return F.embedding_bag(hist[mask], self.item.ids.weight, offsets, mode="mean")


# --- the model ----------------------------------------------------------------------------


def negative_weights(negatives: Mapping[str, float] | None) -> dict[str, float]:
    """The mix of extra negatives, checked: a weight ``>= 0`` for each of
    :data:`NEGATIVE_SOURCES` (absent ones 0; ``None``: :data:`DEFAULT_NEGATIVES`)."""
    negatives = dict(DEFAULT_NEGATIVES if negatives is None else negatives)
    unknown = set(negatives) - set(NEGATIVE_SOURCES)
    if unknown:
        raise ValueError(
            f"negatives: unknown sources {sorted(unknown)} (known: {NEGATIVE_SOURCES})"
        )
    if any(w < 0 for w in negatives.values()):
        raise ValueError(f"negatives: weights must be >= 0, got {negatives}")
    return {k: float(negatives.get(k, 0.0)) for k in NEGATIVE_SOURCES}


class _Batcher:
    """One training step's loss: in-batch + shared extra + per-row hard negatives, log-Q, masks."""

    def __init__(
        self,
        model: TwoTower,
        histories: torch.Tensor,
        hard_table: torch.Tensor | None,
        proposal: torch.Tensor,
        n_shared: int,
        n_hard: int,
        log_expected: torch.Tensor,
        gen: torch.Generator,
    ) -> None:
        self.net, self.hp, self.dev = model.net, model.hp, model.device
        self.t = {k: v.to(self.dev) for k, v in model.tensors.items()}
        self.t["histories"] = histories.to(self.dev)
        self.hard_table = hard_table
        self.hard_count = None if hard_table is None else (hard_table >= 0).sum(1)
        self.proposal, self.n_shared, self.n_hard = proposal, n_shared, n_hard
        self.log_expected, self.gen = log_expected, gen
        self.unknown_user = torch.tensor(model.n_users, device=self.dev)
        self.unknown_item = torch.tensor(model.n_items, device=self.dev)
        has_item_features = bool(model.item_spec["numeric"] or model.item_spec["categorical"])
        self.item_drop = self.hp["id_dropout"] if has_item_features else 0.0

    def _hard(self, ub: torch.Tensor) -> torch.Tensor:
        """``(B, n_hard)`` hard negatives sampled from each user's candidates, ``-1`` = none."""
        assert self.hard_table is not None and self.hard_count is not None
        cnt = self.hard_count[ub]
        r = torch.rand(len(ub), self.n_hard, generator=self.gen)
        pick = (r * cnt[:, None]).long().clamp(max=self.hard_table.shape[1] - 1)
        out = self.hard_table[ub].gather(1, pick)
        return torch.where(cnt[:, None] > 0, out, torch.full_like(out, -1))

    def loss(self, ub: torch.Tensor, ib: torch.Tensor) -> torch.Tensor:
        """Sampled-softmax loss of positives ``(ub, ib)``, each ``(B,)`` int64 on the CPU."""
        net, t, dev, gen = self.net, self.t, self.dev, self.gen
        tau = self.hp["temperature"]
        extra = ib[:0]
        if self.n_shared:
            extra = torch.multinomial(self.proposal, self.n_shared, replacement=True, generator=gen)
        cand = torch.cat([ib, extra])
        drop_u = torch.rand(len(ub), generator=gen) < self.hp["id_dropout"]
        drop_c = torch.rand(len(cand), generator=gen) < self.item_drop
        hard = self._hard(ub).to(dev) if self.n_hard else None
        ub, ib, cand = ub.to(dev), ib.to(dev), cand.to(dev)
        uid = torch.where(drop_u.to(dev), self.unknown_user, ub)
        cid = torch.where(drop_c.to(dev), self.unknown_item, cand)
        hist = net.history_mean(t["histories"][ub], exclude=ib)
        uvec = net.user(uid, t["user_num"][ub], t["user_cat"][ub], hist) / tau
        ivec = net.item(cid, t["item_num"][cand], t["item_cat"][cand], None)
        logits = uvec @ ivec.T
        if "item_prior" in t:  # the towers learn the residual over log popularity
            logits = logits + t["item_prior"][cand][None, :]
        if self.hp["logq"]:
            logits = logits - self.log_expected[cand][None, :]
        # accidental hits: the row's own item elsewhere, or another positive of the same user
        mask = cand[None, :] == ib[:, None]
        mask[:, : len(ub)] |= ub[None, :] == ub[:, None]
        diag = torch.arange(len(ub), device=dev)
        mask[diag, diag] = False
        logits = logits.masked_fill(mask, float("-inf"))
        if hard is not None:
            valid = (hard >= 0) & (hard != ib[:, None])
            hid = hard.clamp(min=0)
            hvec = net.item(hid, t["item_num"][hid], t["item_cat"][hid], None)
            hlog = torch.einsum("bd,bhd->bh", uvec, hvec)
            if "item_prior" in t:
                hlog = hlog + t["item_prior"][hid]
            hlog = hlog.masked_fill(~valid, float("-inf"))
            logits = torch.cat([logits, hlog], dim=1)
        return F.cross_entropy(logits, diag)


@register
class TwoTower(Retriever):
    """Two-tower retriever; see the module docstring for towers, features and the loss.

    Hyperparameters: ``dim`` output size; ``hidden`` MLP widths; ``id_dim``/``cat_dim`` embedding
    sizes; ``history_len`` recent items per user; ``temperature`` softmax temperature;
    ``negatives`` mix weights over ``uniform``/``popularity``/``hard`` (need not sum to 1);
    ``n_extra_negatives`` extra negatives per batch (split between the shared sources and
    per-row hard ones by the weights); ``logq`` log-Q correction; ``id_dropout`` share of ids
    replaced by the unknown row in training; ``positive_threshold`` values above it are positives;
    ``max_hard_per_user`` hard candidates kept per user; ``log_columns`` numeric features that are
    log-transformed; ``epochs`` (at most), ``max_steps_per_epoch`` (0: a whole pass; otherwise an
    epoch is at most that many batches of a fresh shuffle — a day's cost stays bounded as the
    history grows), ``batch_size``, ``lr``, ``weight_decay`` (Adam);
    ``val_fraction``/``max_val``/``patience`` early stopping; ``seed``; ``device`` (default: CUDA
    when present). ``user_ids`` / ``item_ids`` / ``history``: whether the towers read id embeddings
    and the user's history mean (off, a tower reads its features only). ``popularity_prior``: add
    the fixed log popularity ``p_i = log(1 + positives of i)`` to every training logit, so the
    towers learn the taste residual over popularity instead of spending the cosine on it;
    scores are then ``cos(u, v) + temperature * popularity_weight * p_i`` and the embeddings
    carry it in one extra coordinate (users ``[u, 1]``, items ``[v, temperature * w * p_i]``,
    width ``dim + 1``, not unit norm). Configs saved before these keys existed load with the old
    behaviour (ids and history on, no prior). ``n_users``/``n_items``/``user_spec``/``item_spec``
    are set by ``fit`` and stored in the config so ``from_config`` rebuilds the same shapes.
    """

    name = "two_tower"

    def __init__(
        self,
        dim: int = 64,
        hidden: Sequence[int] = (128,),
        id_dim: int = 64,
        cat_dim: int = 16,
        history_len: int = 50,
        temperature: float = 0.05,
        negatives: Mapping[str, float] | None = None,
        n_extra_negatives: int = 256,
        logq: bool = True,
        id_dropout: float = 0.1,
        positive_threshold: float = 0.0,
        max_hard_per_user: int = 100,
        val_fraction: float = 0.05,
        max_val: int = 5000,
        patience: int = 2,
        log_columns: Sequence[str] = ("price",),
        epochs: int = 10,
        max_steps_per_epoch: int = 0,
        batch_size: int = 1024,
        lr: float = 5e-3,
        weight_decay: float = 0.0,
        seed: int = 0,
        user_ids: bool = True,
        item_ids: bool = True,
        history: bool = True,
        popularity_prior: bool = False,
        popularity_weight: float = 1.0,
        device: str | None = None,
        n_users: int | None = None,
        n_items: int | None = None,
        user_spec: dict | None = None,
        item_spec: dict | None = None,
    ) -> None:
        weights = negative_weights(negatives)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.hp: dict[str, Any] = {
            "dim": int(dim),
            "hidden": [int(h) for h in hidden],
            "id_dim": int(id_dim),
            "cat_dim": int(cat_dim),
            "history_len": int(history_len),
            "temperature": float(temperature),
            "negatives": weights,
            "n_extra_negatives": int(n_extra_negatives),
            "logq": bool(logq),
            "id_dropout": float(id_dropout),
            "positive_threshold": float(positive_threshold),
            "max_hard_per_user": int(max_hard_per_user),
            "val_fraction": float(val_fraction),
            "max_val": int(max_val),
            "patience": int(patience),
            "log_columns": [str(c) for c in log_columns],
            "epochs": int(epochs),
            "max_steps_per_epoch": int(max_steps_per_epoch),
            "batch_size": int(batch_size),
            "lr": float(lr),
            "weight_decay": float(weight_decay),
            "seed": int(seed),
            "user_ids": bool(user_ids),
            "item_ids": bool(item_ids),
            "history": bool(history),
            "popularity_prior": bool(popularity_prior),
            "popularity_weight": float(popularity_weight),
        }
        self.device = pick_device(device)
        self.n_users = n_users
        self.n_items = n_items
        self.user_spec = user_spec or {"numeric": [], "categorical": []}
        self.item_spec = item_spec or {"numeric": [], "categorical": []}
        self.net: _TwoTowerNet | None = None
        self.tensors: dict[str, torch.Tensor] = {}
        self.loss_history: list[float] = []
        self.val_history: list[float] = []
        self._cache: tuple[np.ndarray, np.ndarray] | None = None
        if n_users is not None and n_items is not None:
            self._build()

    # --- construction ---------------------------------------------------------------------
    def _build(self) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.hp["seed"])
            net = _TwoTowerNet(self.n_users, self.n_items, self.user_spec, self.item_spec, self.hp)
        self.net = net.to(self.device)
        self._cache = None

    def _check_fitted(self) -> _TwoTowerNet:
        if self.net is None or not self.tensors:
            raise RuntimeError("TwoTower is not fitted: call fit() or load a saved model")
        return self.net

    # --- training -------------------------------------------------------------------------
    def fit(
        self,
        interactions: sp.csr_matrix,
        user_features: pd.DataFrame | None = None,
        item_features: pd.DataFrame | None = None,
        *,
        histories: Sequence[Sequence[int]] | None = None,
        hard_negatives: HardNegatives | None = None,
        progress: bool = True,
        **unused: Any,
    ) -> TwoTower:
        """Train on a ``(U, I)`` matrix; every value above ``positive_threshold`` is a positive.

        ``user_features`` / ``item_features``: frames indexed by dense index (module docstring).
        ``histories``: per user, item indices in time order (most recent last); the last
        ``history_len`` are the user's history. Default: the user's interacted items, the
        ``history_len`` largest values first. The training pair's own item is left out of the
        history it is predicted from. ``hard_negatives``: ``{user: items}`` or ``user -> items``
        (best first; items the user interacted with are dropped), needed when the ``hard``
        weight is > 0 (otherwise that share goes to the other sources, with a warning).
        """
        if unused:
            log.warning("two_tower.fit: ignoring arguments %s", sorted(unused))
        interactions = sp.csr_matrix(interactions)
        n_users, n_items = interactions.shape
        self.n_users, self.n_items = int(n_users), int(n_items)
        uf = _align(user_features, n_users, "user features")
        itf = _align(item_features, n_items, "item features")
        self.user_spec = fit_feature_spec(uf, self.hp["log_columns"])
        self.item_spec = fit_feature_spec(itf, self.hp["log_columns"])
        for who, spec, own in (
            ("user", self.user_spec, "user_ids"),
            ("item", self.item_spec, "item_ids"),
        ):
            has_input = self.hp[own] or spec["numeric"] or spec["categorical"]
            if who == "user":
                has_input = has_input or self.hp["history"]
            if not has_input:
                raise ValueError(
                    f"two_tower: the {who} tower has no input ({own}=False, no features)"
                )
        unum, ucat = encode_features(uf, self.user_spec, n_users, "user features")
        inum, icat = encode_features(itf, self.item_spec, n_items, "item features")
        hist = self._history_table(interactions, histories)
        self.tensors = {
            "user_num": torch.from_numpy(unum),
            "user_cat": torch.from_numpy(ucat),
            "item_num": torch.from_numpy(inum),
            "item_cat": torch.from_numpy(icat),
            "histories": torch.from_numpy(hist),
        }
        self._build()
        self._train(interactions, hard_negatives, progress)
        self._cache = None
        return self

    def _history_table(
        self, interactions: sp.csr_matrix, histories: Sequence[Sequence[int]] | None
    ) -> np.ndarray:
        """``(U, L)`` int64 item indices, ``-1`` padded (most recent / strongest first)."""
        n_users = interactions.shape[0]
        L = self.hp["history_len"]
        out = np.full((n_users, L), -1, dtype=np.int64)
        if histories is not None:
            if len(histories) != n_users:
                raise ValueError(f"histories: expected {n_users} lists, got {len(histories)}")
            for u, items in enumerate(histories):
                out[u] = self._pad_history(items)
            return out
        for u in range(n_users):
            lo, hi = interactions.indptr[u], interactions.indptr[u + 1]
            items, vals = interactions.indices[lo:hi], interactions.data[lo:hi]
            order = np.lexsort((items, -vals))[:L]
            out[u, : len(order)] = items[order]
        return out

    def _pad_history(self, items: Sequence[int]) -> np.ndarray:
        """Last ``history_len`` known items, most recent first, ``-1`` padded."""
        L = self.hp["history_len"]
        arr = np.asarray(items, dtype=np.int64).reshape(-1)
        arr = arr[(arr >= 0) & (arr < (self.n_items or 0))][-L:][::-1]
        out = np.full(L, -1, dtype=np.int64)
        out[: len(arr)] = arr
        return out

    def hard_table(
        self, hard: HardNegatives | None, interactions: sp.csr_matrix
    ) -> torch.Tensor | None:
        """The hard negatives training samples from: ``(U, H)`` int64 candidates per user, best
        first, ``-1`` padded, or ``None`` when there are none.

        ``hard``: ``{user: items}`` or ``user -> items`` (as ``fit(hard_negatives=...)``). Items
        outside the catalog or that the user interacted with in ``interactions`` ``(U, I)`` are
        dropped; at most ``max_hard_per_user`` are kept per user.
        """
        if hard is None:
            return None
        get = hard.get if isinstance(hard, Mapping) else hard
        rows: list[np.ndarray] = []
        for u in range(interactions.shape[0]):
            got = get(u)
            items = np.zeros(0, np.int64) if got is None else np.asarray(got, np.int64).reshape(-1)
            seen = interactions.indices[interactions.indptr[u] : interactions.indptr[u + 1]]
            items = items[(items >= 0) & (items < interactions.shape[1]) & ~np.isin(items, seen)]
            rows.append(items[: self.hp["max_hard_per_user"]])
        width = max((len(r) for r in rows), default=0)
        if width == 0:
            return None
        table = np.full((len(rows), width), -1, dtype=np.int64)
        for u, r in enumerate(rows):
            table[u, : len(r)] = r
        return torch.from_numpy(table)

    def negative_plan(self, hard_available: bool) -> tuple[float, float, int, int]:
        """How the ``n_extra_negatives`` of a batch are drawn: ``(uniform weight, popularity
        weight, shared extra count, per-row hard count)``.

        The shared draws mix uniform and popularity by their weights; the ``hard`` weight's share
        of the count goes to per-row hard negatives. Without hard negatives
        (``hard_available=False``) that share goes to the other sources, with a warning.
        """
        w = dict(self.hp["negatives"])
        if w["hard"] > 0 and not hard_available:
            log.warning(
                "negatives: 'hard' weight %.2f but no hard negatives given; "
                "its share goes to the other sources",
                w["hard"],
            )
            w["hard"] = 0.0
            if w["uniform"] + w["popularity"] == 0:
                w["popularity"] = 1.0
        total = sum(w.values())
        M = self.hp["n_extra_negatives"] if total > 0 else 0
        n_hard = int(round(M * w["hard"] / total)) if M else 0
        return w["uniform"], w["popularity"], M - n_hard, n_hard

    def _train(
        self, interactions: sp.csr_matrix, hard: HardNegatives | None, progress: bool
    ) -> None:
        """Fit the network on the positives of ``interactions`` (module docstring, "Training")."""
        net = self.net
        assert net is not None
        hp = self.hp
        pos_u, pos_i = self._positives(interactions)
        every_positive_item = pos_i.numpy()
        gen = torch.Generator().manual_seed(hp["seed"])
        pos_u, pos_i, val_u, val_i = self._hold_out(pos_u, pos_i, gen)
        train_hist = self._histories_without(val_u, val_i)
        counts = np.bincount(pos_i.numpy(), minlength=self.n_items).astype(np.float64)
        if hp["popularity_prior"]:  # training prior from the training positives only
            self.tensors["item_prior"] = torch.from_numpy(np.log1p(counts)).float()
        B = ddp.per_rank(min(hp["batch_size"], len(pos_u)))  # with DDP: this rank's rows
        batch = self._batcher(interactions, hard, train_hist, counts, B, gen)
        log.info(
            "two_tower: %d users, %d items, %d train / %d validation positives, <= %d epochs, "
            "batch %d, extra negatives %d shared + %d hard, logq=%s",
            self.n_users, self.n_items, len(pos_u), len(val_u), hp["epochs"], B, batch.n_shared,
            batch.n_hard, hp["logq"],
        )  # fmt: skip
        self._run_epochs(batch, (pos_u, pos_i), (val_u, val_i), train_hist, B, gen, progress)
        if hp["popularity_prior"]:  # serve with the popularity of every positive
            full = np.bincount(every_positive_item, minlength=self.n_items).astype(np.float64)
            self.tensors["item_prior"] = torch.from_numpy(np.log1p(full)).float()
        net.eval()

    def _positives(self, interactions: sp.csr_matrix) -> tuple[torch.Tensor, torch.Tensor]:
        """``(users, items)``, each int64 ``(P,)``: the cells above ``positive_threshold``."""
        coo = interactions.tocoo()
        keep = coo.data > self.hp["positive_threshold"]
        pos_u = torch.from_numpy(coo.row[keep].astype(np.int64))
        pos_i = torch.from_numpy(coo.col[keep].astype(np.int64))
        if len(pos_u) == 0:
            raise ValueError("fit: no positive interactions (all values <= positive_threshold)")
        return pos_u, pos_i

    def _hold_out(
        self, pos_u: torch.Tensor, pos_i: torch.Tensor, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(train users, train items, validation users, validation items)``: a seeded
        ``val_fraction`` of the positives (at most ``max_val``; none when under 10) held out."""
        n_val = min(int(len(pos_u) * self.hp["val_fraction"]), self.hp["max_val"])
        if n_val < 10:
            n_val = 0
        split = torch.randperm(len(pos_u), generator=gen)
        val_u, val_i = pos_u[split[:n_val]], pos_i[split[:n_val]]
        return pos_u[split[n_val:]], pos_i[split[n_val:]], val_u, val_i

    def _histories_without(self, val_u: torch.Tensor, val_i: torch.Tensor) -> torch.Tensor:
        """The ``(U, L)`` history table with the held-out pairs blanked (``-1``): otherwise the
        shared id table memorizes them."""
        train_hist = self.tensors["histories"].clone()
        for u, i in zip(val_u.tolist(), val_i.tolist(), strict=True):
            row = train_hist[u]
            row[row == i] = -1
        return train_hist

    def _batcher(
        self,
        interactions: sp.csr_matrix,
        hard: HardNegatives | None,
        train_hist: torch.Tensor,
        counts: np.ndarray,
        batch_size: int,
        gen: torch.Generator,
    ) -> _Batcher:
        """The loss of one step: the negative mix, its proposal ``q`` and the log-Q correction
        ``log E_j``, ``E_j = B * freq_j + M * q_j`` (``counts`` ``(I,)``: training positives)."""
        hard_table = self.hard_table(hard, interactions)
        w_uni, w_pop, n_shared, n_hard = self.negative_plan(hard_table is not None)
        pop = counts**0.75
        pop = pop / pop.sum()
        proposal = (w_uni / self.n_items + w_pop * pop) / max(w_uni + w_pop, 1e-12)
        expected = batch_size * counts / counts.sum() + n_shared * proposal
        return _Batcher(
            self, train_hist, hard_table, torch.from_numpy(proposal).float(), n_shared, n_hard,
            torch.from_numpy(np.log(np.maximum(expected, 1e-12))).float().to(self.device), gen,
        )  # fmt: skip

    def _run_epochs(
        self,
        batch: _Batcher,
        train: tuple[torch.Tensor, torch.Tensor],
        val: tuple[torch.Tensor, torch.Tensor],
        train_hist: torch.Tensor,
        batch_size: int,
        gen: torch.Generator,
        progress: bool,
    ) -> None:
        """Adam over ``epochs``; with held-out pairs, early stopping on their full-softmax loss
        (``patience``) and the best epoch's weights kept. Fills ``loss_history``/``val_history``."""
        net = self.net
        assert net is not None
        hp = self.hp
        opt = torch.optim.Adam(net.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
        idle = [f"{name}.ids.weight" for name, tower in (("user", net.user), ("item", net.item))
                if not tower.use_ids and not (name == "item" and net.use_history)]  # fmt: skip
        step = ddp.wrap_loss(net, batch.loss, idle)  # DDP: gradients averaged across ranks
        self.loss_history, self.val_history = [], []
        best: tuple[float, int, dict[str, torch.Tensor]] | None = None
        for epoch in range(hp["epochs"]):
            loss = ddp.mean(self._epoch(step, opt, train, batch_size, gen, epoch, progress))
            self.loss_history.append(loss)
            msg = f"two_tower epoch {epoch + 1}/{hp['epochs']}: loss {self.loss_history[-1]:.4f}"
            if len(val[0]):
                self.val_history.append(ddp.agree(self._val_loss(val[0], val[1], train_hist)))
                msg += f", validation full-softmax loss {self.val_history[-1]:.4f}"
                if best is None or self.val_history[-1] < best[0]:
                    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                    best = (self.val_history[-1], epoch, state)
                elif epoch - best[1] >= hp["patience"]:
                    log.info("%s; stopping early", msg)
                    break
            log.info(msg)
        if best is not None:
            net.load_state_dict(best[2])
            log.info("two_tower: keeping epoch %d (validation loss %.4f)", best[1] + 1, best[0])

    def _epoch(
        self,
        step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        opt: torch.optim.Optimizer,
        train: tuple[torch.Tensor, torch.Tensor],
        batch_size: int,
        gen: torch.Generator,
        epoch: int,
        progress: bool,
    ) -> float:
        """One shuffled pass over the training positives (the last partial batch dropped; at
        most ``max_steps_per_epoch`` batches when set);
        returns the mean step loss. ``step``: the loss of a batch (``_Batcher.loss``, in DDP
        wrapped by :func:`pipelines.core.distributed.wrap_loss`). With DDP every rank draws the
        same permutation (same seed) and trains on its strided share of each global batch of
        ``batch_size * world`` rows (``batch_size`` is per rank); the ranks' equal batch sizes
        keep their generators in step, so the shared extra negatives are the same everywhere."""
        from pipelines.core.progress import progress as progress_bar

        assert self.net is not None
        self.net.train()
        pos_u, pos_i = train
        n_pos = len(pos_u)
        perm = torch.randperm(n_pos, generator=gen)
        total, steps = 0.0, 0
        step_rows = batch_size * ddp.world_size()  # the global batch
        starts = range(0, n_pos - step_rows + 1, step_rows)
        if self.hp["max_steps_per_epoch"] > 0:
            starts = starts[: self.hp["max_steps_per_epoch"]]
        desc = f"two_tower epoch {epoch + 1}"
        for s in progress_bar(starts, desc=desc, unit="batch", enabled=progress):
            idx = ddp.shard(perm[s : s + step_rows])
            loss = step(pos_u[idx], pos_i[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            steps += 1
        return total / max(steps, 1)

    @torch.no_grad()
    def _val_loss(self, users: torch.Tensor, items: torch.Tensor, hist: torch.Tensor) -> float:
        """Mean full-catalog softmax cross-entropy of held-out pairs (absent from ``hist``)."""
        net = self._check_fitted()
        net.eval()
        dev, t = self.device, {k: v.to(self.device) for k, v in self.tensors.items()}
        t["histories"] = hist.to(dev)
        all_items = torch.arange(self.n_items, device=dev)
        ivec = torch.cat([
            net.item(c, t["item_num"][c], t["item_cat"][c], None) for c in all_items.split(8192)
        ])  # fmt: skip
        total = 0.0
        for u, i in zip(users.split(256), items.split(256), strict=True):
            u, i = u.to(dev), i.to(dev)
            hist = net.history_mean(t["histories"][u], exclude=i)
            uvec = net.user(u, t["user_num"][u], t["user_cat"][u], hist)
            logits = (uvec / self.hp["temperature"]) @ ivec.T
            if "item_prior" in t:
                logits = logits + t["item_prior"][None, :]
            total += float(F.cross_entropy(logits, i, reduction="sum"))
        return total / len(users)

    # --- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def _encode_users_t(
        self, ids: np.ndarray, num: np.ndarray, cat: np.ndarray, hist: np.ndarray
    ) -> np.ndarray:
        net = self._check_fitted()
        net.eval()
        dev = self.device
        out = np.zeros((len(ids), self.hp["dim"]), dtype=np.float32)
        for s in range(0, len(ids), 4096):
            sl = slice(s, s + 4096)
            h = net.history_mean(torch.as_tensor(hist[sl], device=dev))
            v = net.user(
                torch.as_tensor(ids[sl], device=dev),
                torch.as_tensor(num[sl], device=dev),
                torch.as_tensor(cat[sl], device=dev),
                h,
            )
            out[sl] = v.cpu().numpy()
        if self.hp["popularity_prior"]:  # the prior's coordinate: users read it with weight 1
            out = np.concatenate([out, np.ones((len(ids), 1), np.float32)], axis=1)
        return out

    @torch.no_grad()
    def _encode_items_t(self, ids: np.ndarray, num: np.ndarray, cat: np.ndarray) -> np.ndarray:
        net = self._check_fitted()
        net.eval()
        dev = self.device
        out = np.zeros((len(ids), self.hp["dim"]), dtype=np.float32)
        for s in range(0, len(ids), 8192):
            sl = slice(s, s + 8192)
            v = net.item(
                torch.as_tensor(ids[sl], device=dev),
                torch.as_tensor(num[sl], device=dev),
                torch.as_tensor(cat[sl], device=dev),
                None,
            )
            out[sl] = v.cpu().numpy()
        if self.hp["popularity_prior"]:  # temperature * weight * log popularity (new items: 0)
            prior = self.tensors["item_prior"].numpy()
            known = (ids >= 0) & (ids < len(prior))
            p = np.where(known, prior[np.where(known, ids, 0)], 0.0)
            p = p * self.hp["temperature"] * self.hp["popularity_weight"]
            out = np.concatenate([out, p[:, None].astype(np.float32)], axis=1)
        return out

    def _embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is None:
            self._check_fitted()
            t = {k: v.numpy() for k, v in self.tensors.items()}
            users = self._encode_users_t(
                np.arange(self.n_users), t["user_num"], t["user_cat"], t["histories"]
            )
            items = self._encode_items_t(np.arange(self.n_items), t["item_num"], t["item_cat"])
            self._cache = (users, items)
        return self._cache

    def user_embeddings(self) -> np.ndarray:
        """``(U, D)`` float32 (``D + 1`` with the popularity prior), unit norm without it: every
        training user with their training history."""
        return self._embeddings()[0]

    def item_embeddings(self) -> np.ndarray:
        """``(I, D)`` float32 (``D + 1`` with the popularity prior): what the FAISS index is built
        over; inner products with :meth:`user_embeddings` are :meth:`score_all`."""
        return self._embeddings()[1]

    def encode_users(
        self,
        history_lists: Sequence[Sequence[int]],
        user_features: pd.DataFrame | None = None,
        *,
        users: np.ndarray | None = None,
    ) -> np.ndarray:
        """Vectors ``(B, D)`` for users at serving time (new ones, or known ones with fresh history).

        ``history_lists``: per user, item indices in time order (most recent last; items the
        model does not know are skipped). ``user_features``: raw frame, row ``j`` = user ``j``
        (same columns as at fit). ``users``: their dense indices when known (``-1`` or out of
        range = new user → the unknown id row); default all new.
        """
        self._check_fitted()
        n = len(history_lists)
        ids = self._ids(users, n, self.n_users)
        num, cat = encode_features(user_features, self.user_spec, n, "user features")
        hist = (
            np.stack([self._pad_history(h) for h in history_lists])
            if n
            else np.zeros((0, self.hp["history_len"]), np.int64)
        )
        return self._encode_users_t(ids, num, cat, hist)

    def encode_items(
        self, item_features: pd.DataFrame | None = None, *, items: np.ndarray | None = None
    ) -> np.ndarray:
        """Vectors ``(N, D)`` for items from raw features (row ``j`` = item ``j``).

        ``items``: their dense indices when known; default all new (the unknown id row, so the
        vector comes from the features alone).
        """
        self._check_fitted()
        if item_features is None and items is None:
            raise ValueError("encode_items: give item_features, items, or both")
        n = len(item_features) if item_features is not None else len(items)
        ids = self._ids(items, n, self.n_items)
        num, cat = encode_features(item_features, self.item_spec, n, "item features")
        return self._encode_items_t(ids, num, cat)

    def user_feature_columns(self) -> list[str] | None:
        """The user tower's feature columns when it reads features only (no user id embedding,
        no history mean), so any user with those attributes gets a vector from
        :meth:`encode_user_features`; ``None`` when it reads ids or history (a user outside the
        training vocabulary would then get the shared unknown-id vector, not their own)."""
        self._check_fitted()
        if self.hp["user_ids"] or self.hp["history"]:
            return None
        names = _names(self.user_spec)
        return names or None

    def encode_user_features(self, features: pd.DataFrame) -> np.ndarray:
        """Vectors ``(B, D)`` float32 (``D + 1`` with the popularity prior) of ``B`` users from
        their raw features alone (row ``j`` = user ``j``; the columns of
        :meth:`user_feature_columns`). Equal to :meth:`user_embeddings` for a training user with
        the same features. ``ValueError`` when the tower also reads ids or history."""
        if self.user_feature_columns() is None:
            raise ValueError("encode_user_features: this user tower reads user ids or history")
        n = len(features)
        num, cat = encode_features(features, self.user_spec, n, "user features")
        hist = np.full((n, self.hp["history_len"]), -1, dtype=np.int64)
        return self._encode_users_t(np.full(n, self.n_users, np.int64), num, cat, hist)

    @staticmethod
    def _ids(ids: np.ndarray | None, n: int, size: int) -> np.ndarray:
        if ids is None:
            return np.full(n, size, dtype=np.int64)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) != n:
            raise ValueError(f"expected {n} ids, got {len(ids)}")
        return np.where((ids >= 0) & (ids < size), ids, size)

    def score(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scores ``(N,)`` float32 for pairs of dense indices (module docstring)."""
        ue, ie = self._embeddings()
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        return np.einsum("nd,nd->n", ue[users], ie[items]).astype(np.float32)

    def score_all(self, users: np.ndarray) -> np.ndarray:
        """``(B, I)`` float32 scores of every item."""
        ue, ie = self._embeddings()
        return (ue[np.asarray(users, np.int64)] @ ie.T).astype(np.float32)

    # --- persistence ----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {
            **self.hp,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "user_spec": self.user_spec,
            "item_spec": self.item_spec,
        }

    @classmethod
    def from_config(cls, cfg: dict[str, Any], device: str | None = None) -> TwoTower:
        cfg = {**LEGACY_DEFAULTS, **cfg}  # configs saved before a key existed: old behaviour
        return cls(**cfg, device=device)

    def state(self) -> dict[str, torch.Tensor]:
        net = self._check_fitted()
        out = {f"net.{k}": v for k, v in net.state_dict().items()}
        out.update(self.tensors)
        return out

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.net is None:
            self._build()
        assert self.net is not None
        net_state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
        try:
            self.net.load_state_dict(net_state, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"two_tower weights do not match the config: {exc}") from exc
        names = ("user_num", "user_cat", "item_num", "item_cat", "histories")
        names += ("item_prior",) if self.hp["popularity_prior"] else ()
        missing = [k for k in names if k not in state]
        if missing:
            raise ValueError(f"two_tower weights lack {missing}")
        self.tensors = {k: state[k].cpu() for k in names}
        self.net.eval()
        self._cache = None


def mine_hard_negatives(
    previous: Retriever,
    interactions: sp.csr_matrix,
    n: int = 50,
    skip: int = 0,
    users: np.ndarray | None = None,
) -> dict[int, np.ndarray]:
    """Hard negatives from a previous model: per user its top ``skip + n`` unseen items, minus the
    first ``skip`` (the very top are often future positives). ``{user: items (≤ n,)}``."""
    users = np.arange(interactions.shape[0]) if users is None else np.asarray(users, np.int64)
    items, _ = previous.recommend(users, skip + n, exclude=sp.csr_matrix(interactions))
    out = {}
    for u, row in zip(users, items, strict=True):
        row = row[skip:]
        out[int(u)] = row[row >= 0]
    return out
