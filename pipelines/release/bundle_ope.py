"""Off-policy evaluation of a registered bundle on one day's logs (the gate's SNIPS input).

**The served policy** (the gate's, the A/B prediction's, ``recloop ope --date D --bundle V``):
the bundle loaded as the service loads it (:func:`serving.bundle.load`) and served under the
service's configuration (:meth:`serving.config.ServingConfig.from_env`: sources, ranker,
re-ranking, exploration), its value estimated from D's logged impressions by
:func:`pipelines.release.served_ope.evaluate_served`: the day's logged users (a seeded sample of
at most :data:`MAX_REQUESTS` requests, the same sample for every bundle judged that day) are
replayed in-process and each logged impression reweighted by the target's probability of showing
that item there. The headline is the position-based SNIPS (``pbm_snips``) with DR (``pbm_dr``)
beside it; both are also stored under ``snips`` / ``dr`` (:data:`HEADLINE`), the names the gate,
the A/B analysis and the report read. On simulated data the report carries the target's exact
true CTR on the same requests (``truth``) and ``rel_error`` = ``|snips − truth| / truth``
(:mod:`pipelines.core.ope_reports`).

**The softmax policy** (kept for comparison: ``recloop ope --date D --bundle V --policy
softmax``, label ``bundle-V-softmax``; :func:`evaluate_bundle`): the bundle's two-tower retriever
turned stochastic, ``π = softmax(u·v / T)`` over the catalog the model knows, slates of ``k``
drawn without replacement (``T`` = ``TEMPERATURE``, stated in every report). It is not what users
get (its truth was ~0.016 where the service's is ~0.05). ``pipelines.release.ope.policy_table``
turns D's logged impressions into the item-position table and ``pipelines.release.ope.estimate``
gives IPS/SNIPS/... with bootstrap intervals. Users the model does not know (outside its
``users.json``: no positives in the training window) are scored as the service serves them: when
the two-tower's user tower reads attributes only (no user id embedding, no history mean), a user
with attributes in ``data/users.parquet`` gets the tower's vector of those attributes (the service
encodes the same attributes read from the online store; :func:`tower_user_frame` maps them to the
tower's columns the way the feature table does); a user without attributes, or any unknown user
of a tower that reads ids or history, gets the mean user vector. Logging propensities: on a day
logged by the simulator's logging policy its item-position marginals are computed exactly from
its definition; on any other day the logged ``propensity`` is used (the log contract).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core import layout, schema
from pipelines.core.ope_reports import write_ope_report
from pipelines.core.settings import Settings

log = logging.getLogger(__name__)

TEMPERATURE = 0.05
#: the SNIPS gate's tolerance (absolute CTR): about the half-width of one demo day's 95% interval,
#: so an equally good challenger is not blocked by the width of its own interval alone
SNIPS_TOLERANCE = 0.01
N_BOOT = 300
MAX_USERS = 400  # softmax: distinct users (contexts) evaluated per day, a seeded sample
N_SAMPLES = 100  # softmax: Rao-Blackwellised slates per user for the item-position marginals
MAX_REQUESTS = 1500
"""Served policy: logged requests replayed per bundle and day (a seeded sample of the day's when
there are more), to bound the cost: 10-25 s per bundle on 2 cores at 1,500 (a whole demo day).
At 600 the ESS and the accuracy drop more than the cost (demo days 8-10: |SNIPS − truth| / truth
up to 0.34 against 0.105 at 1,500, and an equally good retrain failed the gate)."""
HEADLINE = {"snips": "pbm_snips", "dr": "pbm_dr"}
"""Served policy: the estimators stored again under the names the gate and A/B read."""


def user_attributes(settings: Settings) -> pd.DataFrame | None:
    """``data/users.parquet`` (``user_id`` and the raw attributes), or None when absent."""
    path = layout.attributes_path(settings, "users")
    return pd.read_parquet(path) if path.exists() else None


def tower_user_frame(attributes: pd.DataFrame, columns: list[str]) -> pd.DataFrame | None:
    """The user tower's input columns from raw attributes, indexed by ``user_id`` (str).

    A column named as an attribute (``age``: the tower was trained from ``users.parquet``) is
    copied; a feature-table column (``user_age``) is the attribute with the table's fill for
    unknown values (``pipelines.features.tables.DEFAULTS``: ``-1``, ``"unknown"``), as the feature
    table and so the online store hold it. None when a column has no attribute to come from."""
    from pipelines.features.tables import DEFAULTS

    frame = attributes.drop_duplicates("user_id", keep="last")
    out = pd.DataFrame(index=pd.Index(frame["user_id"].astype(str), name="user_id"))
    for col in columns:
        if col in frame.columns:
            out[col] = frame[col].to_numpy()
        elif col.startswith("user_") and col[5:] in frame.columns and col in DEFAULTS:
            raw = frame[col[5:]]
            out[col] = raw.where(raw.notna(), DEFAULTS[col]).to_numpy()
        else:
            log.warning("user tower column %r: no such user attribute; unknown users get the "
                        "mean vector", col)  # fmt: skip
            return None
    return out


def two_tower_scorer(folder: Path, attributes: pd.DataFrame | None = None):
    """``(score(user_ids, item_ids) -> (U, I), item_ids)`` of the two-tower artifact in ``folder``.

    ``attributes``: raw user attributes (``data/users.parquet``); users outside the vocabulary
    that have a row get their user-tower vector from it when the tower reads attributes only,
    the others the mean user vector (module docstring)."""
    from models.base import load_model
    from pipelines.core.vocab import Vocab

    model = load_model(Path(folder) / "model")
    users, items = Vocab.load(Path(folder) / "users.json"), Vocab.load(Path(folder) / "items.json")
    uvec, ivec = model.user_embeddings(), model.item_embeddings()
    mean_user = uvec.mean(axis=0)
    columns_of = getattr(model, "user_feature_columns", None)
    columns = columns_of() if columns_of is not None else None
    frame = None
    if columns and attributes is not None:
        frame = tower_user_frame(attributes, columns)
    cache: dict[str, np.ndarray] = {}

    def tower_vectors(ids: np.ndarray) -> np.ndarray:
        """``(N, D)`` tower vectors of unknown users ``ids`` (mean vector: no attributes)."""
        out = np.tile(mean_user, (len(ids), 1)).astype(uvec.dtype)
        if frame is None or not len(ids):
            return out
        todo = sorted({str(x) for x in ids} - cache.keys())
        pos = frame.index.get_indexer(todo)
        have = [t for t, p in zip(todo, pos, strict=True) if p >= 0]
        if have:
            vecs = model.encode_user_features(frame.loc[have].reset_index(drop=True))
            cache.update(zip(have, vecs, strict=True))
        for j, x in enumerate(ids):
            v = cache.get(str(x))
            if v is not None:
                out[j] = v
        return out

    def score(user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        u = users.encode(user_ids)
        i = items.encode(item_ids)
        U = np.where((u >= 0)[:, None], uvec[np.maximum(u, 0)], mean_user)
        unknown = np.flatnonzero(u < 0)
        if len(unknown):
            U[unknown] = tower_vectors(np.asarray(user_ids, dtype=object)[unknown])
        V = np.where((i >= 0)[:, None], ivec[np.maximum(i, 0)], 0.0)
        return (U @ V.T).astype(np.float64)

    return score, np.array(items.ids, dtype=object)


def _world(settings: Settings):
    if not layout.world_path(settings).exists():
        return None
    from pipelines.data.simulate import load_world

    return load_world(settings)


def _logged_by_simulator(logs: Any) -> bool:
    """True when every impression of ``logs`` was shown by the simulator's logging policy."""
    from pipelines.data.simulate import ARM

    arms = logs.loc[logs["event"] == "impression", "arm"]
    return bool(len(arms)) and bool((arms == ARM).all())


