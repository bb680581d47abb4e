"""Off-policy value of a **served** policy (bundle + serving config) from a day's logged impressions.

The target is what the service would show: a loaded bundle through the serving pipeline with its
config (sources, ranker, re-ranking, exploration). The day's logged users are replayed through it
(:func:`pipelines.loop.replay.serve_users`); each response's ``policy`` entry
(:func:`serving.rerank.policy_record`: exploit list, explore pool, Thompson probabilities, rate)
gives the target's probability of **any** item at **any** slot, ``π(a at s | user)``
(:func:`serving.rerank.policy_probabilities`). Context = user: the target's exploit list is a
function of the user (and the day's features); its randomness is the exploration.

Logging probabilities ``μ(a at s')`` of each logged row's item at every slot ``s'`` (``(n, k)``):

- **service rows** (any arm but the simulator's): the logged ``propensity`` is the item-at-slot
  marginal at the logged slot (:mod:`serving.rerank`). The other slot an exploit item can take is
  recovered from the slate: the explore slot ``p`` of a request is its first slot with a
  propensity below :data:`EXPLORE_BELOW` (exploit items at their rank have ``1 - rate (r+1)/k``;
  valid for ``explore_rate < 0.5``); above ``p`` an item is at its rank and else one slot lower
  with ``1 - propensity``; below ``p`` it was pushed down and else one slot higher; the item at
  ``p`` was drawn from the pool at a uniform position: the same propensity at every slot.
- **simulator rows** (``arm == simulate.ARM``, the days before a champion): the logged propensity
  is a per-slot *conditional* (:mod:`pipelines.data.simulate`), not a marginal. With the world at
  hand (``truth/world.json``) the exact marginals replace it
  (:func:`pipelines.release.ope.simulator_logging_marginals`); without, the rows are excluded and
  counted (``excluded_simulator_rows``).

Estimators (each the target's **true CTR per impression** on the logged requests' users):

- ``slot_*`` — item-position IPS (Li et al. 2018): ``w = π(a at s) / μ(a at s)``; ``slot_ips``
  ``= Σ w r / n``, ``slot_snips = Σ w r / Σ w``, ``slot_dr`` with the direct model below.
- ``pbm_*`` — position-based model (examination hypothesis, ``P(click) = e[s] rel(u, a)``):
  items are matched whatever their slot, ``w = Σ_s π(a at s) e[s] / Σ_s μ(a at s) e[s]``, so an
  exploit item of the target that the logging showed one rank higher or lower still counts.
  ``pbm_ips = Σ w r / n``; ``pbm_snips = Σ w r / Σ (w e[s] k / Σ_j e[j])`` (the denominator's
  expectation is ``n``); ``pbm_dr``. The examination curve ``e`` (``e[0] = 1``) is a power law
  ``(1 + s)^-eta`` fitted by maximum likelihood on the **explore rows** (their position is
  uniform at random and independent of the item, which identifies ``e``); with fewer than
  :data:`MIN_EXPLORE_CLICKS` clicks on them, on all rows (biased steeper by the ranking; said in
  ``examination.from``).
- direct model (DM/DR): a non-personalised PBM item model from the same logs,
  ``r̂(a, s) = e[s] rel̂(a)`` with ``rel̂(a) = (clicks_a + m ρ) / (Σ e[s] over a's rows + m)``
  (shrunk to the overall ``ρ`` with ``m = PRIOR_EXAMINATIONS``).

Every entry has ``estimate``, ``ci_low``/``ci_high`` (bootstrap percentile, requests resampled
whole), ``ess = (Σ w)² / Σ w²`` and ``mean_weight`` (``Σ den / n``; far below 1 means the target
puts mass on items the logging never showed: no support). With the world, ``truth`` is the target's
exact expected true CTR on the same requests (``Σ_s Σ_a π(a at s|u) P_true(click | u, a, s) / k``
averaged over the logged requests), so each estimate can be checked.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core import layout, schema
from pipelines.core.settings import Settings

log = logging.getLogger(__name__)

EXPLORE_BELOW = 0.5
MIN_EXPLORE_CLICKS = 30
PRIOR_EXAMINATIONS = 20.0
N_BOOT = 300
ESTIMATORS = ("slot_ips", "slot_snips", "slot_dr", "pbm_ips", "pbm_snips", "pbm_dr", "dm")

Policies = dict[str, tuple[list[str], np.ndarray]]
"""user id → (item ids (m,), probabilities (m, k)) of the target for that user."""


# --- the logged rows -------------------------------------------------------------------------------
def logged_impressions(logs: pd.DataFrame, reward_event: str = "click") -> pd.DataFrame:
    """One row per logged impression: ``request_id, user_id, item_id, position (int64), arm,
    propensity (float64, NaN when null), reward (1.0 when a ``reward_event`` of the same request,
    item and position was logged)``, sorted by request and position."""
    imp = logs.loc[logs["event"] == "impression"]
    if imp.empty:
        raise ValueError("logs: no impression rows")
    cols = ["request_id", "user_id", "item_id", "position", "arm", "propensity"]
    out = pd.DataFrame({c: imp[c].to_numpy(dtype=object) for c in cols})
    out["position"] = pd.to_numeric(out["position"]).astype(np.int64)
    out["propensity"] = pd.to_numeric(out["propensity"], errors="coerce").astype(np.float64)
    hit = logs.loc[logs["event"] == reward_event, ["request_id", "item_id", "position"]]
    keys = set(zip(hit["request_id"], hit["item_id"], pd.to_numeric(hit["position"]), strict=True))
    out["reward"] = [
        float((r, i, p) in keys)
        for r, i, p in zip(out["request_id"], out["item_id"], out["position"], strict=True)
    ]
    return out.sort_values(["request_id", "position"], kind="stable").reset_index(drop=True)


def service_slot_matrix(imp: pd.DataFrame, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(M (n, k), explore (n,) bool)`` for service rows (module docstring): each row's logging
    probability at every slot, reconstructed from its request's logged propensities, and whether
    the row is its request's explore slot."""
    pos = imp["position"].to_numpy()
    p = imp["propensity"].to_numpy()
    small = np.where(p < EXPLORE_BELOW, pos, k)
    first = pd.Series(small).groupby(imp["request_id"].to_numpy()).transform("min").to_numpy()
    n = len(imp)
    m = np.zeros((n, k))
    idx = np.arange(n)
    m[idx, np.minimum(pos, k - 1)] = p
    above, at, below = pos < first, pos == first, pos > first
    nxt = above & (pos + 1 < k)
    m[idx[nxt], pos[nxt] + 1] = 1.0 - p[nxt]
    m[idx[below], pos[below] - 1] = 1.0 - p[below]
    m[at] = p[at, None]
    m[~np.isfinite(p)] = np.nan
    return m, at


