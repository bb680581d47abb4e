"""Ranker training data and evaluation: labels from the logs, sampled negatives, IPS weights.

Plain functions over DataFrames; nothing here calls the feature store: the caller joins features
(``pipelines.features.store.training_frame`` point in time, or anything else) onto the rows
:func:`label_impressions` / :func:`sample_negatives` return, then calls :func:`train_ranker`
and :func:`evaluate_ranker`.

Rows (one per impression or sampled negative): ``event_id, request_id, user_id, item_id,
position, propensity, ts, event_timestamp (= ts, what the point-in-time join reads), label (0/1),
sampled (bool), negative_source`` (``logged`` for real impressions; ``uniform``, ``popularity`` or
``hard`` for sampled negatives).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from models.dlrm import Ranker

log = logging.getLogger(__name__)

NEGATIVE_SOURCES = ("uniform", "popularity", "hard")
DEFAULT_MIX: dict[str, float] = {"uniform": 0.7, "popularity": 0.0, "hard": 0.3}
DEFAULT_IPS_CLIP = 100.0
"""Largest raw IPS weight (``1 / propensity`` is capped here: propensities below 1 % count as 1 %)."""
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
        if item_popularity is None:
            raise ValueError("the popularity share needs item_popularity (aligned with item_pool)")
        pop = np.asarray(item_popularity, dtype=np.float64)
        if pop.shape != pool.shape:
            raise ValueError(f"item_popularity {pop.shape} and item_pool {pool.shape} differ")
        weight = np.maximum(pop, 0.0) ** popularity_power
        if weight.sum() <= 0:
            raise ValueError("item_popularity is zero everywhere")
        prob_pop = weight / weight.sum()
    anchors = np.resize(rng.permutation(len(positives)), n_total)
    counts = {s: int(round(shares[s] * n_total)) for s in ("popularity", "hard")}
    counts["uniform"] = n_total - counts["popularity"] - counts["hard"]
    source = rng.permutation(np.repeat(np.array(NEGATIVE_SOURCES, dtype=object), [
        counts["uniform"], counts["popularity"], counts["hard"]
    ]))  # fmt: skip
    users = positives["user_id"].to_numpy(dtype=object)[anchors]
    engaged_keys = pd.Index(
        _pair_keys(
            real.loc[real["label"] == 1, "user_id"].to_numpy(),
            real.loc[real["label"] == 1, "item_id"].to_numpy(),
        )
    ).unique()
    items = np.empty(n_total, dtype=object)

    # hard negatives: per row, one of the user's candidates minus the user's engaged items
    is_hard = np.flatnonzero(source == "hard")
    engaged_by_user: dict[str, set] = {}
    if len(is_hard):
        pos_rows = real[real["label"] == 1]
        for u, grp in pos_rows.groupby("user_id", sort=False)["item_id"]:
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

    # uniform / popularity, resampling (user, item) pairs the user engaged with
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
    keep = np.ones(n_total, dtype=bool)
    keep[todo] = False
    if len(todo):
        log.info("sample_negatives: %d rows kept hitting engaged items: dropped", len(todo))
    anchor_rows = positives.iloc[anchors[keep]].reset_index(drop=True)
    sampled = pd.DataFrame(
        {
            "event_id": anchor_rows["event_id"].astype(str).to_numpy()
            + "-n"
            + np.arange(int(keep.sum())).astype(str),
            "request_id": anchor_rows["request_id"].to_numpy(),
            "user_id": anchor_rows["user_id"].to_numpy(),
            "item_id": items[keep],
            "position": pd.array([pd.NA] * int(keep.sum()), dtype="Int32"),
            "propensity": np.nan,
            "ts": anchor_rows["ts"].to_numpy(),
            "event_timestamp": anchor_rows["event_timestamp"].to_numpy(),
            "label": np.int8(0),
            "sampled": True,
            "negative_source": source[keep],
        }
    )
    sampled["ts"] = pd.to_datetime(sampled["ts"], utc=True)
    sampled["event_timestamp"] = pd.to_datetime(sampled["event_timestamp"], utc=True)
    got = sampled["negative_source"].value_counts().to_dict()
    log.info("sampled %d negatives for %d positives: %s", len(sampled), len(positives), got)
    extra = [c for c in labelled.columns if c not in sampled.columns]
    for c in extra:
        sampled[c] = pd.NA
    with warnings.catch_warnings():  # all-NA extra columns of the sampled rows
        warnings.simplefilter("ignore", FutureWarning)
        out = pd.concat([labelled, sampled[list(labelled.columns)]], ignore_index=True)
    out["label"] = out["label"].astype(np.int8)
    out["sampled"] = out["sampled"].astype(bool)
    return out


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


# --- training -----------------------------------------------------------------------------------------


def train_ranker(
    train_frame: pd.DataFrame,
    dense: Sequence[str],
    sparse: Sequence[str],
    interaction: str = "dot",
    ips: bool = False,
    label: str = "label",
    ips_clip: float = DEFAULT_IPS_CLIP,
    propensity_col: str = "propensity",
    feature_service: str = "",
    valid_frame: pd.DataFrame | None = None,
    **params: Any,
) -> Ranker:
    """Fit a :class:`models.dlrm.Ranker` on ``train_frame`` (features + ``label``).

    ``ips``: weight each row's loss by :func:`ips_weights` of ``propensity_col``. ``params`` go to
    the ``Ranker`` constructor (``dim``, ``epochs``, ``lr``, ``seed``, ``hash_features`` ...).
    """
    ranker = Ranker(
        dense_features=dense,
        sparse_features=sparse,
        interaction=interaction,
        feature_service=feature_service,
        **params,
    )
    weight = None
    if ips:
        if propensity_col not in train_frame.columns:
            raise ValueError(f"ips=True but the frame has no {propensity_col!r} column")
        train_frame = train_frame.assign(
            _ips_weight=ips_weights(train_frame[propensity_col], ips_clip)
        )
        weight = "_ips_weight"
    return ranker.fit(train_frame, label=label, weight=weight, valid_frame=valid_frame)


def fit_logistic_regression(
    train_frame: pd.DataFrame,
    dense: Sequence[str],
    sparse: Sequence[str],
    ips: bool = False,
    label: str = "label",
    **params: Any,
) -> Ranker:
    """The baseline: logistic regression (``interaction="linear"``) on the same normalized dense
    features and one weight per category bucket (one-hot, hashed for large vocabularies)."""
    params.setdefault("lr", 1e-2)
    return train_ranker(
        train_frame, dense, sparse, interaction="linear", ips=ips, label=label, **params
    )


# --- evaluation -------------------------------------------------------------------------------------


def mean_ndcg_at_k(
    requests: np.ndarray | pd.Series,
    labels: np.ndarray | pd.Series,
    scores: np.ndarray | pd.Series,
    k: int = 10,
    seed: int = 0,
) -> float:
    """Mean over requests with at least one positive of NDCG@``k`` of the request's rows ordered
    by ``scores`` (descending; ties broken at random under ``seed``), relevance = ``labels``."""
    codes, uniq = pd.factorize(pd.Series(requests), sort=False)
    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    n, g = len(codes), len(uniq)
    if n == 0:
        return float("nan")
    tie = np.random.default_rng(seed).random(n)
    disc = 1.0 / np.log2(np.arange(n) + 2.0)

    def dcg(order: np.ndarray) -> np.ndarray:
        r = codes[order]
        starts = np.r_[0, np.flatnonzero(np.diff(r)) + 1]
        rank = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
        gain = np.where(rank < k, y[order] * disc[np.minimum(rank, n - 1)], 0.0)
        return np.bincount(r, weights=gain, minlength=g)

    got = dcg(np.lexsort((tie, -s, codes)))
    ideal = dcg(np.lexsort((tie, -y, codes)))
    has = ideal > 0
    return float((got[has] / ideal[has]).mean()) if has.any() else float("nan")


def calibration_table(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Equal-count bins of the predicted probability (deciles by default): per bin ``n``,
    ``mean_pred``, ``observed_ctr``, ``low``/``high`` (its prediction range)."""
    y = np.asarray(labels, dtype=np.float64)
    p = np.asarray(probs, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    rows = []
    for b, idx in enumerate(np.array_split(order, n_bins)):
        if len(idx) == 0:
            continue
        rows.append(
            {
                "bin": b,
                "n": len(idx),
                "low": float(p[idx].min()),
                "high": float(p[idx].max()),
                "mean_pred": float(p[idx].mean()),
                "observed_ctr": float(y[idx].mean()),
            }
        )
    return pd.DataFrame(rows)


def expected_calibration_error(table: pd.DataFrame) -> float:
    """``Σ_b n_b / N · |mean_pred_b − observed_b|`` over a :func:`calibration_table`."""
    if len(table) == 0:
        return float("nan")
    w = table["n"] / table["n"].sum()
    return float((w * (table["mean_pred"] - table["observed_ctr"]).abs()).sum())


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(a, np.float64), np.asarray(b, np.float64)).statistic)


