"""The stage gate: does a bundle's ranker lift its slate? Judged before the bundle is registered.

``judge_stages(settings, bundle, date)`` serves the day's users in-process
(:func:`pipelines.loop.replay.serve_users`) three ways:

- ``full``: the bundle as it would serve (sources, ranker, re-ranking, exploration);
- ``retrieval_only``: the same bundle without its ranker (candidates in retrieval order, the same
  re-ranking and exploration);
- ``trending``: the cold-start trending list for every user (``force_cold_start``);
- ``new_users_trending`` (a bundle with a user tower): as ``full``, but users without a vector
  get the trending list instead of the user tower's candidates, ranked.
- ``ranker_tempered`` (a bundle with a ranker): as ``full``, the ranker's probabilities tempered
  by the retrieval order (:func:`serving.rerank.retrieval_tempered`).

Judged by the simulator's **truth** when the workspace has one (``truth/world.json``): the day's
simulated requests (:func:`pipelines.data.simulate.requests_for_day`, at most ``max_requests``,
a seeded sample), each variant's exact expected true CTR per impression over them
(:func:`pipelines.release.served_ope.true_value`, exploration included; the served slates' true
click probabilities when the responses carry no ``policy``). Otherwise by **served OPE**
(:func:`pipelines.release.served_ope.evaluate_served`, estimator :data:`OPE_ESTIMATOR`) on the
day's logged impressions. Without both (a ratings-only log), by **forward ranking**: NDCG@10 of
each variant's slates against the validated positives of the ``H`` days after D
(``settings.gate_test_days``; :mod:`pipelines.loop.stages`' forward figures), which a backfill
has for every checkpoint and a daily run never has (the days are in the future). The replays
read the online features as materialized then (a backfill's checkpoint: the window's last day),
the same slight look-ahead in user features as :mod:`pipelines.loop.stages`' forward figures.

``keep_ranker`` is False when the ranked slate does not beat the retrieval order by more than
``min_lift`` (relative) — the release flow then registers the bundle without its ranker and
the retrieval order serves. When the OPE cannot judge (an effective sample size below
:data:`MIN_ESS`, or no estimate) or fewer than :data:`MIN_FORWARD_USERS` users are scored
forward, the ranker is kept and ``decided`` is False with the reason.

``retrieval_weight`` (:func:`decide_retrieval_weight`): the largest of :data:`serving.config.
RETRIEVAL_WEIGHTS` when ``ranker_tempered`` (the ranker's probabilities tempered by the retrieval
order) beats ``full`` (its own order), else 0; the ranker is then judged in the chosen order. On
the simulator the tempered order wins, on MovieLens the ranker's own (benchmarks/README.md).

``new_users`` (:func:`decide_new_users`): ``trending`` when ``new_users_trending`` beats ``full``
by the same judge, ``user_tower`` when it does not, None when the bundle has no user tower or the
judge cannot tell; the register task records it on the bundle and the service follows it under
``RECLOOP_SERVE_NEW_USERS=auto`` (the default). The tower wins on the simulator, the trending list
on MovieLens 100K, so no global default fits both (benchmarks/README.md). It is judged with the
ranker, even when the ranker is then left out.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core import schema
from pipelines.core.settings import Settings

log = logging.getLogger(__name__)

OPE_ESTIMATOR = "pbm_snips"
MIN_ESS = 500.0
MAX_REQUESTS = 600
MIN_FORWARD_USERS = 30
"""Fewest users with a forward positive for a forward-ranking judgement."""
MAX_DEGRADED = 0.05
"""Largest share of degraded replayed answers (no features, no ranker) a forward judgement takes;
the truth's judgement only warns."""
VARIANTS = ("full", "retrieval_only", "trending", "new_users_trending", "ranker_tempered")