def logging_slot_matrix(
    imp: pd.DataFrame, k: int, world: Any | None, day: dt.date
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(M (n, k), explore (n,), excluded_simulator_rows)``: service rows reconstructed
    (:func:`service_slot_matrix`), simulator rows from the simulator's exact marginals (world at
    hand) or NaN (excluded)."""
    from pipelines.data.simulate import ARM

    m, explore = service_slot_matrix(imp, k)
    sim = (imp["arm"] == ARM).to_numpy()
    excluded = 0
    if sim.any():
        m[sim] = np.nan
        explore[sim] = False
        if world is None:
            excluded = int(sim.sum())
            log.warning("served OPE: %d simulator-logged rows excluded (no world)", excluded)
        else:
            from pipelines.release import ope

            ids, marg = ope.simulator_logging_marginals(world, day, k=k)
            j = pd.Index(ids.astype(str)).get_indexer(imp.loc[sim, "item_id"].astype(str))
            rows = np.flatnonzero(sim)
            ok = j >= 0
            m[rows[ok]] = marg[j[ok], :k]
    return m, explore, excluded


def target_slot_matrix(imp: pd.DataFrame, policies: Policies, k: int) -> np.ndarray:
    """``(n, k)``: the target's probability of each row's item at every slot (0 when the target
    never shows it to that user; a user without a policy raises ``KeyError``)."""
    out = np.zeros((len(imp), k))
    by_user: dict[str, dict[str, int]] = {}
    for i, (u, a) in enumerate(zip(imp["user_id"], imp["item_id"], strict=True)):
        ids, probs = policies[str(u)]
        index = by_user.setdefault(str(u), {x: j for j, x in enumerate(ids)})
        j = index.get(str(a))
        if j is not None:
            out[i, : probs.shape[1]] = probs[j, :k]
    return out


# --- examination curve and the direct model ---------------------------------------------------------
def fit_examination(pos: np.ndarray, reward: np.ndarray, k: int) -> float:
    """Maximum-likelihood ``eta`` of ``e[s] = (1 + s)^-eta`` from rows whose position is
    independent of the item (``P(click) = c e[s]``, ``c`` profiled out; grid 0..2 by 0.01)."""
    counts = np.bincount(pos, minlength=k)[:k].astype(np.float64)
    clicks = np.bincount(pos, weights=reward, minlength=k)[:k]
    etas = np.linspace(0.0, 2.0, 201)
    loge = -np.outer(etas, np.log1p(np.arange(k)))  # (E, k)
    c_tot = clicks.sum()
    ll = loge @ clicks - c_tot * np.log(np.exp(loge) @ counts)
    return float(etas[int(np.argmax(ll))])


def examination(
    imp: pd.DataFrame, explore: np.ndarray, k: int, usable: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """``(e (k,), info)``: the fitted curve (module docstring) and how it was fitted."""
    pos, r = imp["position"].to_numpy(), imp["reward"].to_numpy()
    sel = explore & usable
    src = "explore rows"
    if r[sel].sum() < MIN_EXPLORE_CLICKS:
        sel, src = usable, "all rows (too few explore clicks)"
    eta = fit_examination(pos[sel], r[sel], k)
    info = {"eta": eta, "from": src, "rows": int(sel.sum()), "clicks": int(r[sel].sum())}
    return (1.0 + np.arange(k)) ** -eta, info


def item_relevance(imp: pd.DataFrame, e: np.ndarray, usable: np.ndarray) -> tuple[dict, float]:
    """``(rel̂ by item id, ρ)``: the shrunk PBM relevance of each logged item and the overall
    rate ``ρ`` (the value of an item never logged)."""
    sub = imp.loc[usable]
    ex = e[sub["position"].to_numpy()]
    rho = float(sub["reward"].sum() / max(ex.sum(), 1e-12))
    g = pd.DataFrame({"a": sub["item_id"].astype(str), "c": sub["reward"], "x": ex})
    g = g.groupby("a")[["c", "x"]].sum()
    rel = (g["c"] + PRIOR_EXAMINATIONS * rho) / (g["x"] + PRIOR_EXAMINATIONS)
    return rel.to_dict(), rho


def target_dm_by_slot(
    policies: Policies, users: np.ndarray, e: np.ndarray, rel: dict, rho: float
) -> np.ndarray:
    """``(n, k)``: the direct model's expected click of the target at each slot for each row's
    user: ``Σ_a π(a at s | u) e[s] rel̂(a)``."""
    k = len(e)
    per_user: dict[str, np.ndarray] = {}
    for u in pd.unique(users):
        ids, probs = policies[str(u)]
        rv = np.array([rel.get(str(a), rho) for a in ids])
        per_user[str(u)] = (rv @ probs[:, :k]) * e
    return np.stack([per_user[str(u)] for u in users]) if len(users) else np.zeros((0, k))


# --- the estimates ------------------------------------------------------------------------------------
def estimates(
    reward: np.ndarray,
    pos: np.ndarray,
    mu: np.ndarray,
    pi: np.ndarray,
    e: np.ndarray,
    cluster: np.ndarray,
    dm: np.ndarray | None = None,
    r_hat: np.ndarray | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, dict[str, Any]]:
    """The estimators of the module docstring over ``n`` usable rows.

    ``reward (n,)``, ``pos (n,)`` 0-based slots, ``mu (n, k)`` / ``pi (n, k)`` the logging's and
    the target's probabilities of each row's item at every slot, ``e (k,)`` the examination curve,
    ``cluster (n,)`` int request codes (bootstrap units), ``dm (n, k)`` the direct model's target
    value by slot of each row's context and ``r_hat (n,)`` its prediction for the row (both
    optional: no ``*_dr`` / ``dm`` without them). Returns ``{name: {estimate, ci_low, ci_high,
    ess, mean_weight, n}}``; deterministic in ``seed``."""
    from pipelines.release.ope import _bootstrap_sums, _ess

    n, k = mu.shape
    idx = np.arange(n)
    w_slot = pi[idx, pos] / mu[idx, pos]
    w_pbm = (pi @ e) / (mu @ e)
    scale = k / e.sum()
    one = np.ones(n)
    terms = {
        "n": one,
        "ws": w_slot,
        "wsr": w_slot * reward,
        "wp": w_pbm,
        "wpr": w_pbm * reward,
        "wpe": w_pbm * e[pos] * scale,
    }
    ratios = {"slot_ips": ("wsr", "n"), "slot_snips": ("wsr", "ws"),
              "pbm_ips": ("wpr", "n"), "pbm_snips": ("wpr", "wpe")}  # fmt: skip
    if dm is not None and r_hat is not None:
        terms["sdr"] = dm[idx, pos] + w_slot * (reward - r_hat)
        terms["pdr"] = dm[idx, pos] + w_pbm * (reward - r_hat)
        terms["dm"] = dm[idx, pos]
        ratios.update(slot_dr=("sdr", "n"), pbm_dr=("pdr", "n"), dm=("dm", "n"))
    names = list(terms)
    g = int(cluster.max()) + 1 if n else 0
    sums = np.stack([np.bincount(cluster, weights=terms[t], minlength=g) for t in names], axis=1)
    total, col = sums.sum(axis=0), {t: j for j, t in enumerate(names)}
    boot = _bootstrap_sums(sums, n_boot, seed) if n_boot and g else None
    weights = {"slot": w_slot, "pbm": w_pbm, "dm": one}
    out: dict[str, dict[str, Any]] = {}
    for name, (num, den) in ratios.items():
        w = weights[name.split("_")[0]]
        entry: dict[str, Any] = {"n": n, "ess": _ess(w), "ci_low": None, "ci_high": None}
        norm = {"slot": "ws", "pbm": "wpe", "dm": "n"}[name.split("_")[0]]
        entry["mean_weight"] = float(total[col[norm]] / n) if n else None
        entry["estimate"] = float(total[col[num]] / total[col[den]]) if total[col[den]] else None
        if boot is not None and entry["estimate"] is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                reps = boot[:, col[num]] / boot[:, col[den]]
            reps = reps[np.isfinite(reps)]
            if len(reps):
                lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
                entry["ci_low"], entry["ci_high"] = float(lo), float(hi)
        out[name] = entry
    return out


# --- replay, truth, the whole evaluation ------------------------------------------------------------
def policies_from_responses(responses: Sequence[dict[str, Any]], k: int) -> Policies:
    """The target's :data:`Policies` from replayed responses (each with a ``policy`` entry,
    :func:`serving.rerank.policy_record`); ``ValueError`` when a response has none."""
    from serving.rerank import policy_probabilities

    out: Policies = {}
    for r in responses:
        policy = r.get("policy")
        if policy is None:
            raise ValueError(
                "served OPE: the response has no 'policy' entry (serving.pipeline must return "
                "serving.rerank.policy_record(slate, ranked.ids))"
            )
        out[str(r["user_id"])] = policy_probabilities(policy, k)
    return out


def true_value(world: Any, policies: Policies, users: np.ndarray, k: int) -> float:
    """The target's exact expected true CTR per impression, averaged over ``users`` (one entry
    per request, repeats allowed): ``Σ_s Σ_a π(a at s | u) P_true(click | u, a, s) / k``."""
    from pipelines.data.simulate import true_click_prob

    per_user: dict[str, float] = {}
    for u in pd.unique(users):
        ids, probs = policies[str(u)]
        if not ids:
            per_user[str(u)] = 0.0
            continue
        m = len(ids)
        uu = np.full(m * k, str(u), dtype=object)
        aa = np.repeat(np.asarray(ids, dtype=object), k)
        ss = np.tile(np.arange(k), m)
        p = true_click_prob(world, uu, aa, ss).reshape(m, k)
        per_user[str(u)] = float((p * probs[:, :k]).sum() / k)
    return float(np.mean([per_user[str(u)] for u in users])) if len(users) else float("nan")


def evaluate_logs(
    imp: pd.DataFrame,
    policies: Policies,
    day: dt.date,
    world: Any | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    eta: float | None = None,
) -> dict[str, Any]:
    """Estimates (and with ``world`` the truth) of the target ``policies`` on the logged
    impressions ``imp`` (:func:`logged_impressions`); every user of ``imp`` needs a policy.
    ``eta``: a fixed examination exponent instead of the fitted one."""
    k = int(imp["position"].max()) + 1
    mu, explore, excluded_sim = logging_slot_matrix(imp, k, world, day)
    pos = imp["position"].to_numpy()
    at = mu[np.arange(len(imp)), pos]
    usable = np.isfinite(at) & (at > 0)
    e, exam = examination(imp, explore, k, usable)
    if eta is not None:
        e, exam = (1.0 + np.arange(k)) ** -eta, {"eta": float(eta), "from": "given"}
    rel, rho = item_relevance(imp, e, usable)
    pi = target_slot_matrix(imp, policies, k)
    users = imp["user_id"].astype(str).to_numpy()
    dm = target_dm_by_slot(policies, users[usable], e, rel, rho)
    r_hat = e[pos[usable]] * np.array([rel.get(str(a), rho) for a in imp["item_id"][usable]])
    cluster = pd.factorize(imp["request_id"][usable])[0].astype(np.int64)
    est = estimates(imp["reward"].to_numpy()[usable], pos[usable], mu[usable], pi[usable], e,
                    cluster, dm, r_hat, n_boot=n_boot, seed=seed)  # fmt: skip
    out: dict[str, Any] = {
        "date": day.isoformat(),
        "k": k,
        "rows": len(imp),
        "requests": int(imp["request_id"].nunique()),
        "excluded_rows": int((~usable).sum()),
        "excluded_simulator_rows": excluded_sim,
        "explore_rows": int(explore.sum()),
        "examination": exam,
        "logged_ctr": float(imp["reward"].mean()),
        "estimates": est,
    }
    if world is not None:
        req_users = imp.drop_duplicates("request_id")["user_id"].astype(str).to_numpy()
        out["truth"] = true_value(world, policies, req_users, k)
    return out


def load_world_if_any(settings: Settings, day: dt.date) -> Any | None:
    """The simulator's world (extended to ``day`` and the last logged day,
    :func:`pipelines.data.simulate.load_world_for_replay`) when ``truth/world.json`` exists,
    else None."""
    from pipelines.data import simulate

    if simulate.read_world_meta(settings) is None:
        return None
    return simulate.load_world_for_replay(settings, day)


def day_impressions(
    settings: Settings, date: str | dt.date, max_requests: int | None = None, seed: int = 0
) -> pd.DataFrame:
    """:func:`logged_impressions` of the day's validated logs, at most ``max_requests`` requests
    (a seeded sample) to bound the replay."""
    day = schema.parse_date(date)
    if not schema.partition_dir(settings.validated_dir, day).exists():
        raise FileNotFoundError(f"no validated logs for {day} under {settings.validated_dir}")
    imp = logged_impressions(schema.read_partition(settings.validated_dir, day))
    reqs = imp["request_id"].unique()
    if max_requests is not None and len(reqs) > max_requests:
        keep = set(np.random.default_rng(seed).choice(reqs, max_requests, replace=False))
        imp = imp[imp["request_id"].isin(keep)].reset_index(drop=True)
    return imp


def evaluate_served(
    settings: Settings,
    bundle: Any,
    date: str | dt.date,
    cfg: Any | None = None,
    max_requests: int | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    imp: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Served OPE of ``bundle`` (a :class:`serving.bundle.LoadedBundle`) under ``cfg`` (a
    :class:`serving.config.ServingConfig`; default the served defaults) on ``date``'s logs:
    the logged users replayed (:func:`pipelines.loop.replay.serve_users`), then
    :func:`evaluate_logs`. ``imp``: the impressions to use (default :func:`day_impressions`)."""
    from pipelines.loop.replay import serve_users

    day = schema.parse_date(date)
    imp = day_impressions(settings, day, max_requests, seed) if imp is None else imp
    k = int(imp["position"].max()) + 1
    users = list(pd.unique(imp["user_id"].astype(str)))
    responses = serve_users(settings, bundle, users, cfg, k=k)
    world = load_world_if_any(settings, day) if layout.world_path(settings).exists() else None
    out = evaluate_logs(imp, policies_from_responses(responses, k), day, world, n_boot, seed)
    out["policy"] = getattr(bundle, "version", None)
    return out
