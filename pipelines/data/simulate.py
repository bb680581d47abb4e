"""A seeded world simulator: daily logs under the log contract, and the ground truth apart.

The world
---------
* ``D = 16`` latent dimensions. ``N_CATEGORIES = 16`` item categories, each with a centroid
  ``c_k ~ N(0, I)``; an item's taste vector is ``v_i = 0.8 c_cat + 0.6 N(0, I)``. Prices are
  log-normal per category (``log price ~ N(mu_cat, sigma_cat)``).
* Users have demographics (age, gender, country). A user's taste vector is the sum of an age-band,
  a gender and a country embedding plus personal noise, so demographics explain about 60 % of the
  taste variance: user features carry signal.
* Item *appeal* ``b_i = -log(1 + r_i (M0 - 1))`` with ``r_i ~ U(0, 1)`` and ``M0`` the initial catalog
  size: ``exp(b_i)`` is a continuous Zipf weight (``~ 1 / rank``), the power-law popularity.
* True relevance (click probability once the slot is examined)::

      affinity  a = <u, v> / sqrt(D * 1.35)                    (about unit variance)
      relevance r = sigmoid(REL_BIAS + REL_AFFINITY * a + REL_APPEAL * b / log(M0) + user_bias)

* Sequential structure (``sequential`` = ``s`` in [0, 1], ``RECLOOP_SIM_SEQUENTIAL`` or
  ``recloop simulate --sequential S``; default 0): a seeded category transition matrix ``T``
  (``C x C``, row-stochastic: each row a softmax of ``SEQ_STAY_LOGIT`` on the diagonal,
  ``SEQ_NEXT_LOGIT`` on the category's *successor* in a seeded cyclic order of the categories and
  ``N(0, SEQ_NOISE)`` elsewhere; :func:`category_transitions`) says where a user's interest goes
  after a click. A user's state is the category ``p`` of their last click (none before the
  first); the relevance logit above gains ``s * SEQ_GAIN * log(C * T[p, cat_i])`` (the log lift of
  the transition over a uniform one: about +1.8 for the successor, +1.3 for the same category,
  -0.7 elsewhere). The state moves with every request: a day's requests (per chunk) are answered
  in rounds, round ``r`` holding every user's ``r``-th request of the day, and after each round
  each user who clicked moves to the category of their latest click, so every request sees the
  clicks of the user's earlier requests. The truth (``true_probabilities``, ``true_click_prob``,
  ``oracle_slates``, ``truth/impressions``) includes the term with the state as it stands: after
  ``recloop simulate`` and in :func:`load_world` the state the logs leave (each user's last logged
  click), which is what a sequential model trained on them sees; :func:`load_world_for_replay`
  the state at the start of its day.
  ``s = 0`` skips every sequential draw and term: the world, the logs and the truth are today's
  byte for byte (``tests/test_simulate_sequential.py`` pins the hashes). The demo and the
  benchmarks use 0 unless they say otherwise (``benchmarks/bench_sequential.py`` runs 0 and 0.5).
* Position bias: the user examines slot ``k`` (0-based) with ``EXAMINATION[k] = (1 + k) ** -0.7``;
  ``P(click) = EXAMINATION[k] * r`` (the examination hypothesis).
* After a click the user buys with ``sigmoid(BUY_BIAS + a + 0.5 user_bias - 0.4 z_price)``
  (``z_price`` the item's standardised log price), and rates a purchase with probability
  ``RATE_PROB``; the rating is ``round(1 + 4 sigmoid(1.2 a + 0.5 b/log(M0) + 0.5) + N(0, 0.6))``
  clipped to 1..5.
* Arrivals: each day ``Poisson(new_users_per_day)`` users sign up and ``Poisson(new_items_per_day)``
  items are created (their draws are seeded by ``(seed, day)``, so the world is the same however
  far it is extended). The initial population signed up / was created before the start date.
* Traffic: each day ``Poisson(requests_per_day * weekday factor)`` requests; a request's user is drawn
  among the users signed up by that day with a log-normal activity weight (x3 on the signup day);
  its time follows a diurnal profile.

The logging policy (``arm="logging_policy"``, ``model_version="sim-v0"``)
--------------------------------------------------------------------------
Non-personalised. Over the items created by that day it puts

    q_i = (1 - EXPLORATION) * softmax(b)_i + EXPLORATION / n_items     (EXPLORATION = 0.1)

and fills the ``SLATE_SIZE = 10`` slots in order: slot ``k`` draws an item from ``q`` restricted to
the items not yet placed (sampling without replacement by renormalisation). The logged
``propensity`` is that **per-slot conditional probability**::

      propensity(item i at slot k) = q_i / (1 - sum_{j placed in slots < k} q_j)

so the product of a slate's propensities is the probability of the whole ordered slate. It is *not*
the item-position marginal. Off-policy estimators must compare it with the target policy's
probability of the same item at the same slot given the same items above.

Files (under ``RECLOOP_HOME``)
------------------------------
* ``data/users.parquet``, ``data/items.parquet`` (schema ``USERS`` / ``ITEMS``): everyone that
  exists by the last simulated day.
  Item titles (DSSM's text) are written nowhere: :mod:`pipelines.data.titles` derives each from
  the item's id and category with a stable hash when it is read, so these files keep their bytes.
* ``data/interactions/date=D/part-0.parquet`` (schema ``INTERACTIONS``): one ``impression`` per
  shown item, ``click`` / ``purchase`` (value 1) / ``rating`` (value 1..5) rows with the request,
  position and propensity of their impression. Ids: users ``u<n>``, items ``i<n>``, requests
  ``r<YYYYMMDD>-<n>``, events ``<request>-<position><i|c|p|r>``.
* ``truth/impressions/date=D/part-0.parquet``: per impression (keyed by ``event_id``) the true click,
  examination, relevance, purchase-given-click probabilities and the expected rating.
* ``truth/policy_value.parquet``: per day, the logging policy's expected CTR (mean true click
  probability over its impressions), realised CTR, and expected CTR by position.
* ``truth/world.json``: scale, seed, start date and constants (:func:`read_world_meta`,
  :func:`write_world_meta`); :func:`load_world` rebuilds from it.

Same seed, same bytes: every random draw comes from ``numpy.random.default_rng`` seeded by
``(seed, stream, day, chunk)`` with a fixed chunk size per scale.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.core import layout, schema
from pipelines.core.settings import Settings

log = logging.getLogger(__name__)

# --- constants of the truth ---------------------------------------------------------------------
DIM = 16
SLATE_SIZE = 10
EXPLORATION = 0.1
EXAMINATION_POWER = 0.7
EXAMINATION = (1.0 + np.arange(64)) ** -EXAMINATION_POWER  # P(examine slot k), k = 0..63
REL_BIAS = -2.6
REL_AFFINITY = 1.3
REL_APPEAL = 2.0
BUY_BIAS = -2.0
RATE_PROB = 0.5
TASTE_VAR = 1.35  # per-dimension variance of a user taste vector
ARM = "logging_policy"
MODEL_VERSION = "sim-v0"
DEFAULT_START = dt.date(2026, 1, 1)
DAY_US = 86_400_000_000

CATEGORIES = (
    "books", "electronics", "home", "garden", "toys", "sports", "beauty", "fashion",
    "grocery", "music", "movies", "games", "health", "auto", "pets", "office",
)  # fmt: skip
GENDERS = ("F", "M", "X")
GENDER_P = (0.48, 0.48, 0.04)
COUNTRIES = ("US", "GB", "DE", "FR", "IN", "BR", "JP", "CA", "ES", "MX")
AGE_BANDS = (18, 25, 35, 45, 55, 65)  # lower edges of the age bands
EVENT_CODES = ("i", "c", "p", "r")  # impression, click, purchase, rating

# random streams: the first entropy word after the seed
_S_GLOBAL, _S_USERS, _S_ITEMS, _S_REQUESTS, _S_SLATES, _S_OUTCOMES, _S_RESPOND = range(1, 8)
_S_NEW_USERS, _S_NEW_ITEMS = 8, 9
_S_SEQUENTIAL = 10  # the category transition matrix (drawn only when sequential > 0)

# sequential structure (see the module docstring)
SEQ_GAIN = 1.5  # logit per unit of log lift at strength 1
SEQ_STAY_LOGIT = 2.0  # transition logit of staying in the category
SEQ_NEXT_LOGIT = 2.5  # transition logit of moving to the category's successor
SEQ_NOISE = 0.3  # sd of the other transition logits
NO_CATEGORY = -1  # a user's state before their first click


@dataclass(frozen=True)
class ScaleConfig:
    """Sizes of one scale. ``chunk_requests`` bounds the memory of the dense work."""

    name: str
    n_users: int
    n_items: int
    requests_per_day: int
    new_users_per_day: float
    new_items_per_day: float
    chunk_requests: int


SCALES: dict[str, ScaleConfig] = {
    "tiny": ScaleConfig("tiny", 300, 150, 400, 10, 3, 20_000),
    # tiny's catalog with more users and traffic: enough impressions per day for an A/B test
    "small": ScaleConfig("small", 1_500, 200, 1_500, 20, 3, 20_000),
    "demo": ScaleConfig("demo", 5_000, 2_000, 3_000, 50, 10, 20_000),
    "large": ScaleConfig("large", 1_000_000, 100_000, 300_000, 5_000, 500, 25_000),
}


def _rng(*words: int) -> np.random.Generator:
    return np.random.default_rng([int(w) for w in words])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class World:
    """The hidden truth. Users / items are rows ``0..n-1`` (ids ``u<row>`` / ``i<row>``).

    ``signup_day`` / ``created_day`` are day offsets from ``start_date`` (negative: before it).
    Arrays grow when :meth:`extend_to` adds the arrivals of later days; each day's arrivals depend
    only on ``(seed, day)``, so the world is the same whatever order it is extended in.
    """

    scale: str
    seed: int
    start_date: dt.date
    cfg: ScaleConfig
    # global truth parameters
    cat_centroids: np.ndarray  # (N_CATEGORIES, DIM) float32
    cat_price_mu: np.ndarray  # (N_CATEGORIES,) log price mean
    cat_price_sigma: np.ndarray  # (N_CATEGORIES,)
    age_emb: np.ndarray  # (len(AGE_BANDS), DIM)
    gender_emb: np.ndarray  # (len(GENDERS), DIM)
    country_emb: np.ndarray  # (len(COUNTRIES), DIM)
    country_p: np.ndarray  # (len(COUNTRIES),)
    # users
    user_vec: np.ndarray = field(repr=False)  # (n_users, DIM) float32
    user_bias: np.ndarray = field(repr=False)  # (n_users,) float32, logit offset
    user_activity: np.ndarray = field(repr=False)  # (n_users,) float32, relative request rate
    user_age: np.ndarray = field(repr=False)  # (n_users,) int32 years
    user_gender: np.ndarray = field(repr=False)  # (n_users,) int8 index into GENDERS
    user_country: np.ndarray = field(repr=False)  # (n_users,) int8 index into COUNTRIES
    signup_day: np.ndarray = field(repr=False)  # (n_users,) int32
    # items
    item_vec: np.ndarray = field(repr=False)  # (n_items, DIM) float32
    item_appeal: np.ndarray = field(repr=False)  # (n_items,) float64, b_i <= 0
    item_category: np.ndarray = field(repr=False)  # (n_items,) int8 index into CATEGORIES
    item_price: np.ndarray = field(repr=False)  # (n_items,) float64
    created_day: np.ndarray = field(repr=False)  # (n_items,) int32
    days_built: int = 0  # arrivals exist for days 0..days_built-1
    # sequential structure (module docstring); strength 0: none of it is drawn or used
    sequential: float = 0.0
    cat_lift: np.ndarray | None = field(default=None, repr=False)  # (C, C) log(C * T[p, c])
    user_last_category: np.ndarray | None = field(default=None, repr=False)  # (n_users,) int8

    @property
    def n_users(self) -> int:
        return len(self.user_vec)

    @property
    def n_items(self) -> int:
        return len(self.item_vec)

    @property
    def appeal_scale(self) -> float:
        """``log(M0)``: divides the appeal so the catalog size does not move the CTR."""
        return math.log(self.cfg.n_items)

    def day_index(self, date: str | dt.date) -> int:
        """Day offset of ``date`` from the start date (raises before the start)."""
        k = (schema.parse_date(date) - self.start_date).days
        if k < 0:
            raise ValueError(f"{date} is before the world's start date {self.start_date}")
        return k

    def date_of(self, day: int) -> dt.date:
        return self.start_date + dt.timedelta(days=int(day))

    def extend_to(self, date: str | dt.date) -> None:
        """Make sure users and items arriving up to and including ``date`` exist."""
        last = self.day_index(date)
        if last < self.days_built:
            return
        users, items = [], []
        for k in range(self.days_built, last + 1):
            rng = _rng(self.seed, _S_NEW_USERS, k)
            n = int(rng.poisson(self.cfg.new_users_per_day))
            users.append(_draw_users(self, rng, np.full(n, k, dtype=np.int32)))
            rng = _rng(self.seed, _S_NEW_ITEMS, k)
            n = int(rng.poisson(self.cfg.new_items_per_day))
            items.append(_draw_items(self, rng, np.full(n, k, dtype=np.int32)))
        for name in users[0]:
            setattr(self, name, np.concatenate([getattr(self, name)] + [u[name] for u in users]))
        for name in items[0]:
            setattr(self, name, np.concatenate([getattr(self, name)] + [i[name] for i in items]))
        self.days_built = last + 1

    def users_frame(self, date: str | dt.date) -> pd.DataFrame:
        """Users signed up by ``date`` (columns of ``schema.USERS``)."""
        self.extend_to(date)
        keep = np.flatnonzero(self.signup_day <= self.day_index(date))
        return pd.DataFrame(
            {
                "user_id": ids_from_rows("u", keep).to_pandas(),
                "age": self.user_age[keep],
                "gender": np.asarray(GENDERS, dtype=object)[self.user_gender[keep]],
                "country": np.asarray(COUNTRIES, dtype=object)[self.user_country[keep]],
                "signup_date": _dates(self.start_date, self.signup_day[keep]),
            }
        )

    def items_frame(self, date: str | dt.date) -> pd.DataFrame:
        """Items created by ``date`` (columns of ``schema.ITEMS``)."""
        self.extend_to(date)
        keep = np.flatnonzero(self.created_day <= self.day_index(date))
        return pd.DataFrame(
            {
                "item_id": ids_from_rows("i", keep).to_pandas(),
                "category": np.asarray(CATEGORIES, dtype=object)[self.item_category[keep]],
                "price": self.item_price[keep],
                "created_date": _dates(self.start_date, self.created_day[keep]),
            }
        )


def _dates(start: dt.date, days: np.ndarray) -> np.ndarray:
    base = np.datetime64(start.isoformat(), "D")
    return (base + days.astype("timedelta64[D]")).astype("datetime64[ns]")


def _draw_users(world: World, rng: np.random.Generator, signup_day: np.ndarray) -> dict:
    n = len(signup_day)
    age = np.clip(np.rint(rng.gamma(3.0, 7.0, n) + 18), 18, 90).astype(np.int32)
    gender = rng.choice(len(GENDERS), size=n, p=GENDER_P).astype(np.int8)
    country = rng.choice(len(COUNTRIES), size=n, p=world.country_p).astype(np.int8)
    band = np.searchsorted(np.asarray(AGE_BANDS), age, side="right") - 1
    vec = rng.standard_normal((n, DIM), dtype=np.float32)
    vec *= 0.7
    for s in range(0, n, 65_536):  # bounded temporaries at large scale
        e = min(s + 65_536, n)
        demo = world.age_emb[band[s:e]] + world.gender_emb[gender[s:e]]
        demo += world.country_emb[country[s:e]]
        vec[s:e] += demo.astype(np.float32)
    return {
        "user_vec": vec,
        "user_bias": rng.normal(0.0, 0.5, n).astype(np.float32),
        "user_activity": rng.lognormal(0.0, 1.0, n).astype(np.float32),
        "user_age": age,
        "user_gender": gender,
        "user_country": country,
        "signup_day": signup_day.astype(np.int32),
        "user_last_category": np.full(n, NO_CATEGORY, dtype=np.int8),  # no draw: same streams
    }


def _draw_items(world: World, rng: np.random.Generator, created_day: np.ndarray) -> dict:
    n = len(created_day)
    cat = rng.integers(0, len(CATEGORIES), n).astype(np.int8)
    vec = 0.8 * world.cat_centroids[cat] + 0.6 * rng.normal(0.0, 1.0, (n, DIM))
    appeal = -np.log1p(rng.random(n) * (world.cfg.n_items - 1))
    log_price = rng.normal(world.cat_price_mu[cat], world.cat_price_sigma[cat])
    return {
        "item_vec": vec.astype(np.float32),
        "item_appeal": appeal,
        "item_category": cat,
        "item_price": np.round(np.exp(log_price), 2),
        "created_day": created_day.astype(np.int32),
    }


def category_transitions(seed: int) -> np.ndarray:
    """The seeded category transition matrix ``T`` ``(C, C)`` float64, rows summing to 1.

    Row ``p``: softmax of ``SEQ_STAY_LOGIT`` at ``p``, ``SEQ_NEXT_LOGIT`` at ``p``'s successor in a
    seeded cyclic order of the categories, ``N(0, SEQ_NOISE)`` elsewhere (its own stream).
    """
    rng = _rng(seed, _S_SEQUENTIAL)
    n = len(CATEGORIES)
    order = rng.permutation(n)
    logits = rng.normal(0.0, SEQ_NOISE, (n, n))
    logits[np.arange(n), np.arange(n)] = SEQ_STAY_LOGIT
    logits[order, np.roll(order, -1)] = SEQ_NEXT_LOGIT
    t = np.exp(logits - logits.max(axis=1, keepdims=True))
    return t / t.sum(axis=1, keepdims=True)


def build_world(
    scale: str, seed: int, start_date: str | dt.date = DEFAULT_START, sequential: float = 0.0
) -> World:
    """Build the world of ``(scale, seed, start_date)`` deterministically (arrivals up to day 0).

    ``sequential``: the strength of the sequential structure in [0, 1] (module docstring).
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}: expected one of {sorted(SCALES)}")
    if not 0.0 <= sequential <= 1.0:
        raise ValueError(f"sequential strength {sequential} is outside [0, 1]")
    cfg = SCALES[scale]
    start = schema.parse_date(start_date)
    g = _rng(seed, _S_GLOBAL)
    country_p = 1.0 / (1.0 + np.arange(len(COUNTRIES))) ** 0.8
    empty = np.empty(0)
    world = World(
        scale=scale,
        seed=int(seed),
        start_date=start,
        cfg=cfg,
        cat_centroids=g.normal(0.0, 1.0, (len(CATEGORIES), DIM)),
        cat_price_mu=g.uniform(math.log(5.0), math.log(300.0), len(CATEGORIES)),
        cat_price_sigma=g.uniform(0.3, 0.7, len(CATEGORIES)),
        age_emb=g.normal(0.0, 0.6, (len(AGE_BANDS), DIM)),
        gender_emb=g.normal(0.0, 0.5, (len(GENDERS), DIM)),
        country_emb=g.normal(0.0, 0.5, (len(COUNTRIES), DIM)),
        country_p=country_p / country_p.sum(),
        user_vec=empty,
        user_bias=empty,
        user_activity=empty,
        user_age=empty,
        user_gender=empty,
        user_country=empty,
        signup_day=empty,
        item_vec=empty,
        item_appeal=empty,
        item_category=empty,
        item_price=empty,
        created_day=empty,
    )
    rng = _rng(seed, _S_USERS)
    users = _draw_users(world, rng, -rng.integers(1, 731, cfg.n_users))
    rng = _rng(seed, _S_ITEMS)
    items = _draw_items(world, rng, -rng.integers(1, 366, cfg.n_items))
    for name, value in {**users, **items}.items():
        setattr(world, name, value)
    if sequential > 0:
        world.sequential = float(sequential)
        world.cat_lift = np.log(len(CATEGORIES) * category_transitions(seed))
    world.extend_to(start)
    return world