def decide(
    values: dict[str, float | None],
    has_ranker: bool,
    judged_by: str,
    ess: dict[str, float] | None = None,
    min_lift: float = 0.0,
) -> dict[str, Any]:
    """The gate's decision from the variants' ``values`` (true CTR or OPE estimate).

    Returns ``{keep_ranker, decided, reason, lift}`` (``lift``: full / retrieval_only - 1, None
    when not computable). ``ess``: per variant effective sample size (OPE only)."""
    full, plain = values.get("full"), values.get("retrieval_only")
    if not has_ranker:
        return {"keep_ranker": False, "decided": True, "lift": None,
                "reason": "the bundle has no ranker: the retrieval order serves"}  # fmt: skip
    if full is None or plain is None or not np.isfinite([full, plain]).all() or plain <= 0:
        return {"keep_ranker": True, "decided": False, "lift": None,
                "reason": f"no {judged_by} value for full or retrieval_only: ranker kept"}  # fmt: skip
    lift = full / plain - 1.0
    thin = _too_thin(judged_by, ess, ("full", "retrieval_only"))
    if thin:
        return {"keep_ranker": True, "decided": False, "lift": lift,
                "reason": f"{thin}: ranker kept"}  # fmt: skip
    keep = lift > min_lift
    verdict = "lifts" if keep else "does not lift"
    return {"keep_ranker": keep, "decided": True, "lift": lift,
            "reason": f"by {judged_by}: the ranker {verdict} the retrieval order "
                      f"({full:.4f} vs {plain:.4f}, {lift:+.1%}; needs > {min_lift:+.1%})"}  # fmt: skip


def _too_thin(judged_by: str, ess: dict[str, float] | None, names: tuple[str, ...]) -> str | None:
    """Why the values of ``names`` cannot be trusted, or None: an OPE effective sample size below
    :data:`MIN_ESS`, or fewer forward users than :data:`MIN_FORWARD_USERS` (``ess`` then holds
    the users scored)."""
    low = min((ess or {}).get(v, np.inf) for v in names)
    if judged_by == "ope" and low < MIN_ESS:
        return f"effective sample size {low:.0f} < {MIN_ESS:.0f}"
    if judged_by == "forward" and low < MIN_FORWARD_USERS:
        return f"{low:.0f} users scored forward < {MIN_FORWARD_USERS}"
    return None


def _choose(
    key: str,
    options: tuple[tuple[str, Any, str], tuple[str, Any, str]],
    values: dict[str, float | None],
    judged_by: str,
    ess: dict[str, float] | None,
) -> dict[str, Any]:
    """``{key: choice | None, key + "_reason": ...}``: of ``options`` ``((variant, choice,
    label), (variant, choice, label))``, the second's choice when its variant's value beats the
    first's (a tie keeps the first), None when either is missing or not finite or the judge
    cannot tell (:func:`_too_thin`)."""
    (a, first, a_label), (b, second, b_label) = options
    va, vb = values.get(a), values.get(b)
    if va is None or vb is None or not np.isfinite([va, vb]).all():
        return {key: None, f"{key}_reason": f"no {judged_by} value for {a_label} and {b_label}"}
    thin = _too_thin(judged_by, ess, (a, b))
    if thin:
        return {key: None, f"{key}_reason": f"{thin}: not judged"}
    choice = second if vb > va else first
    return {key: choice,
            f"{key}_reason": f"by {judged_by}: {key} {choice} ({a_label} {va:.4f}, "
                             f"{b_label} {vb:.4f})"}  # fmt: skip


def decide_new_users(
    values: dict[str, float | None], judged_by: str, ess: dict[str, float] | None = None
) -> dict[str, Any]:
    """How users without a vector should be served, from ``values`` of ``full`` (user tower) and
    ``new_users_trending``: ``{"new_users": "trending" | "user_tower" | None,
    "new_users_reason"}``; None when ``new_users_trending`` was not judged (no user tower) or the
    judge cannot tell (:func:`_too_thin`). A tie keeps the tower."""
    options = (("full", "user_tower", "user tower"), ("new_users_trending", "trending", "trending"))
    return _choose("new_users", options, values, judged_by, ess)


def decide_retrieval_weight(
    values: dict[str, float | None], judged_by: str, ess: dict[str, float] | None = None
) -> dict[str, Any]:
    """The ``retrieval_weight`` the bundle should serve with, from ``values`` of ``full`` (the
    ranker's order, weight 0) and ``ranker_tempered`` (the largest of :data:`serving.config.
    RETRIEVAL_WEIGHTS`): ``{"retrieval_weight": w | None, "retrieval_weight_reason"}``; None
    when ``ranker_tempered`` was not judged (no ranker, or the operator fixed the weight) or the
    judge cannot tell. A tie keeps 0."""
    from serving.config import RETRIEVAL_WEIGHTS

    options = (("full", 0.0, "ranker's order"),
               ("ranker_tempered", RETRIEVAL_WEIGHTS[-1], "tempered"))  # fmt: skip
    return _choose("retrieval_weight", options, values, judged_by, ess)