def evaluate_bundle(
    settings: Settings, date: str | dt.date, two_tower_folder: Path, label: str, seed: int = 0
) -> dict[str, Any]:
    """OPE estimates (and, on simulated data, the truth) of the bundle's two-tower **softmax**
    policy on day ``date`` (module docstring; not the served policy: :func:`evaluate_served_bundle`).

    Writes ``reports/ope/date=D/<label>.json`` (:mod:`pipelines.core.ope_reports`) and returns
    it."""
    from pipelines.release import ope

    day = schema.parse_date(date)
    logs = schema.read_partition(settings.validated_dir, day)
    rng = np.random.default_rng(seed)
    users = np.array(
        sorted(logs.loc[logs["event"] == "impression", "user_id"].unique()), dtype=object
    )
    if len(users) > MAX_USERS:
        users = np.sort(rng.choice(users, MAX_USERS, replace=False))
    logs = logs[logs["user_id"].isin(set(users))]
    score, items = two_tower_scorer(two_tower_folder, user_attributes(settings))
    world = _world(settings)
    if world is not None:
        world.extend_to(day)  # the users and items that had arrived by D
    k = int(logs["position"].max()) + 1
    marginals = None
    if world is not None and _logged_by_simulator(logs):
        marginals = ope.simulator_logging_marginals(world, day, k=k)
    table = ope.policy_table(
        logs, score, items, TEMPERATURE, k, marginals, n_samples=N_SAMPLES, seed=seed
    )
    out: dict[str, Any] = {
        "date": day.isoformat(),
        "policy": label,
        "target": "softmax",
        "temperature": TEMPERATURE,
        "k": k,
        "logging_propensities": "simulator marginals" if marginals is not None else "logged",
        "users": len(users),
        "estimates": ope.estimate(table, n_boot=N_BOOT, seed=seed),
    }
    if world is not None:
        per_user = ope.true_policy_value(
            world, users, score, items, TEMPERATURE, k, n_samples=N_SAMPLES, seed=seed
        )
        weights = table.groupby("user_id").size().reindex(users).fillna(0).to_numpy()
        out["truth"] = float(np.average(per_user, weights=weights)) if weights.sum() else None
        shown = table["reward"].to_numpy()
        out["logging_ctr"] = float(shown.mean()) if len(shown) else None
    write_ope_report(settings, out)
    snips = out["estimates"].get("snips", {})
    log.info(
        "OPE of %s on %s: SNIPS %.4f [%.4f, %.4f], truth %s",
        label,
        day,
        snips.get("estimate") or float("nan"),
        snips.get("ci_low") or float("nan"),
        snips.get("ci_high") or float("nan"),
        out.get("truth"),
    )
    return out