# --- ids ----------------------------------------------------------------------------------------
def ids_from_rows(prefix: str, rows: np.ndarray) -> pa.Array:
    """Raw ids ``prefix + str(row)`` of int rows ``(n,)``: an arrow string array ``(n,)``.

    The inverse of :func:`user_rows` / :func:`item_rows`: ``ids_from_rows("i", rows)`` are the item
    ids of item rows (``"u"``: users). Vectorised.
    """
    text = pc.cast(pa.array(np.asarray(rows, dtype=np.int64)), pa.string())
    return pc.binary_join_element_wise(prefix, text, "")


def _rows(world: World, ids: Sequence[str] | np.ndarray, prefix: str, n: int) -> np.ndarray:
    """Raw ids ``<prefix><row>`` → int64 rows; ``ValueError`` naming the first bad id."""
    arr = pa.array(np.asarray(ids, dtype=object).ravel(), type=pa.string())
    ok = pc.fill_null(pc.starts_with(arr, prefix), False)
    digits = pc.utf8_slice_codeunits(arr, len(prefix))
    ok = pc.and_(ok, pc.fill_null(pc.utf8_is_digit(digits), False))
    ok_np = ok.to_numpy(zero_copy_only=False)
    rows = np.full(len(arr), -1, dtype=np.int64)
    if ok_np.any():
        rows[ok_np] = pc.cast(pc.filter(digits, ok), pa.int64()).to_numpy()
    bad = np.flatnonzero((rows < 0) | (rows >= n))
    if len(bad):
        raise ValueError(
            f"unknown {'user' if prefix == 'u' else 'item'} id {arr[int(bad[0])].as_py()!r} "
            f"at position {int(bad[0])} ({len(bad)} unknown of {len(arr)})"
        )
    return rows


