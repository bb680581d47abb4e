"""Ranker training data: labels from the logs, sampled negatives, IPS weights, and the day's
labelled impressions with their feature columns.

Plain functions over DataFrames; nothing here calls the feature store: the caller joins features
(``pipelines.features.store.training_frame`` point in time, or anything else) onto the rows
:func:`label_impressions` / :func:`sample_negatives` return, then fits
(:mod:`pipelines.ranking.train`) and evaluates (:mod:`pipelines.ranking.evaluate`).

Logs without usable impressions (ratings, purchases, clicks without slates: imported histories)
are labelled by :func:`label_positives` instead and completed by sampled negatives;
:func:`window_labels` picks the source and :class:`NotEnoughLabels` says when neither can train
a ranker.

Rows (one per impression, engagement row or sampled negative): ``event_id, request_id, user_id,
item_id, position, propensity, ts, event_timestamp (= ts, what the point-in-time join reads),
label (0/1), sampled (bool), negative_source`` (``logged`` for real rows; ``uniform``,
``popularity`` or ``hard`` for sampled negatives).
"""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.core.validated import validated_dates

log = logging.getLogger(__name__)

#: the feature service the ranker reads (training, evaluation and online scoring)
SERVICE = "ranker_v1"
#: two-tower candidates per user offered as hard negatives
HARD_CANDIDATES = 50
HARD_SHARE = 0.0
"""Share of the sampled negatives drawn from the two-tower's candidates (``hard``; the rest
uniform over the window's items). 0 (was 0.3): on MovieLens 100K (ranker through 1998-03-04,
28 days, every rating a positive, served forward NDCG@10 over 1998-03-16..04-22) the ranker with
30 % hard negatives served 0.352, with uniform negatives only 0.388 — the two-tower's candidates
are the popular recent films the users go on to rate, and a ranker taught that they are
negatives pushes them down (benchmarks/README.md, MovieLens)."""
NEGATIVE_SOURCES = ("uniform", "popularity", "hard")
DEFAULT_MIX: dict[str, float] = {"uniform": 0.7, "popularity": 0.0, "hard": 0.3}
DEFAULT_IPS_CLIP = 100.0
"""Largest raw IPS weight (``1 / propensity`` is capped here: propensities below 1 % count as 1 %)."""
IMPRESSIONS_SOURCE = "impressions"
POSITIVES_SOURCE = "positives+sampled negatives"
"""Label sources (recorded in the ranker's meta as ``label_source``): real impressions (shown and
clicked / not clicked), or, on logs without impressions, engagement rows (clicks, purchases,
ratings at or above ``Settings.rating_positive``; ratings below it are real negatives) completed
by sampled negatives."""
AGE_BAND_EDGES = (18, 25, 35, 45, 55, 65)
"""Lower edges of the ``user_age_band`` buckets (``"<18"``, ``"18-24"`` ... ``"65+"``;
``"unknown"`` for a negative / missing age)."""
ID_FEATURES = ("item_id", "user_age_band", "slot")
"""Sparse columns the ranker reads besides its feature service's (:func:`add_ranker_columns`):
the candidate's id, the user's age band (so that item x age, gender, country crosses can be
learnt) and ``slot``, the position the item was shown at (training; serving feeds
:data:`SERVING_POSITION`). ``slot`` is a copy so that the logged ``position`` stays as logged."""
SERVING_POSITION = 0
"""The ``slot`` every candidate gets when scored: the ranker predicts the click probability
at the top slot, so the logged slot's examination bias does not enter the order."""
MIN_POSITIVES = 20
"""Fewest positives a window needs before a ranker is trained on it."""
SAMPLED_PER_POSITIVE = 3.0
"""Sampled negatives per positive when there are no impressions (no shown-not-clicked rows)."""
LABEL_COLUMNS = (
    "event_id", "request_id", "user_id", "item_id", "position", "propensity", "ts",
    "event_timestamp", "label", "sampled", "negative_source",
)  # fmt: skip