def _variants(bundle: Any, cfg: Any) -> dict[str, tuple[Any, Any]]:
    """``{variant: (bundle, config)}`` of :data:`VARIANTS` (``new_users_trending`` only with a
    user tower, ``ranker_tempered`` only with a ranker), ``full`` serving new users by the user
    tower in the ranker's own order: the gate chooses (:func:`decide_new_users`,
    :func:`decide_retrieval_weight`) unless the operator fixed ``cfg.new_users`` or
    ``cfg.retrieval_weight``."""
    from pipelines.loop.stages import variants

    if cfg.new_users == "auto":
        cfg = cfg.with_(new_users="user_tower")
    if cfg.retrieval_weight is None:
        cfg = cfg.with_(retrieval_weight=0.0)
    return {k: v for k, v in variants(bundle, cfg).items() if k in VARIANTS}


def _forward_values(
    settings: Settings, bundle: Any, cfg: Any, day: dt.date, max_requests: int, seed: int
) -> tuple[dict[str, float | None], dict[str, float], int]:
    """``(NDCG@10 by variant, users scored by variant, users replayed)`` of the bundle trained
    through ``day`` on the forward window of the ``settings.gate_test_days`` days after it (the
    module docstring); ``ValueError`` when the window has no positives."""
    from pipelines.loop import stages
    from pipelines.loop.replay import serve_users

    window = stages.forward_window_from(settings, (day + dt.timedelta(days=1)).isoformat())
    positives = stages.forward_positives(settings, window)
    users = stages.window_users(positives)
    if not users:
        raise ValueError(f"no validated positives in {window.describe()}")
    if len(users) > max_requests:
        keep = set(np.random.default_rng(seed).choice(users, max_requests, replace=False))
        users = [u for u in users if u in keep]
    fu, fi, rel = stages.forward_relevance(settings, window, positives, users)
    values: dict[str, float | None] = {}
    scored: dict[str, float] = {}
    for name, (b, c) in _variants(bundle, cfg).items():
        resp = serve_users(settings, b, users, c)
        degraded = sum(bool(r.get("degraded")) for r in resp)
        if degraded > MAX_DEGRADED * len(resp):
            raise ValueError(f"{degraded} of {len(resp)} replayed answers of {name} degraded "
                             "(online features unreadable?)")  # fmt: skip
        figures = stages.ranking_figures(stages.slate_matrix(resp, fu, fi), rel)
        values[name] = figures[f"ndcg@{stages.FORWARD_K}"]
        scored[name] = float(figures["forward_users"])
    return values, scored, len(users)


def _truth_values(
    settings: Settings, bundle: Any, cfg: Any, day: dt.date, max_requests: int, seed: int
) -> tuple[dict[str, float], dict[str, int], int, dict[str, Any]]:
    """``(true CTR by variant, distinct items by variant, requests, funnel of full)`` on
    ``day``'s simulated requests (module docstring; the funnel:
    :func:`pipelines.loop.stages.funnel_figures`, rounded to 4 places)."""
    from pipelines.data import simulate
    from pipelines.loop.replay import serve_users
    from pipelines.loop.stages import funnel_figures
    from pipelines.release import served_ope

    world = served_ope.load_world_if_any(settings, day)
    users = simulate.requests_for_day(world, day)["user_id"].astype(str).to_numpy()
    if len(users) > max_requests:
        users = np.sort(np.random.default_rng(seed).choice(users, max_requests, replace=False))
    distinct = list(pd.unique(users))
    values, items, funnel = {}, {}, {}
    for name, (b, c) in _variants(bundle, cfg).items():
        resp = serve_users(settings, b, distinct, c)
        items[name] = len({x["item_id"] for r in resp for x in r["items"]})
        if name == "full":
            funnel = _rounded(funnel_figures(resp, world, day.isoformat()))
        if sum(bool(r.get("degraded")) for r in resp) > MAX_DEGRADED * len(resp):
            log.warning("stage gate: %s: over 5%% of the replayed answers degraded", name)
        k = max(len(r["items"]) for r in resp)
        if all(r.get("policy") is not None for r in resp):
            pol = served_ope.policies_from_responses(resp, k)
            values[name] = served_ope.true_value(world, pol, users, k)
            continue
        by_user = {}
        for r in resp:
            ids = [x["item_id"] for x in r["items"]]
            pos = [x["position"] for x in r["items"]]
            p = simulate.true_click_prob(world, [r["user_id"]] * len(ids), ids, pos)
            by_user[str(r["user_id"])] = float(p.mean()) if len(p) else 0.0
        values[name] = float(np.mean([by_user[u] for u in users]))
    return values, items, len(users), funnel


