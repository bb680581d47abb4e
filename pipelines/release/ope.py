"""Off-policy evaluation: what a target policy's reward would have been, from another policy's logs.

The table (what :func:`estimate` reads; ``recloop ope --table FILE`` reads the same as parquet/CSV)
---------------------------------------------------------------------------------------------------
**One row = one logged decision**: one shown item at one slot of one request (for a one-item
bandit, one row per round). Columns:

==========================  ======================================================================
``reward``                  observed reward of that row (1.0 / 0.0 for a click). Required.
``propensity``              probability that the **logging** policy showed this item at this slot
                            in this context (the item-position marginal, see below). Required.
                            Missing (null/NaN) or zero: the row is *excluded and counted*.
``target_propensity``       probability that the **target** policy shows this item at this slot in
                            this context (same meaning). Required; 0 allowed (target never shows it).
``predicted_reward``        reward model's prediction ``r̂(x, a, k)`` for the logged item ``a`` at
                            the logged slot ``k`` in context ``x``. DM and DR only.
``target_predicted_reward`` the model's expected reward of the target at this row's context and
                            slot: ``Σ_a π(a at k | x) r̂(x, a, k)``. DM and DR only.
``request_id``              optional cluster key: rows sharing it (the slots of one slate) are
                            resampled together by the bootstrap, so correlated slots do not make
                            the intervals too narrow. Without it, each row is its own cluster.
==========================  ======================================================================

With ``w = target_propensity / propensity`` over the ``n`` included rows:

* ``ips``         = ``Σ w r / n``
* ``clipped_ips`` = ``Σ min(w, clip) r / n``  (biased low when weights are clipped; less variance)
* ``snips``       = ``Σ w r / Σ w``           (self-normalised; bounded by the rewards)
* ``dm``          = ``Σ target_predicted_reward / n``  (no weights; as good as the reward model)
* ``dr``          = ``Σ [target_predicted_reward + w (r - predicted_reward)] / n``

Each estimates the target's **mean reward per row**: for slates of ``K`` slots, its CTR per
impression (multiply by ``K`` for expected clicks per request). ``dm`` / ``dr`` are reported with
``estimate: null`` and a ``skipped`` reason when their columns are absent. Each estimator's entry
holds ``estimate``, ``ci_low``, ``ci_high`` (bootstrap percentile interval at level
``1 - alpha``), ``ess`` (effective sample size ``(Σ w)² / Σ w²`` of the weights it uses; ``n`` for
``dm``), ``n`` (rows used), ``excluded`` (rows dropped for a missing/zero propensity),
``clusters`` (bootstrap units) and, for weighted ones, ``mean_weight`` (should be close to 1: far
from it means the propensities do not describe the logs or the target leaves the logged support).

**Exclusion.** A row whose ``propensity`` is null, NaN or 0 cannot be reweighted; it is dropped
before any sum, counted in ``excluded`` and logged as a warning. The estimates then describe the
remaining rows' contexts. Negative or > 1 propensities, missing rewards and missing target
propensities are errors that name the row and column (never silently used).

Slates: the item-position form
------------------------------
A slate policy's value per row is ``V(π) = E_x (1/K) Σ_k Σ_a π(a at k | x) r(x, a, k)``. When the
expected reward of an item depends only on (context, item, slot), as under the examination
hypothesis (``P(click) = P(examine k) P(relevant | x, a)``, the simulator's truth), each shown
(item, slot) can be reweighted on its own by ``w = π(a at k | x) / μ(a at k | x)``: the item-position
IPS estimator (Li et al. 2018). It is unbiased when ``propensity`` is the logging policy's
**item-position marginal** ``μ(a at k | x)`` (probability that item ``a`` lands at slot ``k``,
summed over every possible slate) and is positive wherever ``π(a at k | x)`` is. It needs far less
overlap than whole-slate IPS (a product over slots) but ignores interactions between the items of a
slate (cascades, diversity effects).

**The simulator logs the per-slot conditional** ``q_a / (1 - q-mass of the items above)``, not the
marginal (the product over a slate is the ordered slate's probability). Using it as if it were the
marginal biases item-position IPS. :func:`slot_marginals` turns a slot-by-slot sampling-without-
replacement policy (the simulator's logging ``q``; the target's softmax) into item-position
marginals by Rao-Blackwellised Monte Carlo: it samples ``n_samples`` prefixes and averages the
exact conditional probability ``q_a 1[a not above] / (1 - mass above)`` of every item at every slot,
so slot 0 is exact, every slot sums to 1 exactly, and the error is much smaller than counting hits.
:func:`simulator_logging_marginals` applies it to the simulator's logging policy of a day;
:func:`policy_table` accepts the result as ``logging_marginals``.

Target policies
---------------
:func:`policy_table` turns a day's logs plus a scoring function into the table. A deterministic
top-K policy has no overlap with a stochastic logging policy, so the target is its **softmax
relaxation**: ``π(a | x) = softmax(score(x, ·) / temperature)`` over the candidate items, with
slates drawn slot by slot without replacement (Plackett-Luce), which ranks by score on average and
tends to the top-K as ``temperature → 0``. The temperature belongs in every report of an estimate.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

ESTIMATORS = ("ips", "clipped_ips", "snips", "dm", "dr")
REQUIRED = ("reward", "propensity", "target_propensity")
MODEL_COLUMNS = ("predicted_reward", "target_predicted_reward")
DEFAULT_CLIP = 20.0
DEFAULT_N_BOOT = 1000

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


# --- the table ----------------------------------------------------------------------------------
def read_table(path: str | Path) -> pd.DataFrame:
    """Read an OPE table from parquet (``.parquet`` / ``.pq``) or CSV (anything else)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"OPE table {path} not found")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot be read as CSV: {exc}") from exc