# --- labels ---------------------------------------------------------------------------------------


def label_impressions(
    events: pd.DataFrame, positive_events: Sequence[str] = ("click",)
) -> pd.DataFrame:
    """One row per impression of ``events`` (validated logs, schema ``INTERACTIONS``, any number
    of days) with ``label`` 1 when a ``positive_events`` row of the same request and item exists
    (a click in the same slate), else 0: a real negative, shown and not clicked.

    Impressions without a ``request_id`` cannot be matched to their clicks and are dropped;
    a repeated (request, item) impression is kept once; both are counted in the log. Sorted by
    ``ts`` then ``request_id`` and ``position``. Columns :data:`LABEL_COLUMNS`.
    """
    need = {"event_id", "ts", "user_id", "item_id", "event", "request_id", "position"}
    missing = need - set(events.columns)
    if missing:
        raise ValueError(f"events lack columns {sorted(missing)}")
    imp = events[events["event"] == "impression"]
    no_req = imp["request_id"].isna()
    if no_req.any():
        log.warning("label_impressions: %d impressions without request_id dropped", no_req.sum())
        imp = imp[~no_req]
    dup = imp.duplicated(["request_id", "item_id"], keep="first")
    if dup.any():
        log.warning("label_impressions: %d repeated (request, item) impressions dropped", dup.sum())
        imp = imp[~dup]
    pos = events[events["event"].isin(list(positive_events)) & events["request_id"].notna()]
    pos = pos[["request_id", "item_id"]].drop_duplicates()
    pos = pos.assign(label=np.int8(1))
    out = imp.merge(pos, on=["request_id", "item_id"], how="left", validate="one_to_one")
    orphans = len(pos) - int(out["label"].notna().sum())
    if orphans:
        log.warning("label_impressions: %d clicks match no impression of their request", orphans)
    out["label"] = out["label"].fillna(0).astype(np.int8)
    if "propensity" not in out.columns:
        out["propensity"] = np.nan
    out["ts"] = pd.to_datetime(out["ts"], utc=True)
    out["event_timestamp"] = out["ts"]
    out["position"] = out["position"].astype("Int32")
    out["propensity"] = out["propensity"].astype("float64")
    out["sampled"] = False
    out["negative_source"] = "logged"
    out = out.sort_values(["ts", "request_id", "position"], kind="stable").reset_index(drop=True)
    log.info(
        "labelled %d impressions (%d clicked, ctr %.4f) in %d requests",
        len(out), int(out["label"].sum()), float(out["label"].mean()) if len(out) else 0.0,
        out["request_id"].nunique(),
    )  # fmt: skip
    return out[list(LABEL_COLUMNS)]


class NotEnoughLabels(ValueError):
    """The logs of a window cannot train a ranker (no usable impressions, too few positives)."""


def label_positives(events: pd.DataFrame, rating_positive: float = 4.0) -> pd.DataFrame:
    """Labelled rows of logs without usable impressions (columns :data:`LABEL_COLUMNS`): every
    engagement event except impressions and ratings (``click``, ``purchase``...) and every
    ``rating`` with ``value >= rating_positive`` is label 1; a rating below it is label 0 (a
    real negative: seen and disliked). Impressions are ignored.

    One row per (user, item, UTC day) (the highest label wins, then the earliest row); its
    ``request_id`` is ``"<user_id>|<day>"`` (a user's day groups like a request for NDCG) and
    ``position``/``propensity`` are null. Sorted by ``ts`` then ``request_id``.
    """
    need = {"event_id", "ts", "user_id", "item_id", "event", "value"}
    missing = need - set(events.columns)
    if missing:
        raise ValueError(f"events lack columns {sorted(missing)}")
    ev = events[events["event"] != "impression"].copy()
    rated = ev["event"] == "rating"
    ev["label"] = np.where(~rated | (ev["value"] >= rating_positive), 1, 0).astype(np.int8)
    ev["ts"] = pd.to_datetime(ev["ts"], utc=True)
    day = ev["ts"].dt.strftime("%Y-%m-%d")
    ev["request_id"] = ev["user_id"].astype(str) + "|" + day
    ev = ev.sort_values(["label", "ts"], ascending=[False, True], kind="stable")
    ev = ev.drop_duplicates(["request_id", "item_id"], keep="first")
    ev["event_timestamp"] = ev["ts"]
    ev["position"] = pd.array([pd.NA] * len(ev), dtype="Int32")
    ev["propensity"] = np.nan
    ev["sampled"] = False
    ev["negative_source"] = "logged"
    ev = ev.sort_values(["ts", "request_id"], kind="stable").reset_index(drop=True)
    log.info(
        "labelled %d engagement rows without impressions (%d positives, ratings >= %g)",
        len(ev), int(ev["label"].sum()), rating_positive,
    )  # fmt: skip
    return ev[list(LABEL_COLUMNS)]