NO_PROPENSITIES = "no logged propensities"


def missing_propensities(settings: Settings, day: dt.date) -> str | None:
    """Why ``day``'s validated logs cannot be evaluated off-policy, or None when they can: they
    need impressions with a usable logging propensity (logged in ``(0, 1]``, or the simulator's
    logging policy whose marginals are computed). Ratings, purchases or clicks without slates
    (imported histories) have none: ``"no logged propensities"`` and a detail."""
    if not schema.partition_dir(settings.validated_dir, day).exists():
        return f"{NO_PROPENSITIES} (no validated logs for {day})"
    logs = schema.read_partition(settings.validated_dir, day)
    imp = logs[logs["event"] == "impression"]
    if imp.empty:
        return f"{NO_PROPENSITIES} (the logs of {day} hold no impressions)"
    if (pd.to_numeric(imp["propensity"], errors="coerce") > 0).any():
        return None
    if layout.world_path(settings).exists() and _logged_by_simulator(logs):
        return None
    return f"{NO_PROPENSITIES} (none of the {len(imp)} impressions of {day} has one)"


def served_report(
    result: dict[str, Any], label: str, seconds: float, max_requests: int | None
) -> dict[str, Any]:
    """The OPE report (:mod:`pipelines.core.ope_reports`) of a served-policy evaluation
    (:func:`pipelines.release.served_ope.evaluate_served`'s ``result``): its fields, ``policy`` =
    ``label``, ``target`` = ``"served"``, the :data:`HEADLINE` aliases in ``estimates``,
    ``logging_ctr``, ``rel_error`` (with a truth), ``max_requests`` and ``seconds``."""
    from pipelines.core.ope_reports import relative_error

    est = dict(result["estimates"])
    for alias, name in HEADLINE.items():
        if name in est:
            est[alias] = dict(est[name], estimator=name)
    out = {**result, "policy": label, "target": "served", "estimates": est,
           "bundle_version": result.get("policy"), "logging_ctr": result.get("logged_ctr"),
           "max_requests": max_requests, "seconds": round(float(seconds), 2)}  # fmt: skip
    out["rel_error"] = relative_error(out)
    return out