def _numeric(table: pd.DataFrame, name: str, source: str) -> np.ndarray:
    col = pd.to_numeric(table[name], errors="coerce")
    bad = np.flatnonzero(col.isna().to_numpy() & table[name].notna().to_numpy())
    if len(bad):
        raise ValueError(
            f"{source}: row {int(bad[0])}, column {name!r}: {table[name].iloc[bad[0]]!r} "
            f"is not a number"
        )
    return col.to_numpy(dtype=np.float64)


def _first_bad(mask: np.ndarray, rows: np.ndarray) -> int:
    return int(rows[np.flatnonzero(mask)[0]])


def prepare(table: pd.DataFrame, source: str = "table") -> tuple[dict[str, np.ndarray], int]:
    """Check the columns of an OPE table and drop rows without a usable propensity.

    Returns ``(columns, excluded)``: float64 arrays of the included rows (``reward``,
    ``propensity``, ``target_propensity``, the model columns when present, and ``cluster`` int64
    codes) and the count of rows excluded for a null / NaN / zero propensity. Raises ``ValueError``
    naming ``source``, the row (0-based position in the table) and the column for anything else.
    """
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise ValueError(
            f"{source}: missing column {missing[0]!r} (needs {', '.join(REQUIRED)}; "
            f"has {', '.join(map(str, table.columns)) or 'no columns'})"
        )
    cols = {c: _numeric(table, c, source) for c in REQUIRED}
    for c in MODEL_COLUMNS:
        if c in table.columns:
            cols[c] = _numeric(table, c, source)
    rows = np.arange(len(table))
    p = cols["propensity"]
    if np.any(p < 0) or np.any(p > 1):
        bad = (p < 0) | (p > 1)
        r = _first_bad(bad, rows)
        raise ValueError(f"{source}: row {r}, column 'propensity': {p[r]} is outside [0, 1]")
    keep = np.isfinite(p) & (p > 0)
    excluded = int(len(p) - keep.sum())
    if excluded:
        log.warning(
            "%s: %d of %d rows excluded (missing or zero propensity)", source, excluded, len(p)
        )
    if "request_id" in table.columns:
        cluster = pd.factorize(table["request_id"].astype("string").fillna("<null>"))[0]
    else:
        cluster = rows.copy()
    rows = rows[keep]
    out = {name: v[keep] for name, v in cols.items()}
    out["cluster"] = pd.factorize(cluster[keep])[0].astype(np.int64)
    if not len(rows):
        raise ValueError(f"{source}: no rows with a usable propensity ({excluded} excluded)")
    for name in ("reward", "target_propensity", *MODEL_COLUMNS):
        if name not in out:
            continue
        v = out[name]
        if not np.all(np.isfinite(v)):
            r = _first_bad(~np.isfinite(v), rows)
            raise ValueError(f"{source}: row {r}, column {name!r} is missing")
    tp = out["target_propensity"]
    if np.any((tp < 0) | (tp > 1)):
        r = _first_bad((tp < 0) | (tp > 1), rows)
        raise ValueError(f"{source}: row {r}, column 'target_propensity' is outside [0, 1]")
    return out, excluded