# --- sampled negatives ------------------------------------------------------------------------------


def _normalize_mix(mix: Mapping[str, float]) -> dict[str, float]:
    unknown = set(mix) - set(NEGATIVE_SOURCES)
    if unknown:
        raise ValueError(f"unknown negative sources {sorted(unknown)}: expected {NEGATIVE_SOURCES}")
    shares = {s: float(mix.get(s, 0.0)) for s in NEGATIVE_SOURCES}
    if any(v < 0 for v in shares.values()) or sum(shares.values()) <= 0:
        raise ValueError(f"negative mix {dict(mix)} needs non-negative shares with a positive sum")
    total = sum(shares.values())
    return {s: v / total for s, v in shares.items()}


def _pair_keys(users: np.ndarray, items: np.ndarray) -> np.ndarray:
    return np.char.add(np.char.add(users.astype(str), "\x1f"), items.astype(str))


def _popularity_probs(
    item_popularity: Sequence[float] | np.ndarray | None, pool: np.ndarray, power: float
) -> np.ndarray:
    """Sampling probabilities ``(len(pool),)`` ``∝ item_popularity ** power``."""
    if item_popularity is None:
        raise ValueError("the popularity share needs item_popularity (aligned with item_pool)")
    pop = np.asarray(item_popularity, dtype=np.float64)
    if pop.shape != pool.shape:
        raise ValueError(f"item_popularity {pop.shape} and item_pool {pool.shape} differ")
    weight = np.maximum(pop, 0.0) ** power
    if weight.sum() <= 0:
        raise ValueError("item_popularity is zero everywhere")
    return weight / weight.sum()


def _row_sources(rng: np.random.Generator, shares: dict[str, float], n: int) -> np.ndarray:
    """The source of each of ``n`` sampled rows ``(n,)`` object: counts rounded from ``shares``
    (uniform takes the remainder), in a random order."""
    counts = {s: int(round(shares[s] * n)) for s in ("popularity", "hard")}
    counts["uniform"] = n - counts["popularity"] - counts["hard"]
    return rng.permutation(np.repeat(np.array(NEGATIVE_SOURCES, dtype=object), [
        counts["uniform"], counts["popularity"], counts["hard"]
    ]))  # fmt: skip


def _sample_hard(
    rng: np.random.Generator,
    source: np.ndarray,
    users: np.ndarray,
    items: np.ndarray,
    positives: pd.DataFrame,
    hard_candidates: Mapping[str, Sequence[str]] | None,
) -> None:
    """Fill ``items`` of the ``hard`` rows in place: one of the row user's candidates minus the
    items the user engaged with (``positives``); a user with none left turns the row's
    ``source`` to ``uniform``."""
    is_hard = np.flatnonzero(source == "hard")
    engaged_by_user: dict[str, set] = {}
    if len(is_hard):
        for u, grp in positives.groupby("user_id", sort=False)["item_id"]:
            engaged_by_user[str(u)] = set(grp)
    left: dict[str, np.ndarray] = {}
    fallback = 0
    for j in is_hard:
        u = str(users[j])
        if u not in left:
            cands = hard_candidates.get(u, ()) if hard_candidates else ()
            eng = engaged_by_user.get(u, set())
            left[u] = np.asarray([c for c in cands if c not in eng], dtype=object)
        if len(left[u]):
            items[j] = left[u][rng.integers(len(left[u]))]
        else:
            source[j] = "uniform"
            fallback += 1
    if fallback:
        log.info("sample_negatives: %d hard rows had no candidates left: uniform instead", fallback)