def evaluate_scores(
    frame: pd.DataFrame,
    scores: np.ndarray,
    label: str = "label",
    request_col: str = "request_id",
    retrieval_score_col: str | None = None,
    true_prob_col: str | None = None,
    probabilities: bool = True,
    k: int = 10,
) -> dict[str, Any]:
    """Metrics of ``scores`` ``(N,)`` against ``frame[label]``: ``auc``; when ``probabilities``,
    ``logloss``, ``ece`` and ``calibration`` (decile table as records); ``ndcg@k`` per request
    (relevance = label); with ``retrieval_score_col`` also ``ndcg@k_retrieval`` and
    ``ndcg@k_lift`` (ours − retrieval order); with a ``position`` column ``ndcg@k_logged`` (the
    order that was shown); with ``true_prob_col`` ``spearman_truth``."""
    from pipelines.core.metrics import auc, logloss

    y = frame[label].to_numpy(dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    out: dict[str, Any] = {"rows": len(frame), "positives": int(y.sum()), "auc": auc(y, s)}
    if probabilities:
        table = calibration_table(y, s)
        out["logloss"] = logloss(y, s)
        out["ece"] = expected_calibration_error(table)
        out["mean_pred"] = float(s.mean()) if len(s) else float("nan")
        out["observed_ctr"] = float(y.mean()) if len(y) else float("nan")
        out["calibration"] = table.to_dict(orient="records")
    if request_col in frame.columns:
        req = frame[request_col].to_numpy()
        out[f"ndcg@{k}"] = mean_ndcg_at_k(req, y, s, k)
        if retrieval_score_col is not None:
            base = mean_ndcg_at_k(req, y, frame[retrieval_score_col].to_numpy(np.float64), k)
            out[f"ndcg@{k}_retrieval"] = base
            out[f"ndcg@{k}_lift"] = out[f"ndcg@{k}"] - base
        if "position" in frame.columns and frame["position"].notna().all():
            shown = -frame["position"].to_numpy(dtype=np.float64)
            out[f"ndcg@{k}_logged"] = mean_ndcg_at_k(req, y, shown, k)
    if true_prob_col is not None:
        out["spearman_truth"] = spearman(s, frame[true_prob_col].to_numpy(np.float64))
    return out


def evaluate_ranker(
    ranker: Ranker,
    test_frame: pd.DataFrame,
    retrieval_score_col: str | None = None,
    true_prob_col: str | None = None,
    label: str = "label",
    k: int = 10,
) -> dict[str, Any]:
    """:func:`evaluate_scores` of ``ranker.predict_proba(test_frame)`` (pass real impressions,
    e.g. the next day's, not sampled negatives), plus the input report (non-finite / OOV counts)."""
    probs = ranker.predict_proba(test_frame)
    out = evaluate_scores(
        test_frame, probs, label=label, retrieval_score_col=retrieval_score_col,
        true_prob_col=true_prob_col, k=k,
    )  # fmt: skip
    out["model"] = ranker.interaction
    out["input_report"] = ranker.last_report
    return out