def _rounded(x: Any) -> Any:
    """Floats of a nested dict rounded to 4 places (a compact record)."""
    if isinstance(x, dict):
        return {k: _rounded(v) for k, v in x.items()}
    return round(x, 4) if isinstance(x, float) else x


def judge_stages(
    settings: Settings,
    bundle: Any,
    date: str | dt.date,
    cfg: Any | None = None,
    max_requests: int = MAX_REQUESTS,
    min_lift: float = 0.0,
    seed: int = 0,
) -> dict[str, Any]:
    """Judge ``bundle`` (a :class:`serving.bundle.LoadedBundle`, or a version / alias to load)
    on ``date`` under ``cfg`` (default the served :class:`serving.config.ServingConfig`).

    Returns ``{"date", "bundle", "judged_by": "truth" | "ope" | "forward" | None, "values":
    {variant: float|None}, "distinct_items" and "funnel" (truth: ``full``'s stage funnel,
    :func:`pipelines.loop.stages.funnel_figures`), "ess" (OPE) or "forward_users" (forward):
    {variant: ...}, "requests", "keep_ranker", "decided", "lift", "reason", "new_users",
    "new_users_reason", "retrieval_weight", "retrieval_weight_reason"}`` (module docstring)."""
    from pipelines.data.simulate import read_world_meta
    from serving.config import ServingConfig

    day = schema.parse_date(date)
    if isinstance(bundle, str):
        from serving.bundle import load

        bundle = load(settings, bundle)
    cfg = cfg if cfg is not None else ServingConfig()
    has_ranker = getattr(bundle, "ranker", None) is not None
    out: dict[str, Any] = {"date": day.isoformat(), "bundle": getattr(bundle, "version", None)}
    ess: dict[str, float] | None = None
    if read_world_meta(settings) is not None:
        values, items, n, funnel = _truth_values(settings, bundle, cfg, day, max_requests, seed)
        out.update(judged_by="truth", values=values, distinct_items=items, requests=n,
                   funnel=funnel)  # fmt: skip
    else:
        from pipelines.release import served_ope

        try:
            imp = served_ope.day_impressions(settings, day, max_requests, seed)
        except (ValueError, FileNotFoundError) as exc:  # no impressions to replay (ratings only)
            try:
                values, ess, n = _forward_values(settings, bundle, cfg, day, max_requests, seed)
            except (ValueError, FileNotFoundError) as exc2:
                reason = (f"cannot judge by OPE on {day}: {exc}; nor forward: {exc2}; "
                          "no simulator truth: ranker kept")  # fmt: skip
                log.info("stage gate of bundle %s: %s", out["bundle"], reason)
                return {**out, "judged_by": None, "values": {}, "keep_ranker": has_ranker,
                        "decided": False, "lift": None, "reason": reason,
                        "new_users": None, "new_users_reason": "not judged",
                        "retrieval_weight": None,
                        "retrieval_weight_reason": "not judged"}  # fmt: skip
            out.update(judged_by="forward", metric="ndcg@10", values=values,
                       forward_users=ess, requests=n)  # fmt: skip
            return _decided(out, has_ranker, ess, min_lift)
        values, ess = {}, {}
        for name, (b, c) in _variants(bundle, cfg).items():
            est = served_ope.evaluate_served(settings, b, day, c, imp=imp, seed=seed)
            entry = est["estimates"][OPE_ESTIMATOR]
            values[name], ess[name] = entry["estimate"], entry["ess"]
        out.update(judged_by="ope", estimator=OPE_ESTIMATOR, values=values, ess=ess,
                   requests=int(imp["request_id"].nunique()))  # fmt: skip
    return _decided(out, has_ranker, ess, min_lift)


def _decided(
    out: dict[str, Any], has_ranker: bool, ess: dict[str, float] | None, min_lift: float
) -> dict[str, Any]:
    """``out`` with :func:`decide_retrieval_weight`, :func:`decide` (``full`` in the chosen
    order) and :func:`decide_new_users` of its values, logged."""
    values, judged_by = out["values"], out["judged_by"]
    out.update(decide_retrieval_weight(values, judged_by, ess))
    ranked = dict(values)
    if out["retrieval_weight"]:
        ranked["full"] = values["ranker_tempered"]
    out.update(decide(ranked, has_ranker, judged_by, ess, min_lift))
    out.update(decide_new_users(values, judged_by, ess))
    log.info("stage gate of bundle %s on %s: %s; %s; %s", out["bundle"], out["date"],
             out["reason"], out["retrieval_weight_reason"], out["new_users_reason"])  # fmt: skip
    return out