def _sample_from_pool(
    rng: np.random.Generator,
    source: np.ndarray,
    users: np.ndarray,
    items: np.ndarray,
    pool: np.ndarray,
    prob_pop: np.ndarray | None,
    engaged_keys: pd.Index,
) -> np.ndarray:
    """Fill ``items`` of the ``uniform`` / ``popularity`` rows in place, resampling (up to 8
    rounds) rows whose (user, item) pair the user engaged with. Returns the rows ``(R,)`` that
    still hit an engaged item after the last round."""
    todo = np.flatnonzero(source != "hard")
    for _ in range(8):
        if len(todo) == 0:
            break
        uni = todo[source[todo] == "uniform"]
        items[uni] = pool[rng.integers(len(pool), size=len(uni))]
        pp = todo[source[todo] == "popularity"]
        if len(pp):
            items[pp] = pool[rng.choice(len(pool), size=len(pp), p=prob_pop)]
        hit = pd.Index(_pair_keys(users[todo], items[todo])).isin(engaged_keys)
        todo = todo[hit]
    return todo


def _sampled_frame(
    anchor_rows: pd.DataFrame, items: np.ndarray, source: np.ndarray
) -> pd.DataFrame:
    """Sampled-negative rows: ``anchor_rows``' request, user and times, ``items`` ``(N,)`` and
    ``source`` ``(N,)``; label 0, ``sampled`` True, position and propensity null."""
    n = len(anchor_rows)
    sampled = pd.DataFrame(
        {
            "event_id": anchor_rows["event_id"].astype(str).to_numpy()
            + "-n"
            + np.arange(n).astype(str),
            "request_id": anchor_rows["request_id"].to_numpy(),
            "user_id": anchor_rows["user_id"].to_numpy(),
            "item_id": items,
            "position": pd.array([pd.NA] * n, dtype="Int32"),
            "propensity": np.nan,
            "ts": anchor_rows["ts"].to_numpy(),
            "event_timestamp": anchor_rows["event_timestamp"].to_numpy(),
            "label": np.int8(0),
            "sampled": True,
            "negative_source": source,
        }
    )
    sampled["ts"] = pd.to_datetime(sampled["ts"], utc=True)
    sampled["event_timestamp"] = pd.to_datetime(sampled["event_timestamp"], utc=True)
    return sampled


def _append_sampled(labelled: pd.DataFrame, sampled: pd.DataFrame) -> pd.DataFrame:
    """``labelled`` then ``sampled`` (extra columns of ``labelled`` null on the sampled rows)."""
    extra = [c for c in labelled.columns if c not in sampled.columns]
    for c in extra:
        sampled[c] = pd.NA
    with warnings.catch_warnings():  # all-NA extra columns of the sampled rows
        warnings.simplefilter("ignore", FutureWarning)
        out = pd.concat([labelled, sampled[list(labelled.columns)]], ignore_index=True)
    out["label"] = out["label"].astype(np.int8)
    out["sampled"] = out["sampled"].astype(bool)
    return out