def _ess(w: np.ndarray) -> float:
    s2 = float(np.sum(w * w))
    return float(np.sum(w)) ** 2 / s2 if s2 > 0 else 0.0


def estimate(
    table: pd.DataFrame,
    n_boot: int = DEFAULT_N_BOOT,
    clip: float = DEFAULT_CLIP,
    alpha: float = 0.05,
    seed: int = 0,
    source: str = "table",
) -> dict[str, dict[str, Any]]:
    """Estimate the target policy's mean reward per row with IPS, clipped IPS, SNIPS, DM and DR.

    ``table``: the columns of the module docstring (one row per logged item-slot decision).
    ``n_boot``: bootstrap replicates (0: no intervals); clusters = ``request_id`` when present.
    ``clip``: weight cap of ``clipped_ips``. ``alpha``: interval level ``1 - alpha``.
    Returns ``{estimator: {estimate, ci_low, ci_high, ess, n, excluded, clusters, ...}}`` for the
    five of :data:`ESTIMATORS` (``dm`` / ``dr`` with ``estimate=None`` and ``skipped`` when the
    model columns are absent). Deterministic in ``seed``.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not clip > 0:
        raise ValueError(f"clip must be positive, got {clip}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    cols, excluded = prepare(table, source)
    r = cols["reward"]
    w = cols["target_propensity"] / cols["propensity"]
    wc = np.minimum(w, clip)
    has_model = all(c in cols for c in MODEL_COLUMNS)
    # per-row terms; every estimator is a ratio of two cluster sums: numerator / denominator
    terms = {"n": np.ones_like(r), "w": w, "wr": w * r, "wcr": wc * r}
    if has_model:
        terms["dm"] = cols["target_predicted_reward"]
        terms["dr"] = cols["target_predicted_reward"] + w * (r - cols["predicted_reward"])
    ratios = {
        "ips": ("wr", "n"),
        "clipped_ips": ("wcr", "n"),
        "snips": ("wr", "w"),
        "dm": ("dm", "n"),
        "dr": ("dr", "n"),
    }
    names = list(terms)
    cluster = cols["cluster"]
    g = int(cluster.max()) + 1
    sums = np.stack([np.bincount(cluster, weights=terms[k], minlength=g) for k in names], axis=1)
    total = sums.sum(axis=0)
    idx = {k: j for j, k in enumerate(names)}
    boot = _bootstrap_sums(sums, n_boot, seed) if n_boot else None
    n = len(r)
    ess = {"ips": _ess(w), "clipped_ips": _ess(wc), "snips": _ess(w), "dm": float(n), "dr": _ess(w)}
    out: dict[str, dict[str, Any]] = {}
    for name in ESTIMATORS:
        entry: dict[str, Any] = {"n": n, "excluded": excluded, "clusters": g}
        num, den = ratios[name]
        if num not in idx:
            entry.update(estimate=None, ci_low=None, ci_high=None, ess=None)
            entry["skipped"] = f"needs columns {', '.join(MODEL_COLUMNS)}"
            out[name] = entry
            continue
        if total[idx[den]] == 0:  # snips when the target gives every logged row weight 0
            entry.update(estimate=None, ci_low=None, ci_high=None)
            entry["skipped"] = "all weights are 0: the target never shows the logged items"
        else:
            entry["estimate"] = float(total[idx[num]] / total[idx[den]])
            entry["ci_low"] = entry["ci_high"] = None
        if boot is not None and entry["estimate"] is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                reps = boot[:, idx[num]] / boot[:, idx[den]]
            reps = reps[np.isfinite(reps)]  # replicates drawing only weight-0 clusters: no ratio
            if len(reps):
                lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
                entry["ci_low"], entry["ci_high"] = float(lo), float(hi)
        entry["ess"] = float(ess[name])
        if name != "dm":
            entry["mean_weight"] = float(w.mean())
        if name == "clipped_ips":
            entry["clip"] = float(clip)
            entry["clipped_rows"] = int(np.count_nonzero(w > clip))
        out[name] = entry
    return out


def _bootstrap_sums(sums: np.ndarray, n_boot: int, seed: int, chunk: int = 64) -> np.ndarray:
    """``(n_boot, m)`` column sums of ``sums`` (``(g, m)`` per-cluster sums) over resampled clusters.

    Each replicate draws ``g`` clusters with replacement (multinomial counts).
    """
    g = len(sums)
    rng = np.random.default_rng(seed)
    out = np.empty((n_boot, sums.shape[1]))
    for s in range(0, n_boot, chunk):
        b = min(chunk, n_boot - s)
        idx = rng.integers(0, g, size=(b, g))
        counts = np.stack([np.bincount(row, minlength=g) for row in idx]).astype(np.float64)
        out[s : s + b] = counts @ sums
    return out


# --- item-position marginals ---------------------------------------------------------------------
def softmax(scores: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise ``softmax(scores / temperature)`` (``-inf`` scores get probability 0)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    z = np.asarray(scores, dtype=np.float64) / temperature
    z = z - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sample_prefixes(
    q: np.ndarray, k: int, n_samples: int, rng: np.random.Generator, max_tries: int = 20
) -> np.ndarray:
    """``(b * n_samples, k)`` item indices drawn slot by slot without replacement from rows of ``q``.

    ``q``: ``(b, n_items)`` probabilities, rows summing to 1, each with at least ``k`` positive
    entries. Sample ``r`` belongs to row ``r // n_samples``; its column ``j`` is the item at slot
    ``j`` (a Plackett-Luce slate prefix: what :func:`slot_marginals` averages over). Repeats are
    redrawn up to ``max_tries`` times, then drawn exactly from the renormalised remaining mass
    (peaked distributions). Draws from ``rng`` in place.
    """
    b, n_items = q.shape
    cdf = np.cumsum(q, axis=1)
    cdf /= cdf[:, -1:]
    last = np.array([np.flatnonzero(row > 0)[-1] for row in q])  # last item with mass
    flat = (cdf + np.arange(b)[:, None]).ravel()
    ctx = np.repeat(np.arange(b), n_samples)
    offset = ctx * n_items
    slate = np.empty((len(ctx), k), dtype=np.int64)

    def draw(rows: np.ndarray) -> np.ndarray:
        u = ctx[rows] + rng.random(len(rows))
        c = np.searchsorted(flat, u, side="right") - offset[rows]
        return np.minimum(c, last[ctx[rows]])

    for s in range(k):
        cand = draw(np.arange(len(ctx)))
        todo = np.flatnonzero((slate[:, :s] == cand[:, None]).any(axis=1))
        for _ in range(max_tries):
            if not len(todo):
                break
            cand[todo] = draw(todo)
            todo = todo[(slate[todo, :s] == cand[todo, None]).any(axis=1)]
        if len(todo):  # exact draw from what is left
            p = q[ctx[todo]].copy()
            np.put_along_axis(p, slate[todo, :s], 0.0, axis=1)
            c = np.cumsum(p, axis=1)
            u = rng.random(len(todo)) * c[:, -1]
            pick = (c > u[:, None]).argmax(axis=1)
            cand[todo] = pick
        slate[:, s] = cand
    return slate


def slot_marginals(
    q: np.ndarray, k: int, n_samples: int = 1000, seed: int = 0, max_cells: int = 2_000_000
) -> np.ndarray:
    """Item-position marginals of filling ``k`` slots from ``q`` without replacement, slot by slot.

    ``q``: ``(n_items,)`` or ``(b, n_items)`` probabilities (rows sum to 1; zeros allowed).
    Returns ``(n_items, k)`` or ``(b, n_items, k)``: ``M[a, j]`` = P(item ``a`` lands at slot
    ``j``). Rao-Blackwellised Monte Carlo over ``n_samples`` sampled slates per row:
    ``M[a, j] = q_a E[1(a not in slots < j) / (1 - q-mass in slots < j)]`` — slot 0 is exact
    (``q``), each slot sums to 1 exactly, and each entry is unbiased. Rows are processed in
    chunks of about ``max_cells`` sampled cells. Deterministic in ``seed``.
    """
    q = np.asarray(q, dtype=np.float64)
    single = q.ndim == 1
    q2 = q[None, :] if single else q
    b, n_items = q2.shape
    if np.any(q2 < 0) or not np.all(np.isfinite(q2)):
        raise ValueError("q must be finite and non-negative")
    q2 = q2 / q2.sum(axis=1, keepdims=True)
    if k > int(np.min(np.count_nonzero(q2 > 0, axis=1))):
        raise ValueError(f"{k} slots but a row of q has fewer items with positive probability")
    rng = np.random.default_rng(seed)
    out = np.empty((b, n_items, k))
    step = max(1, max_cells // max(1, n_samples * k))
    for s in range(0, b, step):
        qc = q2[s : s + step]
        bc = len(qc)
        slate = sample_prefixes(qc, k, n_samples, rng)  # (bc * n_samples, k)
        ctx = np.repeat(np.arange(bc), n_samples)
        mass = qc[ctx[:, None], slate]  # (R, k) q of each placed item
        placed = np.concatenate([np.zeros((len(ctx), 1)), np.cumsum(mass, axis=1)[:, :-1]], axis=1)
        inv = 1.0 / np.maximum(1.0 - placed, 1e-12)  # (R, k): 1 / (1 - mass above slot j)
        a_mean = inv.reshape(bc, n_samples, k).mean(axis=1)  # (bc, k)
        c = np.zeros(bc * n_items * k)
        for j in range(1, k):  # items above slot j remove their share at slot j
            cell = (ctx[:, None] * n_items + slate[:, :j]) * k + j
            c += np.bincount(
                cell.ravel(), weights=np.repeat(inv[:, j], j), minlength=bc * n_items * k
            )
        c = c.reshape(bc, n_items, k) / n_samples
        out[s : s + bc] = qc[:, :, None] * (a_mean[:, None, :] - c)
    np.maximum(out, 0.0, out=out)  # rounding only
    return out[0] if single else out


# --- a policy + a day's logs → the table -----------------------------------------------------------
def _impressions_with_reward(logs: pd.DataFrame, reward_event: str) -> pd.DataFrame:
    need = ("request_id", "user_id", "item_id", "position", "event")
    missing = [c for c in need if c not in logs.columns]
    if missing:
        raise ValueError(f"logs: missing column {missing[0]!r} (needs {', '.join(need)})")
    imp = logs.loc[logs["event"] == "impression"]
    if imp.empty:
        raise ValueError("logs: no impression rows")
    bad = imp["position"].isna() | imp["request_id"].isna()
    if bad.any():
        raise ValueError(
            f"logs: impression {imp.index[np.flatnonzero(bad.to_numpy())[0]]} has no "
            f"position or request_id"
        )
    cols = ["request_id", "user_id", "item_id", "position"]
    if "propensity" in imp.columns:
        cols.append("propensity")
    imp = imp[cols].copy()
    imp["position"] = imp["position"].astype(np.int64)
    key = ["request_id", "position", "item_id"]
    hits = logs.loc[logs["event"] == reward_event, key].drop_duplicates()
    hits = hits.assign(reward=1.0)
    hits["position"] = hits["position"].astype(np.int64)
    imp = imp.merge(hits, on=key, how="left")
    imp["reward"] = imp["reward"].fillna(0.0)
    return imp.reset_index(drop=True)


def policy_table(
    logs: pd.DataFrame,
    score: ScoreFn,
    items: Sequence[str] | np.ndarray,
    temperature: float = 1.0,
    k: int | None = None,
    logging_marginals: tuple[np.ndarray, np.ndarray] | None = None,
    predict: ScoreFn | None = None,
    n_samples: int = 500,
    seed: int = 0,
    reward_event: str = "click",
) -> pd.DataFrame:
    """The OPE table of a softmax target policy over one day's logs.

    ``logs``: interactions (``schema.INTERACTIONS`` columns): impressions give the rows (one per
    shown item and slot); a ``reward_event`` row with the same request, position and item makes
    the reward 1 (else 0).
    ``score(user_ids (U,), item_ids (I,)) -> (U, I)`` the target's scores of every candidate for
    every user (a registered model's scorer); ``items``: the candidate pool it ranks.
    ``temperature``: the softmax temperature (``π = softmax(score / temperature)``, slates drawn
    without replacement); ``k``: the target's slots (default: the logs' largest position + 1).
    ``logging_marginals``: ``(item_ids (J,), M (J, K))`` the logging policy's item-position
    marginals (non-personalised, as :func:`simulator_logging_marginals` gives); ``None`` means the
    logged ``propensity`` already is that marginal. Logged items absent from it get a null
    propensity (excluded by :func:`estimate`).
    ``predict(user_ids (U,), item_ids (I,)) -> (U, I, k)`` optional reward model (expected reward
    of item at each slot; a ``(U, I)`` result is used for every slot): fills ``predicted_reward``
    and ``target_predicted_reward``.
    Context = user: target marginals are computed once per distinct user (``n_samples``
    Rao-Blackwellised slates each). Returns the table with ``request_id, user_id, item_id,
    position, reward, propensity, target_propensity`` (+ model columns), one row per impression.
    """
    imp = _impressions_with_reward(logs, reward_event)
    max_pos = int(imp["position"].max())
    k = max_pos + 1 if k is None else int(k)
    if int(imp["position"].min()) < 0:
        raise ValueError("logs: negative position")
    pool, axis = _item_axis(items, imp["item_id"])
    pos = imp["position"].to_numpy()
    if logging_marginals is not None:
        imp["propensity"] = _logging_propensity(imp["item_id"], pos, logging_marginals)
    elif "propensity" not in imp.columns:
        raise ValueError("logs: no 'propensity' column and no logging_marginals given")
    users, u_row = np.unique(imp["user_id"].astype(str).to_numpy(), return_inverse=True)
    a_row = pd.Index(axis.astype(str)).get_indexer(imp["item_id"].astype(str))
    rows = _TableRows(users, u_row, axis, a_row, pos)
    target = _target_columns(rows, pool, score, predict, k, temperature, n_samples, seed)
    for name, column in target.items():
        imp[name] = column
    log.info(
        "OPE table: %d rows, %d requests, %d users, temperature %g, k %d",
        len(imp), imp["request_id"].nunique(), len(users), temperature, k,
    )  # fmt: skip
    return imp


def _item_axis(
    items: Sequence[str] | np.ndarray, logged: pd.Series
) -> tuple[np.ndarray, np.ndarray]:
    """``(pool (I,), axis (A,))``: the candidate ids (``ValueError`` on a duplicate) and the item
    axis of the target's marginals: the candidates first, then the other logged items (sorted)."""
    pool = np.asarray(items, dtype=object)
    if len(pd.unique(pool)) != len(pool):
        raise ValueError("items: duplicate candidate ids")
    logged_items = pd.unique(logged.to_numpy(dtype=object))
    extra = np.setdiff1d(logged_items.astype(str), pool.astype(str))
    return pool, np.concatenate([pool, extra.astype(object)])