def _served(
    settings: Settings, day: dt.date, version: str, imp: pd.DataFrame, seed: int, cfg: Any | None
) -> tuple[dict[str, Any], dict[str, Any], Any | None]:
    """``(result, policies, world)``: bundle ``version`` replayed for ``imp``'s users and its
    served OPE (as :func:`pipelines.release.served_ope.evaluate_served`, the target's policies
    kept for :func:`paired_difference`)."""
    from pipelines.loop.replay import serve_users
    from pipelines.release import served_ope
    from serving.bundle import load
    from serving.config import ServingConfig

    # the item table the service had on the day (trending list, click posteriors, catalog
    # weights): the newest one is the day's own, computed before the gate, which the service
    # never served with — a self-evaluation then disagreed with its own logs (ESS 261 of 15,000)
    bundle = load(settings, str(version), as_of=(day - dt.timedelta(days=1)).isoformat())
    cfg = cfg if cfg is not None else ServingConfig.from_env()
    k = int(imp["position"].max()) + 1
    users = list(pd.unique(imp["user_id"].astype(str)))
    policies = served_ope.policies_from_responses(serve_users(settings, bundle, users, cfg, k=k), k)
    world = served_ope.load_world_if_any(settings, day)
    result = served_ope.evaluate_logs(imp, policies, day, world, seed=seed)
    result["policy"] = getattr(bundle, "version", str(version))
    return result, policies, world


