"""What each stage of the served pipeline is worth on one day (``recloop stages``).

``run_stages(settings, date, bundle_ref, n_users)`` serves the day's users
(:func:`day_users`) through the service pipeline in-process (:func:`pipelines.loop.replay.
serve_users`) once per variant (:func:`variants`):

- ``full``: the bundle and the serving configuration as served (``ServingConfig.from_env()``);
- ``retrieval_only``: the same without the ranker (all sources merged, in retrieval order;
  re-ranking and exploration as served);
- ``trending``: the cold-start trending list for every user (``force_cold_start``);
- ``new_users_trending`` (when the bundle has a user tower and serves new users by it,
  :func:`serving.config.new_user_policy`): as served, but users unknown to the bundle get the
  trending list (``RECLOOP_SERVE_NEW_USERS=trending``): what the user tower is worth for new
  users; ``new_users_tower`` instead when the bundle serves them the trending list (its stage
  gate chose it, or the operator did);
- ``ranker_tempered`` (a bundle with a ranker whose order is not tempered): as served, with the
  ranker's probabilities tempered by the retrieval order (``retrieval_weight`` the largest of
  :data:`serving.config.RETRIEVAL_WEIGHTS`, the tower blend off); ``ranker_untempered`` instead
  when it is;
- ``ranker_tower`` (a bundle with a ranker and a user tower, served without the tower blend):
  as served, with the ranker's probabilities blended with the user tower's scores
  (``tower_weight`` :data:`serving.config.TOWER_WEIGHT_TRIED`) in place of the retrieval
  tempering; ``ranker_no_tower`` instead when the operator set ``RECLOOP_SERVE_TOWER_WEIGHT``;
- ``<source>_only``: one candidate source of ``source_quotas`` (quota = all candidates), the
  ranker kept.

Per variant (:func:`variant_figures`): ``true_ctr`` (mean simulator true click probability of
the shown items, position included; None without a simulator truth), ``ope_snips`` and
``ope_ess`` (the off-policy estimate of the variant from the day's logged impressions of the
same users, :data:`OPE_ESTIMATOR` of :mod:`pipelines.release.served_ope`, and its effective
sample size; None without logs or when the responses carry no ``policy``), ``distinct_items`` and the rest of
:func:`pipelines.report.catalog.catalog_health` (among them ``coverage`` and ``novelty``, the
definitions of :mod:`pipelines.core.beyond_accuracy`), ``ild`` and ``calibration_kl``
(:func:`category_figures`), ``true_ctr_by_bucket`` (per activity bucket
of the users: positives before the day), ``paths`` (users per serving path: ``known``,
``user_tower``, ``cold_start``, ...) and, with a simulator truth, ``funnel``
(:func:`funnel_figures`: the true CTR of the oracle's slates, of the best the candidates allow,
of the top candidates in score order and as served: what retrieval, ranking, and re-ranking
with exploration each lose) and, with forward positives, ``forward_funnel``
(:func:`forward_funnel`: the same stages by NDCG@10 on real data). Impressions and requests of
the replays are not logged.

**Each variant against** ``full`` (:func:`compare_to_full`, ``vs_full`` of every variant but
``full``): the variants serve the same users, so each user's own figures (:func:`user_values`:
true CTR, NDCG@10) are compared in pairs, ``{"diff", "ci_low", "ci_high", "users"}`` per figure
(:func:`paired_difference`: the mean of the users' differences, a bootstrap 95 % interval over
users). Two variants 0.1 % apart are a tie unless the interval excludes 0; the users' own spread,
which makes either mean uncertain by several per cent, cancels in the pairs. Each figure also
gets ``ci_low_adjusted`` / ``ci_high_adjusted`` and ``comparisons``: the interval widened for the
number of variants compared on that figure (Bonferroni), since among a dozen plain 95 %
intervals one is expected to exclude 0 by chance (benchmarks/README.md, sixteenth session).

**Forward ranking figures** (usable on real data, where there is no truth): the forward window
is the ``h`` days ``[D, D + h)`` (``horizon_days``; default ``settings.gate_test_days``, as
:mod:`pipelines.core.forward_window` decides for forward evaluation), and each replayed user
with positives in it (validated logs; graded as forward evaluation grades them,
:func:`pipelines.retrieval.evaluate.day_relevance`) is scored on the top 10 of the slate served
to them: ``ndcg@10``, ``hit_rate@10`` and ``recall@10`` (:mod:`pipelines.core.metrics`, means
over those users), ``forward_users`` (how many), ``ndcg_by_bucket`` and
``forward_users_by_bucket``; None when no replayed user has a forward positive. Without a
simulator truth, the replayed users are the window's users with positives (by first positive),
so every one of them is scored.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
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
"""The variants every run has; ``new_users_trending`` or ``new_users_tower`` (with a user
tower), ``ranker_tempered`` or ``ranker_untempered`` (with a ranker), ``ranker_tower`` or
``ranker_no_tower`` (with both) and the ``<source>_only`` ones (one per configured source)
follow."""


def variants(bundle: Any, cfg: Any) -> dict[str, tuple[Any, Any]]:
    """``{name: (bundle, serving config)}`` of every variant (the module docstring), in order."""
    out = {
        "full": (bundle, cfg),
        "retrieval_only": (dataclasses.replace(bundle, ranker=None), cfg),
        "trending": (bundle, cfg.with_(force_cold_start=True)),
    }
    if getattr(bundle, "user_tower", None) is not None:
        from serving.config import new_user_policy

        if new_user_policy(bundle, cfg) == "user_tower":
            out["new_users_trending"] = (bundle, cfg.with_(new_users="trending"))
        else:
            out["new_users_tower"] = (bundle, cfg.with_(new_users="user_tower"))
    if getattr(bundle, "ranker", None) is not None:
        from serving.config import RETRIEVAL_WEIGHTS, retrieval_weight_for

        if retrieval_weight_for(bundle, cfg) > 0.0:
            out["ranker_untempered"] = (bundle, cfg.with_(retrieval_weight=0.0))
        else:
            tempered = cfg.with_(retrieval_weight=RETRIEVAL_WEIGHTS[-1], tower_weight=0.0)
            out["ranker_tempered"] = (bundle, tempered)
        if getattr(bundle, "user_tower", None) is not None:
            out.update(_tower_variant(bundle, cfg))
    for src, _ in cfg.source_quotas:
        out[f"{src}_only"] = (bundle, cfg.with_(source_quotas=((src, cfg.candidates),)))
    return out


def _tower_variant(bundle: Any, cfg: Any) -> dict[str, tuple[Any, Any]]:
    """``{"ranker_no_tower": ...}`` when ``cfg`` blends the ranker's order with the user tower's
    scores, else ``{"ranker_tower": ...}`` (the blend at :data:`serving.config.
    TOWER_WEIGHT_TRIED` in place of the retrieval tempering)."""
    from serving.config import TOWER_WEIGHT_TRIED

    if cfg.tower_weight > 0.0:
        return {"ranker_no_tower": (bundle, cfg.with_(tower_weight=0.0))}
    blend = cfg.with_(tower_weight=TOWER_WEIGHT_TRIED, retrieval_weight=0.0)
    return {"ranker_tower": (bundle, blend)}


def day_users(
    settings: Settings,
    date: str,
    n_users: int | None = None,
    horizon_days: int | None = None,
) -> tuple[list[str], Any]:
    """The users to replay on ``date``, at most ``n_users``, and the simulator's world (None
    without a truth): the simulator's requests of the day, in order of their first request, when
    the workspace has a truth; else the users with positives in the forward window of
    ``horizon_days`` days from ``date`` (:func:`forward_positives`), in order of their first
    positive. ``ValueError`` when there are none."""
    from pipelines.data import simulate

    world = None
    if simulate.read_world_meta(settings) is not None:
        world = simulate.load_world_for_replay(settings, date)
        users = [str(u) for u in simulate.users_for_day(world, date)]
    else:
        window = forward_window_from(settings, date, horizon_days)
        users = window_users(forward_positives(settings, window))
    if not users:
        raise ValueError(
            f"no users for {date}: no simulator truth and no validated positives in the "
            "forward window"
        )
    return (users if n_users is None else users[:n_users]), world


# --- forward ranking figures ----------------------------------------------------------------------
FORWARD_K = 10
"""The cut-off of the forward ranking figures (``ndcg@10``, ``hit_rate@10``, ``recall@10``)."""


def forward_window_from(settings: Settings, date: str, horizon_days: int | None = None) -> Any:
    """The forward window ``[date, date + h)`` as a :class:`pipelines.core.forward_window.
    ForwardWindow` (``first`` = ``date``, ``day`` = its last day, ``trained_through`` =
    ``date − 1``); ``h`` = ``horizon_days``, default ``settings.gate_test_days``."""
    import datetime as dt

    from pipelines.core.forward_window import forward_window

    h = settings.gate_test_days if horizon_days is None else int(horizon_days)
    if h < 1:
        raise ValueError(f"--horizon-days must be >= 1, got {h}")
    return forward_window(schema.parse_date(date) + dt.timedelta(days=h - 1), h)


def forward_positives(settings: Settings, window: Any) -> pd.DataFrame:
    """The validated positives (click, purchase, rating) of the window's days, ordered by time
    (:func:`pipelines.retrieval.data.read_positives`)."""
    from pipelines.retrieval.data import read_positives

    return read_positives(settings, window.day, window.first)


def window_users(positives: pd.DataFrame) -> list[str]:
    """The distinct users of ``positives`` in order of their first positive."""
    frame = positives.sort_values("ts", kind="stable") if len(positives) else positives
    return [str(u) for u in pd.unique(frame["user_id"].astype(str))]


def forward_relevance(
    settings: Settings, window: Any, positives: pd.DataFrame, users: Sequence[str]
) -> tuple[Any, Any, Any]:
    """``(user vocab, item vocab, relevance)``: the replayed ``users`` with a positive in the
    window (in replay order), the window's positive items, and their graded ``(U, I)`` relevance
    over the window as forward evaluation grades it (:func:`pipelines.retrieval.evaluate.
    day_relevance`: 1 = click/rating, 2 = purchase, capped at 2)."""
    from pipelines.core.vocab import Vocab
    from pipelines.retrieval.evaluate import day_relevance

    positive = set(positives["user_id"].astype(str))
    user_vocab = Vocab(u for u in users if str(u) in positive)
    item_vocab = Vocab(sorted(positives["item_id"].astype(str).unique()))
    rel = day_relevance(settings, window.day, user_vocab, item_vocab, first=window.first)
    return user_vocab, item_vocab, rel


def slate_matrix(
    responses: Sequence[dict[str, Any]], users: Any, items: Any, k: int = FORWARD_K
) -> np.ndarray:
    """The served slates as item rows ``(len(users), k)`` int64 over the ``items`` vocabulary,
    row ``r`` = the response to ``users.ids[r]`` (its first when repeated), by position;
    ``-1`` for an item outside ``items`` (never relevant), a short slate, or a user without a
    response."""
    recs = np.full((len(users), k), -1, dtype=np.int64)
    done: set[int] = set()
    for r in responses:
        row = users.index.get(str(r["user_id"]))
        if row is None or row in done:
            continue
        done.add(row)
        shown = sorted(r["items"], key=lambda x: int(x["position"]))[:k]
        recs[row, : len(shown)] = items.encode(x["item_id"] for x in shown)
    return recs


def ranking_figures(recs: np.ndarray, rel: Any, k: int = FORWARD_K) -> dict[str, Any]:
    """``ndcg@k``, ``hit_rate@k``, ``recall@k`` (means over the rows with a relevant item,
    :mod:`pipelines.core.metrics`) and ``forward_users`` (those rows); the figures are None
    when no row has one."""
    from pipelines.core.metrics import hit_rate_at_k, ndcg_at_k, recall_at_k

    n = int((np.diff(rel.indptr) > 0).sum()) if rel.shape[0] else 0
    out: dict[str, Any] = {f"ndcg@{k}": None, f"hit_rate@{k}": None, f"recall@{k}": None}
    out["forward_users"] = n
    if n:
        out[f"ndcg@{k}"] = ndcg_at_k(recs, rel, k)
        out[f"hit_rate@{k}"] = hit_rate_at_k(recs, rel, k)
        out[f"recall@{k}"] = recall_at_k(recs, rel, k)
    return out


def forward_figures(
    responses: Sequence[dict[str, Any]], forward: tuple[Any, Any, Any] | None, buckets: pd.Series
) -> dict[str, Any]:
    """:func:`ranking_figures` of ``responses`` against ``forward`` (:func:`forward_relevance`),
    plus ``ndcg_by_bucket`` (NDCG@10 per activity bucket of ``buckets``; None for a bucket
    without scored users) and ``forward_users_by_bucket``; all None when ``forward`` is None."""
    key = f"ndcg@{FORWARD_K}"
    if forward is None:
        return {**ranking_figures(np.zeros((0, FORWARD_K), np.int64), _empty_rel()),
                "ndcg_by_bucket": None, "forward_users_by_bucket": None}  # fmt: skip
    users, items, rel = forward
    recs = slate_matrix(responses, users, items)
    out = ranking_figures(recs, rel)
    of = buckets.reindex(pd.Index(users.ids)).fillna(catalog.BUCKETS[0]).to_numpy()
    per = {b: ranking_figures(recs[of == b], rel[np.flatnonzero(of == b)]) for b in catalog.BUCKETS}
    out["ndcg_by_bucket"] = {b: f[key] for b, f in per.items()}
    out["forward_users_by_bucket"] = {b: f["forward_users"] for b, f in per.items()}
    return out


def forward_funnel(
    responses: Sequence[dict[str, Any]], forward: tuple[Any, Any, Any] | None
) -> dict[str, float | None]:
    """The stage funnel on real data (no truth: the forward window's positives,
    :func:`forward_relevance`), over the replayed users with a forward positive: NDCG@10 of the
    best the candidates allow (``candidates_best``: the candidates with a positive first, by
    grade), of the top candidates in score order (``score_order``) and as served (``served``),
    and ``positives_in_candidates`` (the share of the users' forward positives among their
    candidates). All None without forward positives or candidates in the responses."""
    keys = ("candidates_best", "score_order", "served", "positives_in_candidates")
    rows = [r for r in responses if r.get("candidates") and r["candidates"]["ids"]]
    if forward is None or not rows:
        return dict.fromkeys(keys)
    users, items, rel = forward
    item_ids = np.asarray(items.ids, dtype=object)
    best, ranked, found, total = [], [], 0, 0
    for r in rows:
        row = users.index.get(str(r["user_id"]))
        if row is None:
            continue
        ids = list(r["candidates"]["ids"])
        lo, hi = rel.indptr[row], rel.indptr[row + 1]
        grade = dict(zip(item_ids[rel.indices[lo:hi]].tolist(), rel.data[lo:hi], strict=True))
        hits = np.array([grade.get(str(x), 0.0) for x in ids])
        found += int((hits > 0).sum())
        total += hi - lo
        top = np.argsort(-hits, kind="stable")[:FORWARD_K]
        order = np.argsort(-np.asarray(r["candidates"]["scores"]), kind="stable")[:FORWARD_K]
        for out, pick in ((best, top), (ranked, order)):
            shown = [{"item_id": ids[j], "position": p} for p, j in enumerate(pick)]
            out.append({"user_id": r["user_id"], "items": shown})
    key = f"ndcg@{FORWARD_K}"
    figures = {
        "candidates_best": ranking_figures(slate_matrix(best, users, items), rel)[key],
        "score_order": ranking_figures(slate_matrix(ranked, users, items), rel)[key],
        "served": ranking_figures(slate_matrix(responses, users, items), rel)[key],
        "positives_in_candidates": found / total if total else None,
    }
    return figures


def _empty_rel() -> Any:
    import scipy.sparse as sp

    return sp.csr_matrix((0, 0))


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


# --- beyond-accuracy figures over item categories ----------------------------------------------
def category_context(settings: Settings, date: str, users: Sequence[str]) -> dict[str, Any] | None:
    """What :func:`category_figures` needs, or None when ``data/items.parquet`` has no
    ``category``: ``items`` (``pd.Index`` of item ids), ``category`` ``(I,)`` theirs,
    ``labels`` ``(G,)`` the distinct categories, ``user_dist`` ``{user: (G,)}`` each of
    ``users``' category distribution of their positives in the
    :data:`pipelines.report.catalog.POPULARITY_WINDOW_DAYS` days before ``date``, users without
    any getting the distribution of everyone's positives then (the catalog's when there are
    none)."""
    from pipelines.core import beyond_accuracy as ba
    from pipelines.core import layout

    path = layout.attributes_path(settings, "items")
    if not path.exists():
        return None
    items = pd.read_parquet(path)
    if "category" not in items.columns:
        return None
    items = items.drop_duplicates("item_id", keep="last")
    ids = pd.Index(items["item_id"].astype(str))
    category = items["category"].astype(str).to_numpy()
    labels = np.unique(category)
    pos = _positive_pairs(settings, date)
    pos["category"] = pd.Series(category, index=ids).reindex(pos["item_id"]).to_numpy()
    pos = pos.dropna(subset=["category"])
    fallback = ba.category_distribution(pos["category"].to_numpy(), labels, pos["n"].to_numpy())
    if fallback.sum() == 0:
        fallback = ba.category_distribution(category, labels)
    mine = pos[pos["user_id"].isin({str(u) for u in users})]
    counts = mine.groupby(["user_id", "category"])["n"].sum()
    history: dict[str, dict[str, float]] = {}
    for (u, c), n in counts.items():
        history.setdefault(str(u), {})[str(c)] = float(n)
    order = [str(u) for u in pd.unique(np.asarray(users, dtype=object))]
    dist = ba.user_distributions(history, order, labels, fallback)
    return {"items": ids, "category": category, "labels": labels,
            "user_dist": dict(zip(order, dist, strict=True))}  # fmt: skip


def _positive_pairs(settings: Settings, date: str) -> pd.DataFrame:
    """``user_id``, ``item_id``, ``n``: positive events (click, purchase, rating) per pair in the
    validated logs of the :data:`pipelines.report.catalog.POPULARITY_WINDOW_DAYS` days before
    ``date``."""
    import duckdb

    from pipelines.core.duckdb_sql import sql_list
    from pipelines.core.validated import validated_files

    last = schema.parse_date(date) - dt.timedelta(days=1)
    files = validated_files(
        settings, last - dt.timedelta(days=catalog.POPULARITY_WINDOW_DAYS - 1), last
    )
    if not files:
        return pd.DataFrame({"user_id": [], "item_id": [], "n": []})
    events = ", ".join(f"'{e}'" for e in catalog.POSITIVE_EVENTS)
    with duckdb.connect() as con:
        frame = con.execute(
            f"SELECT user_id, item_id, count(*) AS n FROM read_parquet({sql_list(files)}) "
            f"WHERE event IN ({events}) GROUP BY user_id, item_id"
        ).df()
    return frame.astype({"user_id": str, "item_id": str})


def category_figures(
    responses: Sequence[dict[str, Any]], context: dict[str, Any] | None
) -> dict[str, float | None]:
    """``ild`` (intra-list diversity of the slates by category inequality) and
    ``calibration_kl`` (mean over the slates of KL(user's distribution || slate's), Steck's
    smoothing) of :mod:`pipelines.core.beyond_accuracy`, over each slate as shown (explored
    slot included; items outside the catalog left out); None without ``context``
    (:func:`category_context`) or slates."""
    from pipelines.core import beyond_accuracy as ba

    if context is None or not responses:
        return {"ild": None, "calibration_kl": None}
    k = max((len(r["items"]) for r in responses), default=0)
    recs = np.full((len(responses), k), -1, dtype=np.int64)
    for row, r in enumerate(responses):
        shown = sorted(r["items"], key=lambda x: int(x["position"]))
        recs[row, : len(shown)] = context["items"].get_indexer([str(x["item_id"]) for x in shown])
    cats, labels = context["category"], context["labels"]
    fallback = np.full(len(labels), 1.0 / max(len(labels), 1))
    dist = np.array([context["user_dist"].get(str(r["user_id"]), fallback) for r in responses])
    ild = ba.intra_list_diversity(recs, categories=cats)
    kl = ba.mean_calibration_kl(recs, cats, dist.reshape(len(responses), len(labels)), labels)
    return {
        "ild": None if np.isnan(ild) else ild,
        "calibration_kl": None if np.isnan(kl) else kl,
    }


def funnel_figures(
    responses: Sequence[dict[str, Any]],
    world: Any,
    date: str,
    k: int = 10,
    served: np.ndarray | None = None,
) -> dict[str, float | None]:
    """Where a variant's slates lose true CTR, stage by stage (the simulator's truth; position
    included, slot ``p`` of ``k``), means over the responses' users:

    - ``oracle``: each user's true top ``k`` of every item created by ``date``
      (:func:`pipelines.data.simulate.oracle_slates`; items the user has seen included, so it
      bounds what any service can do);
    - ``candidates_best``: the best ``k`` of the request's candidates (``candidates`` of the
      response, :attr:`serving.config.ServingConfig.include_candidates`), best first: what
      retrieval left the later stages to find;
    - ``score_order``: the top ``k`` candidates by the exploit scores (the ranker's tempered
      probabilities, or the retrieval order without a ranker), in that order: what ranking
      found, before re-ranking and exploration;
    - ``served``: the slates as served (= ``true_ctr``);
    - ``oracle_recall``: the share of the oracle's items among the candidates;
    - ``known``: ``{what: true CTR}``, for each of :data:`pipelines.data.simulate.KNOWLEDGE`,
      the top ``k`` candidates in the order a model knowing only that of the truth would give
      them (:func:`pipelines.data.simulate.known_logit`): how far ``score_order`` is from what
      the ranker's information could carry (its sparse features are demographics, categories and
      the item id: ``demographics_x_item`` is their ceiling).

    ``served`` and ``score_order`` are at most ``candidates_best`` (every shown item is a
    candidate), and ``candidates_best`` at most ``oracle``. ``served`` is over every response,
    the rest over those carrying candidates; all None when none does. ``served``: the slates'
    truth when the caller has it (:func:`slate_truth`), else computed here."""
    from pipelines.data import simulate
    from pipelines.loop.replay import slate_frame

    rows = [r for r in responses if r.get("candidates") and r["candidates"]["ids"]]
    none = dict.fromkeys(
        ("oracle", "candidates_best", "score_order", "served", "oracle_recall", "known")
    )
    if world is None or not rows:
        return none
    users = np.asarray([str(r["user_id"]) for r in rows])
    sizes = np.asarray([len(r["candidates"]["ids"]) for r in rows])
    ids = np.concatenate([np.asarray(r["candidates"]["ids"], dtype=str) for r in rows])
    urows = simulate.user_rows(world, np.repeat(users, sizes))
    irows = simulate.item_rows(world, ids)  # the ids' rows once, for the truth and the known
    rel = simulate.true_probabilities(world, urows, irows, np.zeros(len(ids), np.int64))["click"]
    known = {x: simulate.known_logit(world, urows, irows, x) for x in simulate.KNOWLEDGE}
    exam = simulate.EXAMINATION[:k]
    best, ranked, recall = [], [], []
    by_known: dict[str, list[np.ndarray]] = {x: [] for x in known}
    oracle = simulate.oracle_slates(world, users, date, k)
    start = 0
    for row, (r, n) in enumerate(zip(rows, sizes, strict=True)):
        seg = rel[start : start + n]
        scores = np.asarray(r["candidates"]["scores"], dtype=np.float64)
        m = min(k, n)
        best.append(np.sort(seg)[::-1][:m] * exam[:m])
        ranked.append(seg[np.argsort(-scores, kind="stable")[:m]] * exam[:m])
        recall.append(np.isin(oracle[row], ids[start : start + n]).mean())
        for x, logit in known.items():
            order = np.argsort(-logit[start : start + n], kind="stable")[:m]
            by_known[x].append(seg[order] * exam[:m])
        start += n
    slots = np.tile(np.arange(k), len(users))
    top = simulate.true_click_prob(world, np.repeat(users, k), oracle.ravel(), slots)
    if served is None:
        served = slate_truth(slate_frame(responses), world)
    return {
        "oracle": float(top.mean()),
        "candidates_best": float(np.concatenate(best).mean()),
        "score_order": float(np.concatenate(ranked).mean()),
        "served": None if served is None else float(served.mean()),
        "oracle_recall": float(np.mean(recall)),
        "known": {x: float(np.concatenate(v).mean()) for x, v in by_known.items()},
    }


def slate_truth(frame: pd.DataFrame, world: Any) -> np.ndarray | None:
    """The simulator's true click probability of every shown item at its slot, ``(n,)``
    float64, one per row of ``frame`` (:func:`pipelines.loop.replay.slate_frame` of the
    responses); None without a world or slates."""
    from pipelines.data import simulate

    if world is None or not len(frame):
        return None
    return simulate.true_click_prob(
        world, frame["user_id"].to_numpy(), frame["item_id"].to_numpy(),
        frame["position"].to_numpy(),
    )  # fmt: skip


def variant_figures(
    settings: Settings,
    date: str,
    responses: list[dict[str, Any]],
    world: Any,
    context: dict[str, Any],
    frame: pd.DataFrame,
    truth: np.ndarray | None,
) -> dict[str, Any]:
    """The figures of one variant's ``responses`` (the module docstring). ``context``: the day's
    ``catalog``, ``popularity`` (positives per item before the day), ``buckets`` (user id →
    activity bucket), ``logged`` (the day's logged impressions, for the OPE; or None) and
    ``forward`` (:func:`forward_relevance`; or None: no replayed user has a forward positive).
    ``frame``: the responses' :func:`pipelines.loop.replay.slate_frame`; ``truth``: its
    :func:`slate_truth`."""
    snips, ess = ope_snips(context["logged"], date, responses, world)
    out: dict[str, Any] = {"true_ctr": None, "ope_snips": snips, "ope_ess": ess}
    out.update(forward_figures(responses, context["forward"], context["buckets"]))
    out["forward_funnel"] = forward_funnel(responses, context["forward"])
    health = catalog.catalog_health(frame, context["catalog"], date, context["popularity"])
    out.update(health)
    out.update(category_figures(responses, context.get("categories")))
    out["users"] = len(responses)
    out["degraded"] = sum(bool(r.get("degraded")) for r in responses)
    paths = pd.Series([",".join(r.get("fallbacks") or ()) or "known" for r in responses])
    out["paths"] = {str(k): int(v) for k, v in paths.value_counts().sort_index().items()}
    out["true_ctr_by_bucket"] = None
    out["funnel"] = funnel_figures(responses, world, date, served=truth)
    if truth is not None:
        out["true_ctr"] = float(truth.mean())
        per = catalog.by_bucket(pd.Series(truth, index=frame["user_id"]), context["buckets"])
        out["true_ctr_by_bucket"] = {b: v["mean"] for b, v in per.items()}
        out["bucket_users"] = {b: v["users"] for b, v in per.items()}
    return out


PAIRED_BOOT = 2000
"""Bootstrap replicates of :func:`paired_difference`."""
PAIRED_LEVEL = 0.95
"""Level of its percentile interval."""
ADJUSTED_TAIL_DRAWS = 20
"""Fewest bootstrap replicates beyond each end of an adjusted interval (its replicates are
raised to this over the adjusted tail share)."""


def user_values(
    responses: Sequence[dict[str, Any]],
    frame: pd.DataFrame,
    truth: np.ndarray | None,
    forward: tuple[Any, Any, Any] | None,
) -> dict[str, pd.Series]:
    """Each replayed user's own figures, for comparing variants on the same users:
    ``true_ctr`` (the mean true click probability of the user's shown items, position
    included; absent when ``truth`` is None) and ``ndcg@10`` (the user's NDCG@10 on the
    forward window's positives, users with a forward positive only; absent when none has one).
    ``frame``: the responses' :func:`pipelines.loop.replay.slate_frame`; ``truth``: its
    :func:`slate_truth`. Series indexed by user id."""
    from pipelines.core.metrics import ndcg_rows

    out: dict[str, pd.Series] = {}
    if truth is not None:
        users = frame["user_id"].astype(str).to_numpy()
        out["true_ctr"] = pd.Series(truth).groupby(users).mean()
    if forward is not None:
        fusers, items, rel = forward
        scored = np.flatnonzero(np.diff(rel.indptr) > 0)
        if len(scored):
            ndcg = ndcg_rows(slate_matrix(responses, fusers, items), rel, FORWARD_K)
            ids = np.asarray(fusers.ids, dtype=object)[scored].astype(str)
            out[f"ndcg@{FORWARD_K}"] = pd.Series(ndcg[scored], index=ids)
    return out


def paired_difference(
    variant: pd.Series,
    reference: pd.Series,
    n_boot: int = PAIRED_BOOT,
    level: float = PAIRED_LEVEL,
    seed: int = 0,
    comparisons: int = 1,
) -> dict[str, Any]:
    """The mean over users of ``variant - reference`` (per-user figures indexed by user id,
    compared on the users both have) with a bootstrap percentile interval at ``level`` (users
    resampled, ``n_boot`` replicates, seeded): ``{"diff", "ci_low", "ci_high", "users"}``;
    the figures are None when no user is shared. Pairing removes the users' own spread (the
    same users see both variants), so the interval is that of the difference, far narrower
    than either mean's.

    ``comparisons`` > 1 (this difference is one of that many read together, as ``recloop
    stages`` reads every variant against ``full``) adds ``"ci_low_adjusted"``,
    ``"ci_high_adjusted"``: the Bonferroni interval at ``1 - (1 - level) / comparisons``, whose
    family of intervals holds all at once with probability ``level`` (the replicates raised to
    at least :data:`ADJUSTED_TAIL_DRAWS` beyond each of its ends), and ``"comparisons"``. With a
    dozen variants one of them is expected to clear 0 by chance on the plain interval; a
    difference whose adjusted interval excludes 0 is one to act on."""
    common = variant.index.intersection(reference.index)
    d = variant.loc[common].to_numpy(float) - reference.loc[common].to_numpy(float)
    out: dict[str, Any] = {"diff": None, "ci_low": None, "ci_high": None, "users": len(d)}
    adjusted = comparisons > 1
    if adjusted:
        out.update(ci_low_adjusted=None, ci_high_adjusted=None, comparisons=int(comparisons))
    if not len(d):
        return out
    tail = (1.0 - level) / 2.0
    tail_adj = tail / max(1, comparisons)
    if adjusted:
        n_boot = max(n_boot, int(np.ceil(ADJUSTED_TAIL_DRAWS / tail_adj)))
    rng = np.random.default_rng(seed)
    boot = np.empty(n_boot)
    for lo in range(0, n_boot, 256):  # chunks of replicates: bounded memory
        hi = min(n_boot, lo + 256)
        boot[lo:hi] = d[rng.integers(0, len(d), (hi - lo, len(d)))].mean(axis=1)
    low, high = np.quantile(boot, [tail, 1.0 - tail])
    out.update(diff=float(d.mean()), ci_low=float(low), ci_high=float(high))
    if adjusted:
        low_a, high_a = np.quantile(boot, [tail_adj, 1.0 - tail_adj])
        out.update(ci_low_adjusted=float(low_a), ci_high_adjusted=float(high_a))
    return out


def compare_to_full(values: dict[str, dict[str, pd.Series]]) -> dict[str, dict[str, Any]]:
    """``{variant: {figure: paired_difference(variant, full)}}`` for every variant but ``full``
    of ``values`` (:func:`user_values` per variant), for the figures both have, each with its
    interval adjusted for the number of variants compared on that figure
    (:func:`paired_difference`'s ``comparisons``); empty without ``full``."""
    full = values.get("full")
    if full is None:
        return {}
    others = {name: v for name, v in values.items() if name != "full"}
    count = {m: sum(m in v for v in others.values()) for m in full}
    return {
        name: {m: paired_difference(v[m], full[m], comparisons=count[m]) for m in v if m in full}
        for name, v in others.items()
    }


def run_stages(
    settings: Settings,
    date: str,
    bundle_ref: str = "champion",
    n_users: int | None = None,
    cfg: Any = None,
    only: Sequence[str] | None = None,
    horizon_days: int | None = None,
) -> dict[str, Any]:
    """The ``recloop stages`` document: ``{"date", "bundle", "users", "forward_window",
    "variants": {name: figures}}`` (see the module docstring; ``forward_window``: ``[first,
    last]`` ISO days of the ``horizon_days`` forward window). ``cfg``: the serving configuration
    as served (default ``ServingConfig.from_env()``); ``only``: run just these variants."""
    from pipelines.loop.replay import serve_users, slate_frame
    from serving.bundle import load
    from serving.config import ServingConfig

    date = schema.parse_date(date).isoformat()
    cfg = cfg or ServingConfig.from_env()
    users, world = day_users(settings, date, n_users, horizon_days)
    window = forward_window_from(settings, date, horizon_days)
    positives = forward_positives(settings, window)
    before = (schema.parse_date(date) - dt.timedelta(days=1)).isoformat()
    bundle = load(settings, bundle_ref, as_of=before)  # the item table the service had on D
    context = {
        "catalog": catalog.read_catalog(settings, date),
        "popularity": catalog.positives_before(
            settings, date, catalog.POPULARITY_WINDOW_DAYS, by="item_id"
        ),
        "buckets": catalog.user_buckets(settings, date, users),
        "logged": logged_impressions(settings, date),
        "forward": None,
        "categories": category_context(settings, date, users),
    }
    if len(positives):
        context["forward"] = forward_relevance(settings, window, positives, users)
    doc: dict[str, Any] = {"date": date, "bundle": bundle.version, "users": len(users)}
    doc["forward_window"] = [window.first.isoformat(), window.day.isoformat()]
    doc["variants"] = {}
    per_user: dict[str, dict[str, pd.Series]] = {}
    for name, (b, c) in variants(bundle, cfg).items():
        if only is not None and name not in only:
            continue
        t0 = time.perf_counter()
        responses = serve_users(settings, b, users, c)
        frame = slate_frame(responses)
        truth = slate_truth(frame, world)
        figures = variant_figures(settings, date, responses, world, context, frame, truth)
        doc["variants"][name] = figures
        per_user[name] = user_values(responses, frame, truth, context["forward"])
        log.info("stages %s: %s users in %.1f s", name, len(users), time.perf_counter() - t0)
    for name, diffs in compare_to_full(per_user).items():
        doc["variants"][name]["vs_full"] = diffs
    return doc


def format_table(doc: dict[str, Any]) -> str:
    """The document as a readable table: one row per variant."""
    head = (
        f"{'variant':<16}{'true_ctr':>9}{'ope_snips':>10}{'ndcg@10':>9}{'hit@10':>8}"
        f"{'distinct':>9}{'ild':>7}{'cal_kl':>8}{'coverage':>9}"
        f"{'gini':>7}{'novelty':>8}{'new':>7}  " + "  ".join(f"ctr[{b}]" for b in catalog.BUCKETS)
    )
    first, last = doc.get("forward_window") or ("-", "-")
    scored = next(iter(doc["variants"].values()), {}).get("forward_users")
    lines = [
        f"{doc['date']}: bundle {doc['bundle']}, {doc['users']} users; forward window "
        f"{first}..{last}: {scored or 0} users with positives",
        head,
    ]
    for name, v in doc["variants"].items():
        by = v.get("true_ctr_by_bucket") or {}
        lines.append(
            f"{name:<16}{_num(v['true_ctr'], 4):>9}{_num(v['ope_snips'], 4):>10}"
            f"{_num(v.get('ndcg@10'), 4):>9}{_num(v.get('hit_rate@10'), 3):>8}"
            f"{v['distinct_items']:>9}{_num(v.get('ild'), 3):>7}"
            f"{_num(v.get('calibration_kl'), 3):>8}{_num(v['coverage'], 3):>9}{_num(v['gini'], 3):>7}"
            f"{_num(v['novelty'], 2):>8}{_num(v['new_item_share'], 3):>7}  "
            + "  ".join(f"{_num(by.get(b), 4):>{len(b) + 5}}" for b in catalog.BUCKETS)
        )
    funnels = {
        n: v["funnel"]
        for n, v in doc["variants"].items()
        if (v.get("funnel") or {}).get("oracle") is not None
    }
    if funnels:
        from pipelines.data.simulate import KNOWLEDGE

        lines.append(
            f"{'funnel':<16}{'oracle':>9}{'cand_best':>10}{'score_ord':>10}{'served':>9}"
            f"{'recall':>8}{'appeal':>8}{'demo*cat':>9}{'demo*item':>10}{'user*cat':>9}"
            "   (true CTR; recall: oracle items among the candidates; the last four: the top"
            " candidates by what a model knowing that of the truth would rank them)"
        )
        for name, f in funnels.items():
            lines.append(
                f"{name:<16}{_num(f['oracle'], 4):>9}{_num(f['candidates_best'], 4):>10}"
                f"{_num(f['score_order'], 4):>10}{_num(f['served'], 4):>9}"
                f"{_num(f['oracle_recall'], 3):>8}"
                + "".join(
                    f"{_num((f.get('known') or {}).get(x), 4):>{w}}"
                    for x, w in zip(KNOWLEDGE, (8, 9, 10, 9), strict=True)
                )
            )
    forward = {
        n: v["forward_funnel"]
        for n, v in doc["variants"].items()
        if (v.get("forward_funnel") or {}).get("candidates_best") is not None
    }
    if forward:
        lines.append(
            f"{'forward funnel':<16}{'cand_best':>10}{'score_ord':>10}{'served':>9}"
            f"{'pos_in_cand':>12}   (NDCG@{FORWARD_K} on the forward window's positives)"
        )
        for name, f in forward.items():
            lines.append(
                f"{name:<16}{_num(f['candidates_best'], 4):>10}{_num(f['score_order'], 4):>10}"
                f"{_num(f['served'], 4):>9}{_num(f['positives_in_candidates'], 3):>12}"
            )
    paired = {n: v["vs_full"] for n, v in doc["variants"].items() if v.get("vs_full")}
    if paired:
        pct = round(PAIRED_LEVEL * 100)
        n = max((d.get("comparisons", 1) for p in paired.values() for d in p.values()), default=1)
        lines.append(
            f"{'vs full':<16}{'d_true_ctr':>11}{f'{pct}% CI':>20}{'adjusted':>20}"
            f"{'d_ndcg@10':>11}{f'{pct}% CI':>20}{'adjusted':>20}   (variant - full, paired "
            f"over the same users; adjusted: Bonferroni over the {n} variants, all {pct}% at "
            "once)"
        )
        for name, p in paired.items():
            cells = [_diff_cells(p.get(m)) for m in ("true_ctr", f"ndcg@{FORWARD_K}")]
            lines.append(f"{name:<16}" + "".join(cells))
    users = next(iter(doc["variants"].values()), {}).get("bucket_users")
    if users:
        lines.append("users per bucket: " + ", ".join(f"{b} {n}" for b, n in users.items()))
    return "\n".join(lines)


def _diff_cells(p: dict[str, Any] | None) -> str:
    """A paired difference as ``diff``, ``[low, high]`` and adjusted ``[low, high]`` columns
    ("-" when absent)."""
    if not p or p.get("diff") is None:
        return f"{'-':>11}{'-':>20}{'-':>20}"
    ci = f"[{p['ci_low']:+.4f}, {p['ci_high']:+.4f}]"
    adj = "-"
    if p.get("ci_low_adjusted") is not None:
        adj = f"[{p['ci_low_adjusted']:+.4f}, {p['ci_high_adjusted']:+.4f}]"
    return f"{p['diff']:>+11.4f}{ci:>20}{adj:>20}"


def _num(x: float | None, digits: int) -> str:
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}f}"