def sample_negatives(
    labelled: pd.DataFrame,
    item_pool: Sequence[str] | np.ndarray,
    item_popularity: Sequence[float] | np.ndarray | None = None,
    hard_candidates: Mapping[str, Sequence[str]] | None = None,
    mix: Mapping[str, float] = DEFAULT_MIX,
    ratio: float = 1.0,
    seed: int = 0,
    popularity_power: float = 0.75,
) -> pd.DataFrame:
    """``labelled`` plus ``round(ratio * positives)`` sampled negatives (label 0, ``sampled``
    True, ``propensity`` and ``position`` null).

    Each sampled row copies a positive row's ``request_id``, ``user_id``, ``ts`` and
    ``event_timestamp`` (so a point-in-time join gives it that moment's features) and gets an
    ``item_id`` from one source, split by ``mix`` (shares, normalized to sum 1):

    - ``uniform``: any item of ``item_pool``;
    - ``popularity``: ``item_pool`` with probability ``∝ item_popularity ** popularity_power``
      (``item_popularity`` aligned with ``item_pool``, e.g. impression or click counts);
    - ``hard``: one of ``hard_candidates[user_id]`` (the retrieval model's top candidates) that
      the user did not engage with. With no hard candidates at all the hard share is sampled
      uniformly (logged); a user without any left falls back to uniform for that row.

    No sampled negative is an item the user clicked anywhere in ``labelled`` (resampled, then
    dropped). Deterministic under ``seed``.
    """
    shares = _normalize_mix(mix)
    pool = np.asarray(item_pool, dtype=object)
    if len(pool) == 0:
        raise ValueError("item_pool is empty")
    if "sampled" not in labelled.columns:
        labelled = labelled.assign(sampled=False)
    if "negative_source" not in labelled.columns:
        labelled = labelled.assign(negative_source="logged")
    rng = np.random.default_rng(seed)
    real = labelled[~labelled["sampled"].astype(bool)]
    positives = real[real["label"] == 1].reset_index(drop=True)
    n_total = int(round(ratio * len(positives)))
    if n_total == 0 or len(positives) == 0:
        log.info("sample_negatives: no positives or ratio 0: nothing sampled")
        return labelled.reset_index(drop=True)
    if shares["hard"] > 0 and not hard_candidates:
        log.info(
            "sample_negatives: no hard candidates given: the %.0f%% hard share is sampled "
            "uniformly instead", 100 * shares["hard"],
        )  # fmt: skip
        shares = {**shares, "uniform": shares["uniform"] + shares["hard"], "hard": 0.0}
    prob_pop = None
    if shares["popularity"] > 0:
        prob_pop = _popularity_probs(item_popularity, pool, popularity_power)
    anchors = np.resize(rng.permutation(len(positives)), n_total)
    source = _row_sources(rng, shares, n_total)
    users = positives["user_id"].to_numpy(dtype=object)[anchors]
    engaged_keys = pd.Index(
        _pair_keys(positives["user_id"].to_numpy(), positives["item_id"].to_numpy())
    ).unique()
    items = np.empty(n_total, dtype=object)
    _sample_hard(rng, source, users, items, positives, hard_candidates)
    todo = _sample_from_pool(rng, source, users, items, pool, prob_pop, engaged_keys)
    keep = np.ones(n_total, dtype=bool)
    keep[todo] = False
    if len(todo):
        log.info("sample_negatives: %d rows kept hitting engaged items: dropped", len(todo))
    anchor_rows = positives.iloc[anchors[keep]].reset_index(drop=True)
    sampled = _sampled_frame(anchor_rows, items[keep], source[keep])
    got = sampled["negative_source"].value_counts().to_dict()
    log.info("sampled %d negatives for %d positives: %s", len(sampled), len(positives), got)
    return _append_sampled(labelled, sampled)


# --- inverse propensity weights -----------------------------------------------------------------------