def user_rows(world: World, user_ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """User ids (``u<row>``) → rows of the world's user arrays."""
    return _rows(world, user_ids, "u", world.n_users)


def item_rows(world: World, item_ids: Sequence[str] | np.ndarray) -> np.ndarray:
    """Item ids (``i<row>``) → rows of the world's item arrays."""
    return _rows(world, item_ids, "i", world.n_items)


# --- the truth ----------------------------------------------------------------------------------
def _affinity(world: World, u: np.ndarray, i: np.ndarray) -> np.ndarray:
    """``<u, v> / sqrt(D * TASTE_VAR)`` per pair (float64, shape of ``u``)."""
    dot = np.einsum("ij,ij->i", world.user_vec[u], world.item_vec[i])
    return dot.astype(np.float64) / math.sqrt(DIM * TASTE_VAR)


KNOWLEDGE = ("appeal", "demographics_x_category", "demographics_x_item", "user_x_category")
"""What a model could know of the truth (:func:`known_logit`), from least to most for items:
the items' appeal alone; and the taste term of the users' demographics against the items'
category centroids, against the items' whole taste vectors, or of the users' whole taste
vectors against the category centroids."""


def known_logit(world: World, u: np.ndarray, i: np.ndarray, known: str) -> np.ndarray:
    """The relevance logit of user rows ``u`` and item rows ``i`` ``(n,)`` as a model knowing
    only ``known`` (:data:`KNOWLEDGE`) of the truth would compute it: ``REL_APPEAL *`` the
    items' scaled appeal, plus (but for ``appeal``) ``REL_AFFINITY *`` the taste term with the
    unknown part of either vector left out: a user's taste without the individual draw is their
    demographic embeddings' sum; an item's without its own draw, ``0.8 *`` its category's
    centroid. Float64 ``(n,)``; for ordering items of one user (the user's bias and the
    sequential term are left out). ``ValueError`` for another ``known``."""
    if known not in KNOWLEDGE:
        raise ValueError(f"known must be one of {KNOWLEDGE}, not {known!r}")
    logit = REL_APPEAL * world.item_appeal[i] / world.appeal_scale
    if known == "appeal":
        return logit.astype(np.float64)
    if known == "user_x_category":
        user = world.user_vec[u]
    else:
        band = np.searchsorted(np.asarray(AGE_BANDS), world.user_age[u], side="right") - 1
        user = world.age_emb[band] + world.gender_emb[world.user_gender[u]]
        user = user + world.country_emb[world.user_country[u]]
    if known == "demographics_x_item":
        item = world.item_vec[i]
    else:
        item = 0.8 * world.cat_centroids[world.item_category[i]]
    taste = np.einsum("ij,ij->i", user, item) / math.sqrt(DIM * TASTE_VAR)
    return (logit + REL_AFFINITY * taste).astype(np.float64)


def _relevance(world: World, u: np.ndarray, i: np.ndarray, a: np.ndarray) -> np.ndarray:
    logit = (
        REL_BIAS
        + REL_AFFINITY * a
        + REL_APPEAL * world.item_appeal[i] / world.appeal_scale
        + world.user_bias[u]
    )
    if world.sequential > 0:
        logit = logit + sequential_logit(world, u, i)
    return _sigmoid(logit)


def sequential_logit(world: World, u: np.ndarray, i: np.ndarray) -> np.ndarray:
    """The sequential term of the relevance logit per (user row, item row) pair, float64 ``(n,)``:
    ``s * SEQ_GAIN * log(C * T[last category of u, category of i])``, 0 for a user without a
    click yet or when the strength ``s`` is 0."""
    if world.sequential <= 0 or world.cat_lift is None:
        return np.zeros(len(u))
    prev = world.user_last_category[u].astype(np.int64)
    has = prev != NO_CATEGORY
    out = np.zeros(len(u))
    out[has] = world.cat_lift[prev[has], world.item_category[i[has]]]
    return world.sequential * SEQ_GAIN * out


def advance_state(world: World, u: np.ndarray, i: np.ndarray, ts: np.ndarray) -> None:
    """Move each clicking user's state to the category of their latest click.

    ``u``, ``i``: user / item rows of clicks ``(n,)``; ``ts``: their times (ties: the later row
    wins). A no-op at strength 0.
    """
    if world.sequential <= 0 or len(u) == 0:
        return
    order = np.argsort(ts, kind="stable")[::-1]  # latest first
    users, first = np.unique(u[order], return_index=True)
    world.user_last_category[users] = world.item_category[i[order][first]]


def true_probabilities(
    world: World, u: np.ndarray, i: np.ndarray, pos: np.ndarray
) -> dict[str, np.ndarray]:
    """All true probabilities of showing item row ``i`` to user row ``u`` at 0-based slot ``pos``.

    ``u``, ``i``, ``pos``: int arrays ``(n,)`` (rows of the world's arrays, not raw ids). Returns
    float64 ``(n,)`` arrays: ``click`` (= ``examination * relevance``), ``examination``,
    ``relevance``, ``purchase_given_click`` and ``expected_rating`` (1..5). ``ValueError`` when a
    position is outside ``0..len(EXAMINATION) - 1``.
    """
    if len(pos) and (pos.min() < 0 or pos.max() >= len(EXAMINATION)):
        raise ValueError(f"position out of range 0..{len(EXAMINATION) - 1}")
    a = _affinity(world, u, i)
    rel = _relevance(world, u, i, a)
    exam = EXAMINATION[pos]
    z_price = (np.log(world.item_price[i]) - 4.0) / 1.2
    buy = _sigmoid(BUY_BIAS + a + 0.5 * world.user_bias[u] - 0.4 * z_price)
    rating = 1.0 + 4.0 * _sigmoid(1.2 * a + 0.5 * world.item_appeal[i] / world.appeal_scale + 0.5)
    return {
        "click": exam * rel,
        "examination": exam,
        "relevance": rel,
        "purchase_given_click": buy,
        "expected_rating": rating,
    }


def true_click_prob(
    world: World,
    user_ids: Sequence[str] | np.ndarray,
    item_ids: Sequence[str] | np.ndarray,
    positions: Sequence[int] | np.ndarray | int,
) -> np.ndarray:
    """True P(click) of each (user, item, 0-based position), element-wise; float64 ``(n,)``.

    ``positions`` may be one int for all pairs. Unknown ids raise ``ValueError``.
    """
    u = user_rows(world, user_ids)
    i = item_rows(world, item_ids)
    if len(u) != len(i):
        raise ValueError(f"{len(u)} user ids but {len(i)} item ids")
    pos = np.broadcast_to(np.asarray(positions, dtype=np.int64), u.shape)
    return true_probabilities(world, u, i, pos)["click"]


def oracle_slates(
    world: World, user_ids: Sequence[str] | np.ndarray, date: str | dt.date, k: int = SLATE_SIZE
) -> np.ndarray:
    """The ``k`` items of highest true relevance per user among items created by ``date``.

    Returns item ids, shape ``(n_users, k)``, best first (the best slate under position bias).
    """
    world.extend_to(date)
    u = user_rows(world, user_ids)
    pool = np.flatnonzero(world.created_day <= world.day_index(date))
    out = np.empty((len(u), k), dtype=np.int64)
    for s in range(0, len(u), 1024):
        uu = u[s : s + 1024]
        a = (world.user_vec[uu] @ world.item_vec[pool].T).astype(np.float64)
        a /= math.sqrt(DIM * TASTE_VAR)
        logit = REL_AFFINITY * a + REL_APPEAL * world.item_appeal[pool] / world.appeal_scale
        if world.sequential > 0:
            prev = world.user_last_category[uu].astype(np.int64)
            lift = world.cat_lift[np.maximum(prev, 0)][:, world.item_category[pool]]
            logit += world.sequential * SEQ_GAIN * np.where((prev >= 0)[:, None], lift, 0.0)
        top = np.argpartition(-logit, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(logit, top, 1), axis=1, kind="stable")
        out[s : s + 1024] = pool[np.take_along_axis(top, order, 1)]
    ids = ids_from_rows("i", out.ravel()).to_numpy(zero_copy_only=False)
    return ids.reshape(out.shape)


# --- traffic and the logging policy ---------------------------------------------------------------
def _epoch_us(ts: pd.Series) -> np.ndarray:
    """Timestamps (naive = UTC) → int64 microseconds since the epoch."""
    utc = pd.to_datetime(ts, utc=True).dt.tz_localize(None)
    return utc.to_numpy().astype("datetime64[us]").astype(np.int64)


def _day_start_us(date: dt.date) -> int:
    return (date - dt.date(1970, 1, 1)).days * DAY_US


_HOURLY = 1.0 + 0.8 * np.sin((np.arange(24) - 9.0) / 24.0 * 2 * np.pi)  # peak ~15h UTC
_HOURLY = _HOURLY / _HOURLY.sum()


def requests_for_day(world: World, date: str | dt.date) -> pd.DataFrame:
    """The day's traffic: one row per request, sorted by time.

    Columns: ``request_id`` (``r<YYYYMMDD>-<n>``), ``user_id``, ``ts`` (UTC), ``user_row`` (int).
    A user may make several requests. Deterministic in ``(world.seed, date)``.
    """
    date = schema.parse_date(date)
    world.extend_to(date)
    k = world.day_index(date)
    rng = _rng(world.seed, _S_REQUESTS, date.toordinal())
    weekday = 1.0 + 0.15 * math.sin(2 * math.pi * date.weekday() / 7.0)
    n = int(rng.poisson(world.cfg.requests_per_day * weekday))
    eligible = np.flatnonzero(world.signup_day <= k)
    w = world.user_activity[eligible].astype(np.float64)
    w[world.signup_day[eligible] == k] *= 3.0
    users = eligible[rng.choice(len(eligible), size=n, p=w / w.sum())]
    sec = rng.choice(24, size=n, p=_HOURLY) * 3600.0 + rng.random(n) * 3600.0
    ts = _day_start_us(date) + np.minimum((sec * 1e6).astype(np.int64), DAY_US - 1)
    order = np.argsort(ts, kind="stable")
    users, ts = users[order], ts[order]
    tag = date.strftime("r%Y%m%d-")
    return pd.DataFrame(
        {
            "request_id": ids_from_rows(tag, np.arange(n)).to_pandas(),
            "user_id": ids_from_rows("u", users).to_pandas(),
            "ts": pd.to_datetime(ts, unit="us", utc=True),
            "user_row": users,
        }
    )


def users_for_day(world: World, date: str | dt.date) -> np.ndarray:
    """Distinct ids of the users who make at least one request on ``date`` (first-request order)."""
    ids = requests_for_day(world, date)["user_id"]
    return ids.drop_duplicates().to_numpy(dtype=object)


def logging_policy(world: World, date: str | dt.date) -> tuple[np.ndarray, np.ndarray]:
    """The day-0 logging policy on ``date``: ``(item_rows, q)``, ``q`` summing to 1.

    ``q = (1 - EXPLORATION) softmax(appeal) + EXPLORATION / n`` over the items created by ``date``.
    Slots are filled by sampling ``q`` without replacement (see the module docstring).
    """
    world.extend_to(date)
    pool = np.flatnonzero(world.created_day <= world.day_index(date))
    b = world.item_appeal[pool]
    soft = np.exp(b - b.max())
    q = (1.0 - EXPLORATION) * soft / soft.sum() + EXPLORATION / len(pool)
    return pool, q / q.sum()


def sample_slates(
    pool: np.ndarray, q: np.ndarray, n: int, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` slates of ``k`` distinct items from ``q`` slot by slot (rejection of repeats).

    Returns ``(item_rows (n, k) int64, propensity (n, k) float64)`` where propensity is the
    per-slot conditional ``q_i / (1 - mass already placed)``.
    """
    if k > len(pool):
        raise ValueError(f"slate of {k} items but only {len(pool)} items exist")
    cdf = np.cumsum(q)
    cdf /= cdf[-1]
    last = len(pool) - 1
    slate = np.empty((n, k), dtype=np.int64)
    prop = np.empty((n, k), dtype=np.float64)
    placed = np.zeros(n, dtype=np.float64)
    for s in range(k):
        cand = np.minimum(np.searchsorted(cdf, rng.random(n), side="right"), last)
        todo = np.flatnonzero((slate[:, :s] == cand[:, None]).any(axis=1))
        while len(todo):
            cand[todo] = np.minimum(np.searchsorted(cdf, rng.random(len(todo)), side="right"), last)
            todo = todo[(slate[todo, :s] == cand[todo, None]).any(axis=1)]
        slate[:, s] = cand
        prop[:, s] = np.minimum(q[cand] / np.maximum(1.0 - placed, q[cand]), 1.0)
        placed += q[cand]
    return pool[slate], prop


# --- outcomes -----------------------------------------------------------------------------------
@dataclass
class _Outcomes:
    truth: dict[str, np.ndarray]  # per pair
    click: np.ndarray  # pair indices clicked
    click_ts: np.ndarray
    buy: np.ndarray  # pair indices purchased
    buy_ts: np.ndarray
    rate: np.ndarray  # pair indices rated
    rate_ts: np.ndarray
    rating: np.ndarray


def _outcomes(
    world: World,
    u: np.ndarray,
    i: np.ndarray,
    pos: np.ndarray,
    ts: np.ndarray,
    day_end_us: int,
    rng: np.random.Generator,
) -> _Outcomes:
    """Users' clicks / purchases / ratings for shown pairs (flat arrays, ``ts`` in epoch µs)."""
    t = true_probabilities(world, u, i, pos)
    end = day_end_us - 1
    click = np.flatnonzero(rng.random(len(u)) < t["click"])
    click_ts = np.minimum(
        ts[click] + (1e6 * (1.0 + rng.exponential(20.0, len(click)))).astype(np.int64), end
    )
    bought = rng.random(len(click)) < t["purchase_given_click"][click]
    buy = click[bought]
    buy_ts = np.minimum(
        click_ts[bought] + (1e6 * rng.exponential(600.0, len(buy))).astype(np.int64), end
    )
    rated = rng.random(len(buy)) < RATE_PROB
    rate = buy[rated]
    noise = rng.normal(0.0, 0.6, len(rate))
    rating = np.clip(np.rint(t["expected_rating"][rate] + noise), 1.0, 5.0)
    rate_ts = np.minimum(
        buy_ts[rated] + (1e6 * rng.exponential(3600.0, len(rate))).astype(np.int64), end
    )
    return _Outcomes(t, click, click_ts, buy, buy_ts, rate, rate_ts, rating)


def request_rounds(user: np.ndarray) -> np.ndarray:
    """Round of each request ``(n,)`` int64: how many earlier requests (in order) the same user
    has among ``user`` ``(n,)`` (their user rows)."""
    order = np.argsort(user, kind="stable")
    sorted_user = user[order]
    idx = np.arange(len(user))
    first = np.r_[True, sorted_user[1:] != sorted_user[:-1]] if len(user) else np.zeros(0, bool)
    rounds = np.empty(len(user), dtype=np.int64)
    rounds[order] = idx - np.maximum.accumulate(np.where(first, idx, 0))
    return rounds


def _stateful_outcomes(
    world: World,
    u: np.ndarray,
    i: np.ndarray,
    pos: np.ndarray,
    ts: np.ndarray,
    day_end_us: int,
    rng: np.random.Generator,
    req: np.ndarray,
    req_user: np.ndarray,
) -> _Outcomes:
    """:func:`_outcomes` of the pairs; with sequential structure, round by round of the requests
    (``req`` ``(n,)``: each pair's request, indexing ``req_user``, the requests' user rows in time
    order; :func:`request_rounds`), each user's state moved after each round. At strength 0
    exactly :func:`_outcomes` (same draws)."""
    if world.sequential <= 0:
        return _outcomes(world, u, i, pos, ts, day_end_us, rng)
    rounds = request_rounds(req_user)[req]
    parts = []
    for r in range(int(rounds.max()) + 1 if len(rounds) else 0):
        idx = np.flatnonzero(rounds == r)
        out = _outcomes(world, u[idx], i[idx], pos[idx], ts[idx], day_end_us, rng)
        advance_state(world, u[idx][out.click], i[idx][out.click], out.click_ts)
        parts.append((idx, out))
    if not parts:
        return _outcomes(world, u, i, pos, ts, day_end_us, rng)
    truth = {k: np.empty(len(u)) for k in parts[0][1].truth}
    for idx, out in parts:
        for k in truth:
            truth[k][idx] = out.truth[k]

    def pairs(name: str) -> np.ndarray:  # pair indices of a round → of all pairs
        return np.concatenate([idx[getattr(out, name)] for idx, out in parts])

    def values(name: str) -> np.ndarray:
        return np.concatenate([getattr(out, name) for _, out in parts])

    return _Outcomes(
        truth, pairs("click"), values("click_ts"), pairs("buy"), values("buy_ts"), pairs("rate"),
        values("rate_ts"), values("rating"),
    )  # fmt: skip


def _event_table(
    request_ids: pa.Array,
    req: np.ndarray,
    pos: np.ndarray,
    u: np.ndarray,
    i: np.ndarray,
    code: np.ndarray,
    value: np.ndarray,
    ts: np.ndarray,
    propensity: np.ndarray | None,
    arm: str | None,
    model_version: str | None,
) -> pa.Table:
    """Rows of the log contract from integer columns; ``req`` indexes ``request_ids``."""
    n = len(req)
    rid = request_ids.take(pa.array(req))
    codes = pa.array(EVENT_CODES).take(pa.array(code))
    event_id = pc.binary_join_element_wise(rid, "-", pc.cast(pa.array(pos), pa.string()), codes, "")
    names = pa.array(schema.EVENTS).take(pa.array(code))

    def const(text: str | None) -> pa.Array:
        return pa.nulls(n, pa.string()) if text is None else pa.repeat(pa.scalar(text), n)

    arrays = [
        event_id,
        pa.array(ts, type=pa.timestamp("us", tz="UTC")),
        ids_from_rows("u", u),
        ids_from_rows("i", i),
        names,
        pa.array(value, type=pa.float64()),
        rid,
        pa.array(pos, type=pa.int32()),
        const(arm),
        const(model_version),
        pa.nulls(n, pa.float64()) if propensity is None else pa.array(propensity, pa.float64()),
    ]
    return pa.Table.from_arrays(arrays, schema=schema.INTERACTIONS)


def _assemble(
    req: np.ndarray,
    pos: np.ndarray,
    u: np.ndarray,
    i: np.ndarray,
    ts: np.ndarray,
    out: _Outcomes,
    with_impressions: bool,
) -> dict[str, np.ndarray]:
    """Integer columns of the events (impressions first if asked), sorted by time (stable)."""
    parts = [(out.click, out.click_ts, 1, None), (out.buy, out.buy_ts, 2, None)]
    parts.append((out.rate, out.rate_ts, 3, out.rating))
    if with_impressions:
        parts.insert(0, (np.arange(len(req)), ts, 0, None))
    idx = np.concatenate([p[0] for p in parts])
    cols = {
        "pair": idx,
        "ts": np.concatenate([p[1] for p in parts]),
        "code": np.concatenate([np.full(len(p[0]), p[2], np.int8) for p in parts]),
        "value": np.concatenate([np.ones(len(p[0])) if p[3] is None else p[3] for p in parts]),
    }
    order = np.argsort(cols["ts"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    pair = cols["pair"]
    cols.update(
        req=req[pair].astype(np.int32),
        pos=pos[pair].astype(np.int16),
        u=u[pair].astype(np.int32),
        i=i[pair].astype(np.int32),
    )
    return cols


# --- one day of the logging policy ----------------------------------------------------------------
@dataclass
class DayResult:
    """One simulated day: the log partition, the truth partition and a summary row."""

    events: pa.Table  # schema.INTERACTIONS
    truth: pa.Table  # event_id + true probabilities, one row per impression
    summary: dict


def simulate_day(world: World, date: str | dt.date, progress: bool = False) -> DayResult:
    """Simulate ``date`` under the logging policy (vectorised, chunked by requests)."""
    date = schema.parse_date(date)
    world.extend_to(date)
    reqs = requests_for_day(world, date)
    cols, truths = _logging_policy_chunks(world, date, reqs, progress)
    if not cols:
        raise ValueError(f"no requests simulated on {date}")
    rid = pa.array(reqs["request_id"], type=pa.string())
    events, counts = _day_events(rid, cols)
    del cols  # emptied by _day_events: one copy of the day's columns at a time
    tr = _pop_concat(truths)
    del truths
    summary = _day_summary(world, date, reqs["user_row"].to_numpy(), counts, tr)
    return DayResult(events, _truth_table(rid, tr), summary)


def _logging_policy_chunks(
    world: World, date: dt.date, reqs: pd.DataFrame, progress: bool
) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """The logging policy's slates for ``reqs`` and the users' response, chunk by chunk.

    Chunk ``c`` (``world.cfg.chunk_requests`` requests) draws its slates and its outcomes from its
    own streams seeded by ``(seed, stream, date, c)``. Returns per chunk the event columns
    (:func:`_assemble`'s, ``pair`` replaced by ``propensity``) and the truth of its impressions
    (``pos``, ``req``, ``i`` and the keys of :func:`true_probabilities`), ``SLATE_SIZE`` per request.
    """
    from tqdm import tqdm

    pool, q = logging_policy(world, date)
    n_req, K = len(reqs), SLATE_SIZE
    user = reqs["user_row"].to_numpy()
    req_ts = _epoch_us(reqs["ts"])
    day_end = _day_start_us(date) + DAY_US
    chunk = world.cfg.chunk_requests
    starts = range(0, n_req, chunk)
    cols: list[dict[str, np.ndarray]] = []
    truths: list[dict[str, np.ndarray]] = []
    bar = tqdm(
        starts, desc=f"{date} chunks", unit="chunk", leave=False, disable=None if progress else True
    )
    for c, s in enumerate(bar):
        e = min(s + chunk, n_req)
        n = e - s
        slates, prop = sample_slates(
            pool, q, n, K, _rng(world.seed, _S_SLATES, date.toordinal(), c)
        )
        req = np.repeat(np.arange(s, e), K)
        pos = np.tile(np.arange(K), n)
        u = np.repeat(user[s:e], K)
        i = slates.ravel()
        ts = np.repeat(req_ts[s:e], K)
        rng = _rng(world.seed, _S_OUTCOMES, date.toordinal(), c)
        out = _stateful_outcomes(world, u, i, pos, ts, day_end, rng, req - s, user[s:e])
        ev = _assemble(req, pos, u, i, ts, out, with_impressions=True)
        ev["propensity"] = prop.ravel()[ev.pop("pair")]
        cols.append(ev)
        truths.append(
            {"pos": pos.astype(np.int16), "req": req.astype(np.int32), "i": i, **out.truth}
        )
    return cols, truths


def _pop_concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Concatenate same-keyed column dicts, popping each column (the dicts end up empty)."""
    return {name: np.concatenate([p.pop(name) for p in parts]) for name in list(parts[0])}


def _day_events(rid: pa.Array, chunks: list[dict[str, np.ndarray]]) -> tuple[pa.Table, np.ndarray]:
    """The day's log table from the chunks' event columns, sorted by time (stable), and the
    count of each event code ``(4,)`` int64. ``rid``: the request ids the ``req`` column indexes.
    """
    ev = _pop_concat(chunks)
    order = np.argsort(ev["ts"], kind="stable")
    for name in list(ev):
        ev[name] = ev[name][order]
    counts = np.bincount(ev["code"], minlength=4)
    events = _event_table(
        rid, ev["req"], ev["pos"], ev["u"], ev["i"], ev["code"], ev["value"], ev["ts"],
        ev["propensity"], ARM, MODEL_VERSION,
    )  # fmt: skip
    return events, counts


def _truth_table(rid: pa.Array, tr: dict[str, np.ndarray]) -> pa.Table:
    """One row per impression: its ``event_id`` and true probabilities (``truth/impressions``)."""
    codes = pa.repeat(pa.scalar("i"), len(tr["req"]))
    return pa.table(
        {
            "event_id": pc.binary_join_element_wise(
                rid.take(pa.array(tr["req"])),
                "-",
                pc.cast(pa.array(tr["pos"]), pa.string()),
                codes,
                "",
            ),  # fmt: skip
            "true_click_prob": tr["click"],
            "examination_prob": tr["examination"],
            "relevance_prob": tr["relevance"],
            "purchase_prob_given_click": tr["purchase_given_click"],
            "expected_rating": tr["expected_rating"],
        }
    )


def _day_summary(
    world: World, date: dt.date, user: np.ndarray, counts: np.ndarray, tr: dict[str, np.ndarray]
) -> dict:
    """The day's summary row: requests, active users/items, arrivals, event counts and CTRs.

    ``user``: the user row of each request ``(n_req,)``; ``counts``: rows per event code ``(4,)``;
    ``tr``: the impressions' truth columns (``true_ctr_by_position`` has ``SLATE_SIZE`` entries).
    """
    k = world.day_index(date)
    K = SLATE_SIZE
    by_pos = np.bincount(tr["pos"], weights=tr["click"], minlength=K) / np.bincount(
        tr["pos"], minlength=K
    )
    return {
        "date": date.isoformat(),
        "requests": len(user),
        "users": int(np.count_nonzero(np.bincount(user, minlength=world.n_users))),
        "items": int(np.count_nonzero(np.bincount(tr["i"], minlength=world.n_items))),
        "new_users": int((world.signup_day == k).sum()),
        "new_items": int((world.created_day == k).sum()),
        **{name: int(counts[j]) for j, name in enumerate(schema.EVENTS)},
        "ctr": float(counts[1] / max(counts[0], 1)),
        "true_ctr": float(tr["click"].mean()),
        "true_ctr_by_position": [float(x) for x in by_pos],
    }


# --- the closed loop: respond to slates a service showed ------------------------------------------
@dataclass
class Response:
    """What users did with the slates they were shown.

    ``events``: click / purchase / rating rows (columns of ``schema.INTERACTIONS``; ``arm``,
    ``model_version``, ``propensity`` as given to :func:`respond`), sorted by time.
    ``impressions``: one row per shown (row, position) with ``request_id, user_id, item_id,
    position, ts`` and the truth: ``true_click_prob, examination_prob, relevance_prob``.
    """

    events: pd.DataFrame
    impressions: pd.DataFrame


def respond(
    world: World,
    user_ids: Sequence[str] | np.ndarray,
    slates: Sequence[Sequence[str]] | np.ndarray,
    date: str | dt.date,
    seed: int,
    request_ids: Sequence[str] | None = None,
    ts: Sequence | np.ndarray | None = None,
    arm: str | None = None,
    model_version: str | None = None,
    propensities: Sequence[Sequence[float]] | np.ndarray | None = None,
) -> Response:
    """Simulate the users' response to slates shown on ``date``.

    ``user_ids``: ``(n,)``; ``slates``: ``n`` lists of item ids in display order (slot 0 first;
    lengths may differ); ``request_ids``: ``(n,)`` (default ``q<YYYYMMDD>-<row>``); ``ts``: ``(n,)``
    request times inside the day (default: drawn from the diurnal profile); ``propensities``: same
    shape as ``slates``, copied onto the events. Deterministic in ``(world.seed, seed, date)`` and
    the inputs. Items must exist by ``date``.
    """
    date = schema.parse_date(date)
    world.extend_to(date)
    day = world.day_index(date)
    user_ids = np.asarray(user_ids, dtype=object)
    n = len(user_ids)
    if len(slates) != n:
        raise ValueError(f"{n} user ids but {len(slates)} slates")
    lengths, flat_items = _flatten_slates(slates, n)
    u_row, i = _shown_rows(world, user_ids, flat_items, date, day)
    row = np.repeat(np.arange(n), lengths)
    pos = np.arange(len(row)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    rng = _rng(world.seed, _S_RESPOND, seed, date.toordinal())
    start = _day_start_us(date)
    req_ts = _request_times(ts, n, date, rng)
    rid = _request_ids(request_ids, n, date)
    u = u_row[row]
    pair_ts = req_ts[row]
    out = _stateful_outcomes(world, u, i, pos, pair_ts, start + DAY_US, rng, row, u_row)
    ev = _assemble(row, pos, u, i, pair_ts, out, with_impressions=False)
    flat_p = None if propensities is None else _flatten_propensities(propensities, len(i))
    prop = None if flat_p is None else flat_p[ev["pair"]]
    events = _event_table(
        rid, ev["req"], ev["pos"], ev["u"], ev["i"], ev["code"], ev["value"], ev["ts"],
        prop, arm, model_version,
    ).to_pandas()  # fmt: skip
    impressions = pd.DataFrame(
        {
            "request_id": rid.take(pa.array(row)).to_pandas(),
            "user_id": ids_from_rows("u", u).to_pandas(),
            "item_id": ids_from_rows("i", i).to_pandas(),
            "position": pos.astype(np.int32),
            "ts": pd.to_datetime(pair_ts, unit="us", utc=True),
            "true_click_prob": out.truth["click"],
            "examination_prob": out.truth["examination"],
            "relevance_prob": out.truth["relevance"],
        }
    )
    return Response(events, impressions)


def _flatten_slates(
    slates: Sequence[Sequence[str]] | np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(lengths (n,) int64, item ids of every slate in order (sum(lengths),))``."""
    if isinstance(slates, np.ndarray) and slates.ndim == 2:  # rectangular: no Python loop
        return np.full(n, slates.shape[1], dtype=np.int64), slates.ravel()
    lengths = np.fromiter((len(s) for s in slates), dtype=np.int64, count=n)
    return lengths, np.asarray([x for s in slates for x in s], dtype=object)


def _shown_rows(
    world: World, user_ids: np.ndarray, item_ids: np.ndarray, date: dt.date, day: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(user rows, item rows)`` of raw ids; ``ValueError`` for an unknown id, a user who has not
    signed up by ``date`` or an item not created by then (``day``: its index in the world)."""
    u_row = user_rows(world, user_ids)
    late = np.flatnonzero(world.signup_day[u_row] > day)
    if len(late):
        raise ValueError(f"user {user_ids[int(late[0])]!r} has not signed up by {date}")
    i = item_rows(world, item_ids)
    late = np.flatnonzero(world.created_day[i] > day)
    if len(late):
        raise ValueError(f"item {item_ids[int(late[0])]!r} is not created by {date}")
    return u_row, i


def _request_times(
    ts: Sequence | np.ndarray | None, n: int, date: dt.date, rng: np.random.Generator
) -> np.ndarray:
    """Request times in epoch µs ``(n,)``: ``ts`` checked to lie inside ``date``, or (``None``)
    ``n`` draws from ``rng`` following the diurnal profile."""
    start = _day_start_us(date)
    if ts is None:
        sec = rng.choice(24, size=n, p=_HOURLY) * 3600.0 + rng.random(n) * 3600.0
        return start + np.minimum((sec * 1e6).astype(np.int64), DAY_US - 1)
    req_ts = _epoch_us(pd.Series(ts))
    if len(req_ts) != n:
        raise ValueError(f"{len(req_ts)} timestamps for {n} requests")
    bad = np.flatnonzero((req_ts < start) | (req_ts >= start + DAY_US))
    if len(bad):
        raise ValueError(f"ts of row {int(bad[0])} is not inside {date}")
    return req_ts


def _request_ids(request_ids: Sequence[str] | None, n: int, date: dt.date) -> pa.Array:
    """``request_ids`` as ``(n,)`` strings, or (``None``) ``q<YYYYMMDD>-<row>``."""
    if request_ids is None:
        return ids_from_rows(date.strftime("q%Y%m%d-"), np.arange(n))
    rid = pa.array([str(r) for r in request_ids], type=pa.string())
    if len(rid) != n:
        raise ValueError(f"{len(rid)} request ids for {n} requests")
    return rid


def _flatten_propensities(
    propensities: Sequence[Sequence[float]] | np.ndarray, n_shown: int
) -> np.ndarray:
    """Per-slate propensities → float64 ``(n_shown,)`` in slate order; ``ValueError`` on a
    count that is not ``n_shown``."""
    if isinstance(propensities, np.ndarray) and propensities.ndim == 2:
        flat_p = propensities.astype(np.float64).ravel()
    else:
        flat_p = np.asarray([p for s in propensities for p in s], dtype=np.float64)
    if len(flat_p) != n_shown:
        raise ValueError(f"{len(flat_p)} propensities for {n_shown} shown items")
    return flat_p


# --- the command --------------------------------------------------------------------------------
def world_meta(world: World) -> dict:
    """What ``truth/world.json`` records: enough to rebuild the world and read its logs."""
    return {
        "scale": world.scale,
        "seed": world.seed,
        "start_date": world.start_date.isoformat(),
        "slate_size": SLATE_SIZE,
        "exploration": EXPLORATION,
        "examination_by_position": [float(x) for x in EXAMINATION[:SLATE_SIZE]],
        "arm": ARM,
        "model_version": MODEL_VERSION,
        "propensity": "per-slot conditional: q_i / (1 - sum of q over items in earlier slots)",
        # only when on: a world without sequential structure keeps today's world.json bytes
        **({"sequential": world.sequential} if world.sequential > 0 else {}),
    }


WORLD_KEYS = ("scale", "seed", "start_date")
"""What a ``truth/world.json`` must hold to rebuild its world (:func:`read_world_meta`)."""


def read_world_meta(settings: Settings) -> dict[str, Any] | None:
    """The record of this workspace's world (``truth/world.json``, :func:`world_meta`'s fields);
    None when the workspace has none. The one reader of the file.

    Raises ``ValueError`` naming the file when it is unreadable, not a JSON object, or lacks one
    of :data:`WORLD_KEYS`."""
    path = layout.world_path(settings)
    meta = schema.read_json_file(path, "world record")
    if meta is not None and (missing := [k for k in WORLD_KEYS if k not in meta]):
        raise ValueError(f"{path}: world record without {', '.join(missing)}")
    return meta


def write_world_meta(settings: Settings, world: World) -> Path:
    """Record ``world`` in ``truth/world.json`` (:func:`world_meta`), atomically; the path."""
    return schema.write_json_atomic(world_meta(world), layout.world_path(settings))


def truth_impressions_dir(settings: Settings) -> Path:
    """``truth/impressions``: one ``date=D/part-0.parquet`` of true probabilities per impression."""
    return layout.truth_impressions_dir(settings)


def load_world(settings: Settings) -> World:
    """Rebuild the world that ``recloop simulate`` used in this workspace (``truth/world.json``).

    With sequential structure the users' states are those the logs leave: each user's last logged
    click (:func:`restore_state`), so the truth is the truth of the next request."""
    world = _world_from_meta(settings)
    if world.sequential > 0:
        days = schema.partition_dates(settings.interactions_dir)
        if days:
            world.extend_to(days[-1])
            restore_state(world, settings.interactions_dir, days[-1] + dt.timedelta(days=1))
    return world


def _world_from_meta(settings: Settings) -> World:
    """:func:`build_world` of ``truth/world.json`` (users' sequential states empty)."""
    meta = read_world_meta(settings)
    if meta is None:
        path = layout.world_path(settings)
        raise FileNotFoundError(f"{path} not found: run `recloop simulate` first")
    return build_world(
        meta["scale"], int(meta["seed"]), meta["start_date"], float(meta.get("sequential", 0.0))
    )


def load_world_for_replay(settings: Settings, date: str | dt.date) -> World:
    """:func:`load_world` extended to ``date`` and to the workspace's last logged day: a replay
    of a past day reads today's item tables, which may hold items created after ``date``. With
    sequential structure the users' states are those of the start of ``date``."""
    world = _world_from_meta(settings)
    days = schema.partition_dates(settings.interactions_dir)
    last = max([schema.parse_date(date), *days])
    world.extend_to(last)
    if world.sequential > 0:  # the users' states: their last logged clicks before ``date``
        restore_state(world, settings.interactions_dir, schema.parse_date(date))
    return world


def restore_state(world: World, interactions_dir: Path, date: dt.date) -> None:
    """Set every user's sequential state from the clicks logged in ``interactions_dir`` on days
    before ``date`` (the state :func:`simulate_day` left, when those days were simulated)."""
    world.user_last_category[:] = NO_CATEGORY
    for day in schema.partition_dates(interactions_dir):
        if schema.parse_date(day) >= date:
            continue
        ev = schema.read_partition(interactions_dir, day)
        ev = ev[ev["event"] == "click"]
        ts = _epoch_us(ev["ts"])
        u, i = user_rows(world, ev["user_id"]), item_rows(world, ev["item_id"])
        advance_state(world, u, i, ts)


def _update_policy_value(settings: Settings, rows: list[dict]) -> None:
    """Replace the rows of these dates in ``truth/policy_value.parquet`` (others kept)."""
    path = layout.policy_value_path(settings)
    new = pd.DataFrame(rows)
    if path.exists():
        old = pd.read_parquet(path)
        new = pd.concat([old[~old["date"].isin(new["date"])], new], ignore_index=True)
    new = new.sort_values("date", kind="stable").reset_index(drop=True)
    schema.write_table_atomic(pa.Table.from_pandas(new, preserve_index=False), path)


def simulate(
    settings: Settings,
    days: int,
    scale: str | None = None,
    seed: int | None = None,
    start_date: str | dt.date = DEFAULT_START,
    sequential: float | None = None,
) -> list[dict]:
    """Simulate ``days`` days from ``start_date``; write logs, attributes and truth.

    ``sequential``: strength of the sequential structure (default ``settings.sim_sequential``,
    ``RECLOOP_SIM_SEQUENTIAL``, 0). Returns one summary dict per day (events by type, users,
    items, new users/items, CTR).
    """

    if days < 1:
        raise ValueError(f"--days must be at least 1, got {days}")
    scale = scale or settings.scale
    seed = settings.seed if seed is None else int(seed)
    start = schema.parse_date(start_date)
    settings.ensure_dirs()
    if sequential is None:
        sequential = settings.sim_sequential
    world = build_world(scale, seed, start, sequential)
    try:
        old = read_world_meta(settings)
    except ValueError as exc:
        log.warning("%s; replacing it", exc)
        old = None
    if old is not None and (old["scale"], old["seed"], old["start_date"]) != (
        scale, seed, start.isoformat(),
    ):  # fmt: skip
        path = layout.world_path(settings)
        log.warning("%s described another world (%s); replacing it", path, old)
    write_world_meta(settings, world)
    dates = [start + dt.timedelta(days=d) for d in range(days)]
    return simulate_dates(settings, world, dates)


def write_attributes(settings: Settings, world: World, date: str | dt.date) -> None:
    """Write ``data/users.parquet`` / ``data/items.parquet``: everyone signed up / created by
    ``date`` (deterministic, so rewriting the same date gives the same rows)."""
    schema.write_table_atomic(
        schema.conform(world.users_frame(date), schema.USERS),
        layout.attributes_path(settings, "users"),
    )
    schema.write_table_atomic(
        schema.conform(world.items_frame(date), schema.ITEMS),
        layout.attributes_path(settings, "items"),
    )


def simulate_dates(settings: Settings, world: World, dates: list[dt.date]) -> list[dict]:
    """Log ``dates`` (ascending) of ``world`` through the logging policy: each day's partition
    and its truth, then the attribute tables through the last date and the policy values.
    Returns one summary dict per day."""
    from tqdm import tqdm

    summaries, values = [], []
    for date in tqdm(dates, desc=f"simulate {world.scale}", unit="day", disable=None):
        result = simulate_day(world, date, progress=world.scale == "large")
        schema.write_partition_atomic(result.events, settings.interactions_dir, date)
        schema.write_partition_atomic(result.truth, truth_impressions_dir(settings), date)
        s = result.summary
        values.append(
            {
                "date": s["date"],
                "requests": s["requests"],
                "impressions": s["impression"],
                "clicks": s["click"],
                "expected_ctr": s["true_ctr"],
                "realized_ctr": s["ctr"],
                "expected_clicks_per_request": s["true_ctr"] * s["impression"] / s["requests"],
                "expected_ctr_by_position": s["true_ctr_by_position"],
            }
        )
        summaries.append(s)
        log.info(
            "simulated %s: %d requests, %d events (%d clicks), ctr %.4f",
            s["date"], s["requests"], result.events.num_rows, s["click"], s["ctr"],
        )  # fmt: skip
    write_attributes(settings, world, dates[-1])
    _update_policy_value(settings, values)
    return summaries


SUMMARY_COLUMNS = (
    "date", "requests", "users", "items", "new_users", "new_items",
    "impression", "click", "purchase", "rating", "ctr", "true_ctr",
)  # fmt: skip


def format_summary(summaries: list[dict]) -> str:
    """The per-day summary as a fixed-width text table."""
    frame = pd.DataFrame(summaries, columns=list(SUMMARY_COLUMNS))
    return frame.to_string(
        index=False, formatters={"ctr": "{:.4f}".format, "true_ctr": "{:.4f}".format}
    )