def _logging_propensity(
    item_ids: pd.Series, pos: np.ndarray, logging_marginals: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """Each row's logging propensity ``(n,)`` from ``(item_ids (J,), M (J, K))`` marginals: NaN
    for an item absent from them or a slot ``>= K``."""
    lid, lm = logging_marginals
    lm = np.asarray(lm, dtype=np.float64)
    if lm.ndim != 2 or lm.shape[0] != len(lid):
        raise ValueError("logging_marginals: expected (item_ids (J,), M (J, K))")
    j = pd.Index(np.asarray(lid).astype(str)).get_indexer(item_ids.astype(str))
    ok = (j >= 0) & (pos < lm.shape[1])
    prop = np.full(len(item_ids), np.nan)
    prop[ok] = lm[j[ok], pos[ok]]
    return prop


@dataclass(frozen=True)
class _TableRows:
    """Where each of the ``n`` table rows sits: ``users (U,)`` the distinct user ids (sorted) and
    ``u_row (n,)`` each row's index in them; ``axis (A,)`` the item axis (:func:`_item_axis`) and
    ``a_row (n,)`` each row's index in it; ``pos (n,)`` each row's 0-based slot."""

    users: np.ndarray
    u_row: np.ndarray
    axis: np.ndarray
    a_row: np.ndarray
    pos: np.ndarray


def _target_columns(
    rows: _TableRows,
    pool: np.ndarray,
    score: ScoreFn,
    predict: ScoreFn | None,
    k: int,
    temperature: float,
    n_samples: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """The target's columns ``(n,)``: ``target_propensity`` (0 at a slot ``>= k``) and, with
    ``predict``, ``predicted_reward`` and ``target_predicted_reward``.

    Users are processed in chunks; the chunk starting at user ``s`` samples its marginals with
    seed ``seed + s``.
    """
    n_pool, n = len(pool), len(rows.pos)
    in_k = rows.pos < k
    out = {"target_propensity": np.zeros(n)}
    if predict is not None:
        out["predicted_reward"] = np.full(n, np.nan)
        out["target_predicted_reward"] = np.full(n, np.nan)
    step = max(1, 2_000_000 // max(1, len(rows.axis) * k))
    for s in range(0, len(rows.users), step):
        uc = rows.users[s : s + step]
        sc = np.asarray(score(uc, pool), dtype=np.float64)
        if sc.shape != (len(uc), n_pool):
            raise ValueError(f"score returned shape {sc.shape}, expected {(len(uc), n_pool)}")
        prob = np.zeros((len(uc), len(rows.axis)))
        prob[:, :n_pool] = softmax(sc, temperature)
        marg = slot_marginals(prob, k, n_samples=n_samples, seed=seed + s)  # (U, A, k)
        sel = np.flatnonzero((rows.u_row >= s) & (rows.u_row < s + len(uc)))
        ok = sel[in_k[sel]]
        out["target_propensity"][ok] = marg[rows.u_row[ok] - s, rows.a_row[ok], rows.pos[ok]]
        if predict is not None:
            p = np.asarray(predict(uc, rows.axis), dtype=np.float64)
            _fill_model_columns(out, p, marg, rows, sel, s)
    return out


def _fill_model_columns(
    out: dict[str, np.ndarray],
    p: np.ndarray,
    marg: np.ndarray,
    rows: _TableRows,
    sel: np.ndarray,
    s: int,
) -> None:
    """Fill ``predicted_reward`` and ``target_predicted_reward`` of rows ``sel`` (users ``s`` ..
    ``s + U - 1``) from the reward model's ``p (U, A, >= k)`` (or ``(U, A)``: every slot) and the
    target's marginals ``marg (U, A, k)``."""
    n_users, n_axis, k = marg.shape
    if p.ndim == 2:
        p = np.repeat(p[:, :, None], k, axis=2)
    if p.shape[:2] != (n_users, n_axis) or p.shape[2] < k:
        raise ValueError(f"predict returned shape {p.shape}, expected {(n_users, n_axis, k)}")
    pos, u, a = rows.pos[sel], rows.u_row[sel] - s, rows.a_row[sel]
    out["predicted_reward"][sel] = p[u, a, np.minimum(pos, p.shape[2] - 1)]
    dm = np.einsum("uak,uak->uk", marg, p[:, :, :k])  # (U, k)
    out["target_predicted_reward"][sel] = np.where(pos < k, dm[u, np.minimum(pos, k - 1)], 0.0)


# --- checking against the simulator's truth ------------------------------------------------------
def simulator_logging_marginals(
    world: Any, date: str | dt.date, k: int | None = None, n_samples: int = 20_000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Item-position marginals of the simulator's logging policy on ``date``.

    Returns ``(item_ids (J,), M (J, k))`` for :func:`policy_table`'s ``logging_marginals``.
    """
    from pipelines.data import simulate

    k = simulate.SLATE_SIZE if k is None else k
    pool, q = simulate.logging_policy(world, date)
    ids = np.array([f"i{r}" for r in pool], dtype=object)
    return ids, slot_marginals(q, k, n_samples=n_samples, seed=seed)


def simulator_relevance_score(world: Any) -> ScoreFn:
    """The oracle's scorer: ``logit P(relevant | user, item)`` from the simulator's truth.

    ``score(user_ids (U,), item_ids (I,)) -> (U, I)``; its top-K is the oracle slate.
    """
    from pipelines.data import simulate

    def score(user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        rel = true_click_matrix(world, user_ids, item_ids, 1)[:, :, 0] / simulate.EXAMINATION[0]
        rel = np.clip(rel, 1e-12, 1 - 1e-12)
        return np.log(rel) - np.log1p(-rel)

    return score


def true_click_matrix(world: Any, user_ids: np.ndarray, item_ids: np.ndarray, k: int) -> np.ndarray:
    """True P(click) of every (user, item, slot < k): ``(U, I, k)`` float64, from the simulator."""
    from pipelines.data import simulate

    u = np.repeat(np.asarray(user_ids, dtype=object), len(item_ids))
    i = np.tile(np.asarray(item_ids, dtype=object), len(user_ids))
    out = np.empty((len(user_ids), len(item_ids), k))
    for j in range(k):
        p = simulate.true_click_prob(world, u, i, j)
        out[:, :, j] = p.reshape(len(user_ids), len(item_ids))
    return out


def noisy_reward_model(world: Any, noise: float = 0.5, seed: int = 0) -> ScoreFn:
    """An imperfect reward model for DM/DR checks: the true click probability with
    ``N(0, noise²)`` added to the relevance logit, fixed per (user, item) pair.

    ``predict(user_ids (U,), item_ids (I,)) -> (U, I, SLATE_SIZE)``.
    """
    from pipelines.data import simulate

    rng = np.random.default_rng([seed, 7919])
    eps = rng.normal(0.0, noise, (world.n_users, world.n_items))
    rel_score = simulator_relevance_score(world)

    def predict(user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        u = simulate.user_rows(world, user_ids)
        i = simulate.item_rows(world, item_ids)
        logit = rel_score(user_ids, item_ids) + eps[np.ix_(u, i)]
        rel = 1.0 / (1.0 + np.exp(-logit))
        return rel[:, :, None] * simulate.EXAMINATION[None, None, : simulate.SLATE_SIZE]

    return predict


def true_policy_value(
    world: Any,
    user_ids: np.ndarray,
    score: ScoreFn,
    items: np.ndarray,
    temperature: float,
    k: int,
    n_samples: int = 500,
    seed: int = 0,
) -> np.ndarray:
    """True expected reward per slot of the softmax target for each user: ``(U,)`` float64.

    ``V_u = (1/k) Σ_j Σ_a π(a at j | u) P_true(click | u, a, j)`` with the same marginals
    :func:`policy_table` computes (same ``n_samples`` and ``seed`` for the same users give the
    same numbers). Average it over the logged requests' users for the value on those contexts.
    """
    users = np.asarray(user_ids, dtype=object)
    items = np.asarray(items, dtype=object)
    out = np.empty(len(users))
    step = max(1, 2_000_000 // max(1, len(items) * k))
    for s in range(0, len(users), step):
        uc = users[s : s + step]
        marg = slot_marginals(softmax(score(uc, items), temperature), k, n_samples, seed + s)
        out[s : s + step] = (
            np.einsum("uak,uak->u", marg, true_click_matrix(world, uc, items, k)) / k
        )
    return out


def simulated_logs(
    world: Any, date: str | dt.date, n_requests: int, seed: int, k: int | None = None
) -> pd.DataFrame:
    """Logs of the simulator's logging policy for ``n_requests`` requests on ``date``.

    Users are drawn among those signed up by ``date`` in proportion to their activity; slates are
    drawn with :func:`pipelines.data.simulate.sample_slates` (per-slot conditional ``propensity``, as
    ``simulate_day`` logs); clicks are Bernoulli draws of the true click probability. Returns
    impression rows (``request_id, user_id, item_id, position, event, propensity,
    true_click_prob``) followed by one ``click`` row per click. For checks against the truth with a
    chosen sample size; ``simulate_day`` writes the real day's logs.
    """
    from pipelines.data import simulate

    k = simulate.SLATE_SIZE if k is None else k
    world.extend_to(date)
    day = world.day_index(date)
    rng = np.random.default_rng([world.seed, seed, 104729])
    eligible = np.flatnonzero(world.signup_day <= day)
    act = world.user_activity[eligible].astype(np.float64)
    users = eligible[rng.choice(len(eligible), size=n_requests, p=act / act.sum())]
    pool, q = simulate.logging_policy(world, date)
    slates, prop = simulate.sample_slates(pool, q, n_requests, k, rng)
    user_ids = np.array([f"u{u}" for u in users], dtype=object)
    item_ids = np.array([f"i{i}" for i in slates.ravel()], dtype=object)
    u_rep = np.repeat(user_ids, k)
    pos = np.tile(np.arange(k), n_requests)
    p_click = simulate.true_click_prob(world, u_rep, item_ids, pos)
    imp = pd.DataFrame(
        {
            "request_id": np.repeat([f"s{seed}-{n}" for n in range(n_requests)], k),
            "user_id": u_rep,
            "item_id": item_ids,
            "position": pos,
            "event": "impression",
            "propensity": prop.ravel(),
            "true_click_prob": p_click,
        }
    )
    clicks = imp.loc[rng.random(len(imp)) < p_click].assign(event="click")
    return pd.concat([imp, clicks], ignore_index=True)


def format_estimates(result: dict[str, dict[str, Any]]) -> str:
    """A fixed-width text table of :func:`estimate`'s result."""
    lines = [f"{'estimator':<12} {'estimate':>10} {'ci_low':>10} {'ci_high':>10} {'ess':>10}"]
    for name, e in result.items():

        def f(x: Any) -> str:
            return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.5f}"

        ess = "-" if e.get("ess") is None else f"{e['ess']:.0f}"
        lines.append(
            f"{name:<12} {f(e['estimate']):>10} {f(e['ci_low']):>10} {f(e['ci_high']):>10} {ess:>10}"
        )
    return "\n".join(lines)
