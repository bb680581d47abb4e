"""The stage gate: does a bundle's ranker lift its slate? Judged before the bundle is registered.

``judge_stages(settings, bundle, date)`` serves the day's users in-process
(:func:`pipelines.loop.replay.serve_users`) three ways:

- ``full``: the bundle as it would serve (sources, ranker, re-ranking, exploration);
- ``retrieval_only``: the same bundle without its ranker (candidates in retrieval order, the same
  re-ranking and exploration);
- ``trending``: the cold-start trending list for every user (``force_cold_start``).

Judged by the simulator's **truth** when the workspace has one (``truth/world.json``): the day's
simulated requests (:func:`pipelines.data.simulate.requests_for_day`, at most ``max_requests``,
a seeded sample), each variant's exact expected true CTR per impression over them
(:func:`pipelines.release.served_ope.true_value`, exploration included; the served slates' true
click probabilities when the responses carry no ``policy``). Otherwise by **served OPE**
(:func:`pipelines.release.served_ope.evaluate_served`, estimator :data:`OPE_ESTIMATOR`) on the
day's logged impressions.

``keep_ranker`` is False when the ranked slate does not beat the retrieval order by more than
``min_lift`` (relative) — the release flow then registers the bundle without its ranker and
the retrieval order serves. When the OPE cannot judge (an effective sample size below
:data:`MIN_ESS`, or no estimate), the ranker is kept and ``decided`` is False with the reason.
"""

from __future__ import annotations

import dataclasses
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
VARIANTS = ("full", "retrieval_only", "trending")


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
    low = min((ess or {}).get(v, np.inf) for v in ("full", "retrieval_only"))
    if judged_by == "ope" and low < MIN_ESS:
        return {"keep_ranker": True, "decided": False, "lift": lift,
                "reason": f"effective sample size {low:.0f} < {MIN_ESS:.0f}: ranker kept"}  # fmt: skip
    keep = lift > min_lift
    verdict = "lifts" if keep else "does not lift"
    return {"keep_ranker": keep, "decided": True, "lift": lift,
            "reason": f"by {judged_by}: the ranker {verdict} the retrieval order "
                      f"({full:.4f} vs {plain:.4f}, {lift:+.1%}; needs > {min_lift:+.1%})"}  # fmt: skip


def _variants(bundle: Any, cfg: Any) -> dict[str, tuple[Any, Any]]:
    """``{variant: (bundle, config)}`` of :data:`VARIANTS`."""
    return {
        "full": (bundle, cfg),
        "retrieval_only": (dataclasses.replace(bundle, ranker=None), cfg),
        "trending": (bundle, cfg.with_(force_cold_start=True)),
    }


def _truth_values(
    settings: Settings, bundle: Any, cfg: Any, day: dt.date, max_requests: int, seed: int
) -> tuple[dict[str, float], dict[str, int], int]:
    """``(true CTR by variant, distinct items by variant, requests)`` on ``day``'s simulated
    requests (module docstring)."""
    from pipelines.data import simulate
    from pipelines.loop.replay import serve_users
    from pipelines.release import served_ope

    world = served_ope.load_world_if_any(settings, day)
    users = simulate.requests_for_day(world, day)["user_id"].astype(str).to_numpy()
    if len(users) > max_requests:
        users = np.sort(np.random.default_rng(seed).choice(users, max_requests, replace=False))
    distinct = list(pd.unique(users))
    values, items = {}, {}
    for name, (b, c) in _variants(bundle, cfg).items():
        resp = serve_users(settings, b, distinct, c)
        items[name] = len({x["item_id"] for r in resp for x in r["items"]})
        if sum(bool(r.get("degraded")) for r in resp) > 0.05 * len(resp):
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
    return values, items, len(users)


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

    Returns ``{"date", "bundle", "judged_by": "truth" | "ope", "values": {variant: float|None},
    "distinct_items" (truth) or "ess" (OPE): {variant: ...}, "requests", "keep_ranker",
    "decided", "lift", "reason"}`` (module docstring)."""
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
        values, items, n = _truth_values(settings, bundle, cfg, day, max_requests, seed)
        out.update(judged_by="truth", values=values, distinct_items=items, requests=n)
    else:
        from pipelines.release import served_ope

        try:
            imp = served_ope.day_impressions(settings, day, max_requests, seed)
        except (ValueError, FileNotFoundError) as exc:  # no impressions to replay (ratings only)
            reason = f"cannot judge by OPE on {day}: {exc}; no simulator truth: ranker kept"
            log.info("stage gate of bundle %s: %s", out["bundle"], reason)
            return {**out, "judged_by": None, "values": {}, "keep_ranker": has_ranker,
                    "decided": False, "lift": None, "reason": reason}  # fmt: skip
        values, ess = {}, {}
        for name, (b, c) in _variants(bundle, cfg).items():
            est = served_ope.evaluate_served(settings, b, day, c, imp=imp, seed=seed)
            entry = est["estimates"][OPE_ESTIMATOR]
            values[name], ess[name] = entry["estimate"], entry["ess"]
        out.update(judged_by="ope", estimator=OPE_ESTIMATOR, values=values, ess=ess,
                   requests=int(imp["request_id"].nunique()))  # fmt: skip
    out.update(decide(out["values"], has_ranker, out["judged_by"], ess, min_lift))
    log.info("stage gate of bundle %s on %s: %s", out["bundle"], day, out["reason"])
    return out