def evaluate_served_bundle(
    settings: Settings,
    date: str | dt.date,
    version: str,
    label: str | None = None,
    imp: pd.DataFrame | None = None,
    max_requests: int | None = MAX_REQUESTS,
    seed: int = 0,
    cfg: Any | None = None,
    _keep: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """OPE of bundle ``version``'s **served** policy on ``date``'s logs (module docstring).

    ``imp``: the logged impressions to evaluate on (default: a seeded sample of ``max_requests``
    requests, :func:`pipelines.release.served_ope.day_impressions`); ``cfg``: the serving
    configuration (default :meth:`serving.config.ServingConfig.from_env`). Writes
    ``reports/ope/date=D/<label>.json`` (default label ``bundle-<version>``) and returns it.
    ``_keep``: filled with ``policies`` and ``world`` (:func:`gate_inputs`)."""
    from pipelines.release import served_ope

    day = schema.parse_date(date)
    t0 = time.perf_counter()
    if imp is None:
        imp = served_ope.day_impressions(settings, day, max_requests, seed)
    result, policies, world = _served(settings, day, version, imp, seed, cfg)
    out = served_report(result, label or f"bundle-{version}", time.perf_counter() - t0,
                        max_requests)  # fmt: skip
    write_ope_report(settings, out)
    if _keep is not None:
        _keep.update(policies=policies, world=world)
    snips = out["estimates"].get("snips") or {}
    log.info(
        "served OPE of bundle %s on %s: SNIPS %s [%s, %s], ESS %s, truth %s (%.1f s)",
        version, day, snips.get("estimate"), snips.get("ci_low"), snips.get("ci_high"),
        snips.get("ess"), out.get("truth"), out["seconds"],
    )  # fmt: skip
    return out


def paired_difference(
    imp: pd.DataFrame,
    target: dict[str, Any],
    reference: dict[str, Any],
    day: dt.date,
    world: Any | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """PBM SNIPS of policies ``target`` minus ``reference``
    (:data:`pipelines.release.served_ope.Policies`) on the same logged impressions ``imp``, with
    a **paired** bootstrap interval (the same resampled requests for both): ``{estimate, ci_low,
    ci_high, n, requests}``. Both estimates are :func:`pipelines.release.served_ope.evaluate_logs`'
    ``pbm_snips``; sharing the requests removes their common noise from the difference."""
    from pipelines.release import served_ope
    from pipelines.release.ope import _bootstrap_sums

    k = int(imp["position"].max()) + 1
    mu, explore, _ = served_ope.logging_slot_matrix(imp, k, world, day)
    pos = imp["position"].to_numpy()
    at = mu[np.arange(len(imp)), pos]
    usable = np.isfinite(at) & (at > 0)
    e, _ = served_ope.examination(imp, explore, k, usable)
    r, p, m = imp["reward"].to_numpy()[usable], pos[usable], mu[usable]
    cols = []
    for pol in (target, reference):
        w = (served_ope.target_slot_matrix(imp, pol, k)[usable] @ e) / (m @ e)
        cols += [w * r, w * e[p] * k / e.sum()]
    cluster = pd.factorize(imp["request_id"][usable])[0].astype(np.int64)
    g = int(cluster.max()) + 1 if len(cluster) else 0
    sums = np.stack([np.bincount(cluster, weights=c, minlength=g) for c in cols], axis=1)

    def diff(t: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return t[..., 0] / t[..., 1] - t[..., 2] / t[..., 3]

    out: dict[str, Any] = {"estimate": None, "ci_low": None, "ci_high": None,
                           "n": int(usable.sum()), "requests": g}  # fmt: skip
    if not g:
        return out
    est = float(diff(sums.sum(axis=0)))
    out["estimate"] = est if np.isfinite(est) else None
    reps = diff(_bootstrap_sums(sums, n_boot, seed)) if n_boot else np.array([])
    reps = reps[np.isfinite(reps)]
    if len(reps):
        lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
        out["ci_low"], out["ci_high"] = float(lo), float(hi)
    return out


def gate_inputs(
    settings: Settings, date: str | dt.date, max_requests: int | None = MAX_REQUESTS
) -> dict[str, Any]:
    """Served-policy OPE (:func:`evaluate_served_bundle`) of the bundle the gate will judge on
    ``date`` and of the champion (when another), on the same sample of ``date``'s requests.

    Returns ``{candidate_version, ope, champion_ope, reports: {candidate, champion}}``: ``ope`` /
    ``champion_ope`` the reports' ``estimates`` (the gate reads their ``snips``), ``ope`` with
    ``vs_champion`` too when both were evaluated (the candidate's SNIPS minus the champion's with
    a paired interval, :func:`paired_difference`; also in the candidate's report), ``reports`` the
    whole reports (the gate records them). On a day whose logs carry no propensities
    (:func:`missing_propensities`) nothing is estimated: ``ope`` is ``{"not_evaluated": reason}``
    (the SNIPS gate reports it, it does not fail) and ``champion_ope`` None. An evaluation that
    raises is logged and reads ``{"not_evaluated": "served OPE failed: ..."}``: the gate goes on."""
    from pipelines.release import registry, served_ope
    from pipelines.release.gate import gated_bundle_version

    day = schema.parse_date(date)
    version = gated_bundle_version(settings, day)
    champion = registry.get_alias(settings, "champion")
    out: dict[str, Any] = {"candidate_version": version, "ope": None, "champion_ope": None,
                           "reports": {}}  # fmt: skip
    if version is None:
        return out
    why = missing_propensities(settings, day)
    if why is not None:
        log.info("OPE of %s: not evaluated: %s", day, why)
        out["ope"] = {"not_evaluated": why}
        return out
    imp = served_ope.day_impressions(settings, day, max_requests)
    kept: dict[str, dict[str, Any]] = {}
    for key, role, v in (("ope", "candidate", version), ("champion_ope", "champion", champion)):
        if v is None or (role == "champion" and v == version):
            continue
        kept[role] = {}
        try:
            rep = evaluate_served_bundle(settings, day, v, imp=imp, max_requests=max_requests,
                                         _keep=kept[role])  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - the gate records why and goes on
            log.exception("served OPE of bundle %s on %s failed", v, day)
            out[key] = {"not_evaluated": f"served OPE of bundle {v} failed: {exc}"}
            continue
        out[key], out["reports"][role] = rep["estimates"], rep
    if "policies" in kept.get("candidate", {}) and "policies" in kept.get("champion", {}):
        _pair(settings, day, imp, out, kept, champion)
    return out


def _pair(
    settings: Settings,
    day: dt.date,
    imp: pd.DataFrame,
    out: dict[str, Any],
    kept: dict[str, dict[str, Any]],
    champion: str,
) -> None:
    """The candidate's paired difference with the champion (:func:`paired_difference`) added to
    ``out["ope"]`` and to the candidate's report (``vs_champion``, rewritten)."""
    pair = paired_difference(imp, kept["candidate"]["policies"], kept["champion"]["policies"],
                             day, kept["candidate"]["world"])  # fmt: skip
    pair["champion"] = champion
    out["ope"] = {**out["ope"], "vs_champion": pair}
    report = {**out["reports"]["candidate"], "vs_champion": pair}
    out["reports"]["candidate"] = report
    write_ope_report(settings, report)
