"""What each stage of the served pipeline is worth on one day (``recloop stages``).

``run_stages(settings, date, bundle_ref, n_users)`` serves the day's users
(:func:`day_users`) through the service pipeline in-process (:func:`pipelines.loop.replay.
serve_users`) once per variant (:func:`variants`):

- ``full``: the bundle and the serving configuration as served (``ServingConfig.from_env()``);
- ``retrieval_only``: the same without the ranker (all sources merged, in retrieval order;
  re-ranking and exploration as served);
- ``trending``: the cold-start trending list for every user (``force_cold_start``);
- ``<source>_only``: one candidate source of ``source_quotas`` (quota = all candidates), the
  ranker kept.

Per variant (:func:`variant_figures`): ``true_ctr`` (mean simulator true click probability of
the shown items, position included; None without a simulator truth), ``ope_snips`` and
``ope_ess`` (the off-policy estimate of the variant from the day's logged impressions of the
same users, :data:`OPE_ESTIMATOR` of :mod:`pipelines.release.served_ope`, and its effective
sample size; None without logs or when the responses carry no ``policy``), ``distinct_items`` and the rest of
:func:`pipelines.report.catalog.catalog_health`, ``true_ctr_by_bucket`` (per activity bucket
of the users: positives before the day) and ``paths`` (users per serving path: ``known``,
``user_tower``, ``cold_start``, ...). Impressions and requests of the replays are not logged.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.report import catalog

log = logging.getLogger("recloop.loop.stages")

FIXED_VARIANTS = ("full", "retrieval_only", "trending")
"""The variants every run has; ``<source>_only`` ones follow, one per configured source."""


def variants(bundle: Any, cfg: Any) -> dict[str, tuple[Any, Any]]:
    """``{name: (bundle, serving config)}`` of every variant (the module docstring), in order."""
    out = {
        "full": (bundle, cfg),
        "retrieval_only": (dataclasses.replace(bundle, ranker=None), cfg),
        "trending": (bundle, cfg.with_(force_cold_start=True)),
    }
    for src, _ in cfg.source_quotas:
        out[f"{src}_only"] = (bundle, cfg.with_(source_quotas=((src, cfg.candidates),)))
    return out


def day_users(settings: Settings, date: str, n_users: int | None = None) -> tuple[list[str], Any]:
    """The day's distinct users in order of their first request, at most ``n_users``, and the
    simulator's world (None without a truth): from the simulator's requests of the day when
    the workspace has a truth, else from the users with impressions in the day's validated
    logs. ``ValueError`` when there are none."""
    from pipelines.data import simulate

    world = None
    if simulate.read_world_meta(settings) is not None:
        world = simulate.load_world(settings)
        world.extend_to(date)
        users = [str(u) for u in simulate.users_for_day(world, date)]
    else:
        users = _logged_users(settings, date)
    if not users:
        raise ValueError(f"no users for {date}: no simulator truth and no validated impressions")
    return (users if n_users is None else users[:n_users]), world


def _logged_users(settings: Settings, date: str) -> list[str]:
    """Users with impressions in the validated logs of ``date``, by first impression time."""
    from pipelines.core.validated import validated_files

    files = validated_files(settings, date, date)
    if not files:
        return []
    frame = pd.concat(
        [pd.read_parquet(f, columns=["ts", "user_id", "event"]) for f in files], ignore_index=True
    )
    frame = frame[frame["event"] == "impression"].sort_values("ts", kind="stable")
    return [str(u) for u in frame["user_id"].drop_duplicates()]


OPE_ESTIMATOR = "pbm_snips"
"""The served-OPE estimate reported as ``ope_snips`` (:mod:`pipelines.release.served_ope`)."""


def logged_impressions(settings: Settings, date: str) -> pd.DataFrame | None:
    """The day's logged impressions for the OPE (``served_ope.day_impressions``); None when the
    day has no validated logs or the served OPE is not available."""
    try:
        from pipelines.release import served_ope

        return served_ope.day_impressions(settings, date)
    except (ImportError, FileNotFoundError, ValueError) as exc:
        log.info("stages: no OPE for %s (%s)", date, exc)
        return None


def ope_snips(
    logged: pd.DataFrame | None, date: str, responses: list[dict[str, Any]], world: Any
) -> tuple[float | None, float | None]:
    """``(estimate, ess)`` of :data:`OPE_ESTIMATOR` for the policy that answered ``responses``,
    from the ``logged`` impressions of the replayed users (no bootstrap); ``(None, None)``
    without logs, without those users in them, or when the responses carry no ``policy``."""
    if logged is None:
        return None, None
    from pipelines.release import served_ope

    imp = logged[logged["user_id"].astype(str).isin({str(r["user_id"]) for r in responses})]
    if imp.empty:
        return None, None
    imp = imp.reset_index(drop=True)
    k = int(imp["position"].max()) + 1
    try:
        policies = served_ope.policies_from_responses(responses, k)
        day = schema.parse_date(date)
        out = served_ope.evaluate_logs(imp, policies, day, world, n_boot=0)
    except (ValueError, KeyError) as exc:
        log.info("stages: no OPE (%s)", exc)
        return None, None
    entry = out["estimates"].get(OPE_ESTIMATOR) or {}
    return entry.get("estimate"), entry.get("ess")


def variant_figures(
    settings: Settings,
    date: str,
    responses: list[dict[str, Any]],
    world: Any,
    context: dict[str, Any],
) -> dict[str, Any]:
    """The figures of one variant's ``responses`` (the module docstring). ``context``: the day's
    ``catalog``, ``popularity`` (positives per item before the day), ``buckets`` (user id →
    activity bucket) and ``logged`` (the day's logged impressions, for the OPE; or None)."""
    from pipelines.data import simulate
    from pipelines.loop.replay import slate_frame

    frame = slate_frame(responses)
    snips, ess = ope_snips(context["logged"], date, responses, world)
    out: dict[str, Any] = {"true_ctr": None, "ope_snips": snips, "ope_ess": ess}
    health = catalog.catalog_health(frame, context["catalog"], date, context["popularity"])
    out.update(health)
    out["users"] = len(responses)
    out["degraded"] = sum(bool(r.get("degraded")) for r in responses)
    paths = pd.Series([",".join(r.get("fallbacks") or ()) or "known" for r in responses])
    out["paths"] = {str(k): int(v) for k, v in paths.value_counts().sort_index().items()}
    out["true_ctr_by_bucket"] = None
    if world is not None and len(frame):
        truth = simulate.true_click_prob(
            world, frame["user_id"].to_numpy(), frame["item_id"].to_numpy(),
            frame["position"].to_numpy(),
        )  # fmt: skip
        out["true_ctr"] = float(truth.mean())
        per = catalog.by_bucket(pd.Series(truth, index=frame["user_id"]), context["buckets"])
        out["true_ctr_by_bucket"] = {b: v["mean"] for b, v in per.items()}
        out["bucket_users"] = {b: v["users"] for b, v in per.items()}
    return out


def run_stages(
    settings: Settings,
    date: str,
    bundle_ref: str = "champion",
    n_users: int | None = None,
    cfg: Any = None,
    only: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The ``recloop stages`` document: ``{"date", "bundle", "users", "variants": {name:
    figures}}`` (see the module docstring). ``cfg``: the serving configuration as served
    (default ``ServingConfig.from_env()``); ``only``: run just these variants."""
    from pipelines.loop.replay import serve_users
    from serving.bundle import load
    from serving.config import ServingConfig

    date = schema.parse_date(date).isoformat()
    cfg = cfg or ServingConfig.from_env()
    users, world = day_users(settings, date, n_users)
    bundle = load(settings, bundle_ref)
    context = {
        "catalog": catalog.read_catalog(settings, date),
        "popularity": catalog.positives_before(
            settings, date, catalog.POPULARITY_WINDOW_DAYS, by="item_id"
        ),
        "buckets": catalog.user_buckets(settings, date, users),
        "logged": logged_impressions(settings, date),
    }
    doc: dict[str, Any] = {"date": date, "bundle": bundle.version, "users": len(users)}
    doc["variants"] = {}
    for name, (b, c) in variants(bundle, cfg).items():
        if only is not None and name not in only:
            continue
        t0 = time.perf_counter()
        responses = serve_users(settings, b, users, c)
        doc["variants"][name] = variant_figures(settings, date, responses, world, context)
        log.info("stages %s: %s users in %.1f s", name, len(users), time.perf_counter() - t0)
    return doc


def format_table(doc: dict[str, Any]) -> str:
    """The document as a readable table: one row per variant."""
    head = (
        f"{'variant':<16}{'true_ctr':>9}{'ope_snips':>10}{'distinct':>9}{'coverage':>9}"
        f"{'gini':>7}{'novelty':>8}{'new':>7}  " + "  ".join(f"ctr[{b}]" for b in catalog.BUCKETS)
    )
    lines = [f"{doc['date']}: bundle {doc['bundle']}, {doc['users']} users", head]
    for name, v in doc["variants"].items():
        by = v.get("true_ctr_by_bucket") or {}
        lines.append(
            f"{name:<16}{_num(v['true_ctr'], 4):>9}{_num(v['ope_snips'], 4):>10}"
            f"{v['distinct_items']:>9}{_num(v['coverage'], 3):>9}{_num(v['gini'], 3):>7}"
            f"{_num(v['novelty'], 2):>8}{_num(v['new_item_share'], 3):>7}  "
            + "  ".join(f"{_num(by.get(b), 4):>{len(b) + 5}}" for b in catalog.BUCKETS)
        )
    users = next(iter(doc["variants"].values()), {}).get("bucket_users")
    if users:
        lines.append("users per bucket: " + ", ".join(f"{b} {n}" for b, n in users.items()))
    return "\n".join(lines)


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"