def ips_weights(
    propensity: Sequence[float] | np.ndarray | pd.Series,
    clip: float = DEFAULT_IPS_CLIP,
    self_normalize: bool = True,
) -> np.ndarray:
    """Per-row loss weights ``(N,)`` float64: ``min(1 / propensity, clip)``.

    With ``self_normalize`` the rows that have a propensity are scaled to mean exactly 1 (so the
    loss keeps its scale and the learning rate its meaning). Rows without one (null/NaN: sampled
    negatives, or logs of an unknown policy) get weight 1: they are not reweighted. A propensity
    outside ``(0, 1]`` raises ``ValueError`` naming the row.
    """
    if clip < 1:
        raise ValueError(f"clip must be >= 1 (a weight cap), got {clip}")
    p = pd.to_numeric(pd.Series(propensity), errors="coerce").to_numpy(dtype=np.float64)
    has = ~np.isnan(p)
    bad = np.flatnonzero(has & ~((p > 0) & (p <= 1)))
    if len(bad):
        raise ValueError(f"propensity of row {int(bad[0])} is {p[bad[0]]!r}: expected (0, 1]")
    w = np.ones(len(p), dtype=np.float64)
    w[has] = np.minimum(1.0 / p[has], clip)
    if self_normalize and has.any():
        w[has] /= w[has].mean()
    return w


# --- the stage's rows and columns ---------------------------------------------------------------------


def feature_columns(
    settings: Settings, extra: Sequence[str] = ID_FEATURES
) -> tuple[list[str], list[str]]:
    """``(dense, sparse)`` feature names of the ranker's feature service, ``extra`` (default
    :data:`ID_FEATURES`, made by :func:`add_ranker_columns`) appended to the sparse ones."""
    from pipelines.features.store import service_features
    from pipelines.features.tables import FEATURE_TYPES

    names = [n for cols in service_features(settings, SERVICE).values() for n in cols]
    dense = [n for n in names if FEATURE_TYPES[n] != "string"]
    sparse = [n for n in names if FEATURE_TYPES[n] == "string"]
    return dense, [*sparse, *[c for c in extra if c not in sparse]]


def age_band(age: float | int | None) -> str:
    """The ``user_age_band`` of one age in years (:data:`AGE_BAND_EDGES`)."""
    try:
        a = float(age)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "unknown"
    if not np.isfinite(a) or a < 0:
        return "unknown"
    k = int(np.searchsorted(np.asarray(AGE_BAND_EDGES), a, side="right"))
    if k == 0:
        return f"<{AGE_BAND_EDGES[0]}"
    if k == len(AGE_BAND_EDGES):
        return f"{AGE_BAND_EDGES[-1]}+"
    return f"{AGE_BAND_EDGES[k - 1]}-{AGE_BAND_EDGES[k] - 1}"


def add_ranker_columns(frame: pd.DataFrame, position: int | None = None) -> pd.DataFrame:
    """A copy of ``frame`` (feature rows with ``user_age``, ``item_id``, and ``position`` when
    logged) with the :data:`ID_FEATURES`: ``user_age_band`` from ``user_age``; ``slot`` = the
    logged ``position`` (``position=None``; missing where there is none: sampled negatives) or
    the constant ``position`` (:data:`SERVING_POSITION` to score as serving does). ``item_id``
    as text."""
    out = frame.copy()
    ages = out["user_age"] if "user_age" in out.columns else pd.Series(np.nan, index=out.index)
    out["user_age_band"] = [age_band(a) for a in ages.to_numpy()]
    out["item_id"] = out["item_id"].astype(str)
    if position is not None:
        out["slot"] = int(position)
    elif "position" in out.columns:
        out["slot"] = out["position"].astype("Int32")
    else:
        out["slot"] = pd.array([pd.NA] * len(out), dtype="Int32")
    return out


def read_validated(settings: Settings, first: dt.date, last: dt.date) -> pd.DataFrame:
    """The validated events of the days in ``[first, last]`` (schema ``INTERACTIONS``; empty
    frame when no day there was validated)."""
    frames = [
        schema.read_partition(settings.validated_dir, d)
        for d in validated_dates(settings, first, last)
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def labelled_impressions(settings: Settings, first: dt.date, last: dt.date) -> pd.DataFrame:
    """Labelled impressions of the validated days in ``[first, last]`` (empty if none)."""
    events = read_validated(settings, first, last)
    if events.empty or not (events["event"] == "impression").any():
        return pd.DataFrame()
    return label_impressions(events)


def usable_impressions(labelled: pd.DataFrame) -> bool:
    """True when labelled impressions hold both clicks and non-clicks (a ranker can learn)."""
    return not labelled.empty and labelled["label"].nunique() == 2


def _hash_unit(values: pd.Series, seed: int) -> np.ndarray:
    """A uniform number in [0, 1) per value ``(N,)`` float64, a pure function of the value and
    ``seed`` (the same request draws the same number on every day and rerun)."""
    key = f"recloop{seed:09d}"[-16:].rjust(16, "0")
    h = pd.util.hash_array(values.astype(str).to_numpy(dtype=object), hash_key=key)
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def impressions_per_day(settings: Settings, first: dt.date, last: dt.date) -> dict[dt.date, int]:
    """Logged impressions of each validated day in ``[first, last]`` (reads one column)."""
    out = {}
    for d in validated_dates(settings, first, last):
        files = sorted(schema.partition_dir(settings.validated_dir, d).glob("*.parquet"))
        out[d] = sum(
            int(pc.sum(pc.equal(pq.read_table(f, columns=["event"])["event"], "impression")).as_py()
                or 0)
            for f in files
        )  # fmt: skip
    return out


def sampled_requests(
    settings: Settings, first: dt.date, last: dt.date, share: float
) -> pd.DataFrame:
    """The validated rows of ``[first, last]`` whose ``request_id`` falls in a seeded sample of
    ``share`` of the requests (:func:`_hash_unit` < share; rows without a request dropped), read
    one day at a time so the whole window is never in memory."""
    frames = []
    for d in validated_dates(settings, first, last):
        day = schema.read_partition(settings.validated_dir, d)
        has = day["request_id"].notna()
        keep = has.to_numpy().copy()
        keep[has.to_numpy()] = _hash_unit(day.loc[has, "request_id"], settings.seed) < share
        frames.append(day[keep])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def sample_users(rows: pd.DataFrame, max_users: int, seed: int) -> pd.DataFrame:
    """The rows of at most ``max_users`` users of ``rows`` (a seeded uniform sample of the
    distinct ``user_id`` values, order kept); ``rows`` itself when it has no more."""
    users = pd.unique(rows["user_id"].astype(str))
    if len(users) <= max_users:
        return rows
    pick = np.random.default_rng(seed).choice(len(users), max_users, replace=False)
    kept = rows["user_id"].astype(str).isin(users[pick]).to_numpy()
    log.info("%d of %d users sampled: %d of %d rows", max_users, len(users), kept.sum(), len(rows))
    return rows[kept].reset_index(drop=True)


def window_labels(
    settings: Settings,
    first: dt.date,
    last: dt.date,
    min_positives: int = MIN_POSITIVES,
    max_rows: int | None = None,
) -> tuple[pd.DataFrame, str]:
    """The labelled rows of the validated days ``[first, last]`` and their source: the labelled
    impressions when they hold clicks and non-clicks (``"impressions"``), else the engagement
    rows of :func:`label_positives` (:data:`POSITIVES_SOURCE`, to be completed by sampled
    negatives). :class:`NotEnoughLabels` when neither gives ``min_positives`` positives.

    ``max_rows``: when the window logs more impressions than this, the impressions of a seeded
    sample of whole requests (about ``max_rows`` rows, :func:`sampled_requests`) are labelled
    instead of all of them."""
    if max_rows is not None:
        total = sum(impressions_per_day(settings, first, last).values())
        if total > max_rows:
            labelled = label_impressions(sampled_requests(settings, first, last, max_rows / total))
            log.info(
                "window %s..%s: %d impressions > %d: labelled a sample of requests (%d rows)",
                first, last, total, max_rows, len(labelled),
            )  # fmt: skip
            if usable_impressions(labelled):
                return labelled, IMPRESSIONS_SOURCE
    events = read_validated(settings, first, last)
    span = f"the validated days {first}..{last}"
    if events.empty:
        raise NotEnoughLabels(f"no validated logs in {span}: nothing to train a ranker on")
    if (events["event"] == "impression").any():
        labelled = label_impressions(events)
        if usable_impressions(labelled):
            return labelled, IMPRESSIONS_SOURCE
    labelled = label_positives(events, settings.rating_positive)
    n_pos = int(labelled["label"].sum()) if len(labelled) else 0
    if n_pos < min_positives:
        raise NotEnoughLabels(
            f"no impressions with both clicks and non-clicks and only {n_pos} positives "
            f"(clicks/purchases, ratings >= {settings.rating_positive:g}) in {span}; "
            f"a ranker needs at least {min_positives}"
        )
    return labelled, POSITIVES_SOURCE


def hard_candidates(
    settings: Settings, date: dt.date, users: list[str]
) -> dict[str, list[str]] | None:
    """Top two-tower candidates per user from the model trained through ``date`` (None if absent)."""
    from pipelines.retrieval.predict import recommend

    try:
        recs = recommend(
            settings, "two_tower", HARD_CANDIDATES, users, date.isoformat(), cold_start=False
        )
    except FileNotFoundError:
        return None
    return recs.groupby("user_id")["item_id"].apply(list).to_dict()


def negative_mix(hard: dict[str, list[str]] | None) -> dict[str, float]:
    """:data:`HARD_SHARE` hard negatives when there are hard candidates, the rest uniform."""
    share = HARD_SHARE if hard else 0.0
    return {"uniform": 1.0 - share, "popularity": 0.0, "hard": share}


def training_rows(
    settings: Settings,
    day: dt.date,
    window_days: int,
    min_positives: int = MIN_POSITIVES,
    negatives_per_click: float = 0.0,
) -> tuple[pd.DataFrame, dict[str, float], str]:
    """The ranker's training rows for the ``window_days`` ending at ``day`` (features not yet
    joined), the negative mix used and the label source (:func:`window_labels`).

    From impressions: the labelled impressions alone (real negatives: shown, not clicked), plus
    ``negatives_per_click`` sampled negatives per click when asked (default none: sampled
    negatives lower the base rate the ranker learns, ``benchmarks/README.md``; item pool and
    popularity from the impressions). Without usable impressions: the positives (and
    ratings below the threshold, real negatives) plus :data:`SAMPLED_PER_POSITIVE` sampled
    negatives per positive (item pool and popularity from every event of the window). Hard
    candidates come from the two-tower trained through ``day`` in both cases. At most about
    ``RECLOOP_RANKER_MAX_ROWS`` impressions: whole requests, a seeded sample, above it.
    :class:`NotEnoughLabels` (a ``ValueError``) when there is nothing to learn from."""
    first = day - dt.timedelta(days=window_days - 1)
    labelled, source = window_labels(settings, first, day, min_positives, settings.ranker_max_rows)
    if source == IMPRESSIONS_SOURCE:
        if negatives_per_click <= 0:
            return labelled, {}, source
        popularity = labelled["item_id"].astype(str).value_counts()
        ratio = negatives_per_click
    else:
        popularity = read_validated(settings, first, day)["item_id"].astype(str).value_counts()
        ratio = SAMPLED_PER_POSITIVE
    hard = (
        hard_candidates(settings, day, sorted(labelled["user_id"].astype(str).unique()))
        if HARD_SHARE > 0
        else None
    )
    mix = negative_mix(hard)
    rows = sample_negatives(
        labelled,
        popularity.index.to_numpy(),
        popularity.to_numpy(),
        hard,
        mix=mix,
        ratio=ratio,
        seed=settings.seed,
    )
    return rows, mix, source
