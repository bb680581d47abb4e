"""Serving configuration: one frozen dataclass, defaults in code, a few ``RECLOOP_SERVE_*``
environment overrides, and the admin token.

| variable                          | default      | meaning |
|-----------------------------------|--------------|---------|
| ``RECLOOP_ADMIN_TOKEN``           | unset        | bearer token of the ``/admin/*`` endpoints; unset = admin endpoints off (404) |
| ``RECLOOP_SERVE_CANDIDATES``      | ``500``      | FAISS top-N retrieved per request |
| ``RECLOOP_SERVE_MAX_IN_FLIGHT``   | ``32``       | requests processed at once; beyond it ``503`` at once |
| ``RECLOOP_SERVE_THREADS``         | ``4``        | threads of one worker process running the stages at once; the rest of the in-flight requests wait; ``0``: on the event loop's own thread, one request at a time (no hand-off) |
| ``RECLOOP_SERVE_CHALLENGER_SHARE``| ``0.1``      | share of users routed to the challenger (when one is loaded) |
| ``RECLOOP_SERVE_EXPLORE_RATE``    | ``0.4``      | probability that a response carries one exploration slot |
| ``RECLOOP_SERVE_RELOAD_S``        | ``30``       | seconds between checks of the registry aliases (0 = no background check) |
| ``RECLOOP_SERVE_DEADLINE_MS``     | ``250``      | whole-request deadline; hydration gets ``hydrate_deadline_ms`` of it |
| ``RECLOOP_SERVE_EXPLORE_POOL``    | ``300``      | candidates beyond the exploit list the explored slot draws from |
| ``RECLOOP_SERVE_EXPLORE_UNIFORM``| ``0.5``      | share of the explore draw made uniformly over the pool (the rest Thompson) |
| ``RECLOOP_SERVE_EXPLORER``        | ``thompson`` | explore slot's choice: ``thompson``, ``epsilon`` or ``linucb`` |
| ``RECLOOP_SERVE_LINUCB_ALPHA``    | ``0.05``     | ``linucb``: weight of the confidence width |
| ``RECLOOP_SERVE_LINUCB_TEMPERATURE``| ``0.01``   | ``linucb``: softmax temperature over UCB scores |
| ``RECLOOP_SERVE_LINUCB_UNIFORM``  | ``0.1``      | ``linucb``: uniform share of the explore draw |
| ``RECLOOP_SERVE_SOURCES``         | ``two_tower:300,mf:100,covisit:60,trending:40,catalog:100`` | candidate sources and their quotas (``serving.sources``) |
| ``RECLOOP_SERVE_NEW_USERS``      | ``auto``     | users the model has no vector for: ``trending``, ``user_tower`` (from their demographics) or ``auto`` (the bundle's stage-gate decision, else ``user_tower``) |
| ``RECLOOP_SERVE_RETRIEVAL_WEIGHT``| ``auto``     | the ranker's click probability times ``(1 + retrieval rank) ** -w``: a float ``w >= 0`` or ``auto`` (the bundle's stage-gate choice, else 0) |
| ``RECLOOP_SERVE_TOWER_WEIGHT``    | ``0``        | the ranker's click probability times ``exp(w * z)``, ``z`` the user tower's standardised score of the candidate (``w >= 0``; 0: off) |
| ``RECLOOP_SERVE_LOG_FLUSH_S``     | ``5``        | seconds between flushes of the impression log to parquet |
| ``RECLOOP_SERVE_SEED``            | unset        | seed of the exploration draws (unset: OS entropy) |
| ``RECLOOP_SERVE_CATEGORY_CAP``    | ``0``        | ``cap`` re-ranker: at most this many items of one category in a response (0: no cap) |
| ``RECLOOP_SERVE_RERANKER``        | ``cap``      | exploit list: ``cap`` (category caps), ``calibrated`` (Steck) or ``mmr`` (``serving.diversify``) |
| ``RECLOOP_SERVE_RERANK_LAMBDA``   | ``0.5``      | ``calibrated``: weight of the KL term (0 = score order); ``mmr``: weight of relevance (1 = score order) |
| ``RECLOOP_SERVE_ITEM_CACHE_TTL_S``| ``60``       | seconds a candidate's cached online item features are used (0 = no cache) |
| ``RECLOOP_SERVE_SHARED_REDIS_URL``| db 1 of ``RECLOOP_REDIS_URL`` | Redis of what worker processes share (request records, feedback counters, admin state; ``serving.shared``), apart from the online features |
| ``RECLOOP_SERVE_ID``              | the parent pid | id of the admin state the workers of one ``recloop serve`` share |
| ``RECLOOP_SERVE_ONLINE_SEQUENCE`` | ``0``        | ``1``: read the user's online recent-item sequence from Redis for the seen exclusion and ``covisit`` (``pipelines.features.sequences``); ``0``: the bundle's training history only |

The admin token is read from the environment only (never from a file or a flag), and compared in
constant time. Settings of the platform (paths, Redis, MLflow) stay in ``pipelines.core.settings``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pipelines.core.settings import env_float, env_int, env_text


def _env_quotas(env: Mapping[str, str], name: str) -> tuple[tuple[str, int], ...] | None:
    """``name=a:300,b:100`` → ``(("a", 300), ("b", 100))``; None when unset. A source not in
    :data:`serving.sources.SOURCES` or a quota that is not a positive integer: ``ValueError``
    naming the variable."""
    from serving.sources import SOURCES

    text = env_text(env, name)
    if text is None:
        return None
    out: list[tuple[str, int]] = []
    for part in text.split(","):
        src, _, quota = part.strip().partition(":")
        if src not in SOURCES or not quota.strip().isdigit() or int(quota) < 1:
            raise ValueError(
                f"{name}={text!r}: expected source:quota pairs, sources among {SOURCES}, "
                f"quotas positive integers (bad part {part.strip()!r})"
            )
        out.append((src, int(quota)))
    return tuple(out)


RERANKERS = ("cap", "calibrated", "mmr")
"""Values of ``RECLOOP_SERVE_RERANKER`` (:attr:`ServingConfig.reranker`)."""
RETRIEVAL_WEIGHTS = (0.0, 0.3)
"""The ``retrieval_weight`` values the stage gate chooses between (``auto``)."""
TOWER_WEIGHT_TRIED = 0.2
"""The ``tower_weight`` of ``recloop stages``' ``ranker_tower`` variant."""
NEW_USER_POLICIES = ("auto", "trending", "user_tower")
"""``RECLOOP_SERVE_NEW_USERS`` values; ``auto`` resolves per bundle (:func:`new_user_policy`)."""
EXPLORERS = ("thompson", "epsilon", "linucb")
"""Values of ``RECLOOP_SERVE_EXPLORER`` (:attr:`ServingConfig.explorer`)."""


@dataclass(frozen=True)
class ServingConfig:
    """Everything the online service needs besides :class:`pipelines.core.settings.Settings`.

    Times are milliseconds (``*_ms``) or seconds (``*_s``); shares are in ``[0, 1]``.
    """

    # request limits
    k_default: int = 10
    k_max: int = 100
    max_user_id_len: int = 128
    max_categories: int = 16
    max_body_bytes: int = 16_384
    body_timeout_s: float = 5.0
    """Longest a request body may take to arrive, all of it (beyond: 408); it is read before the
    request takes an in-flight slot, so a stalled client holds none (``serving.guard``)."""
    max_purchase_value: float = 10.0
    """Largest ``value`` of a ``/feedback`` purchase (beyond: 422); a click's is 1, a rating's
    1..5 (``serving.feedback``)."""
    request_cache_bytes: int = 128 * 2**20
    """Bytes (estimated) of recent requests kept for ``/feedback``, besides ``request_cache``
    entries; beyond either, the oldest are evicted and counted (``Engine.remember``)."""
    max_in_flight: int = 32
    workers: int = 4
    """Threads of one process running the stages at once; requests beyond wait, up to
    ``max_in_flight`` in all. The GIL makes more contend: at 1M items, two single-process
    replicas behind HAProxy answered 187-204 req/s at most with 4 threads, 212-223 with 2 and
    206-230 with 1, interleaved runs (benchmarks/README.md, sixteenth session). The default
    stays 4: with 2, a request's wait for a thread counts in its latency, and under the loaded
    test suite the A/B's latency guardrail (challenger p99 / champion p99 <= 1.5) tripped on
    that noise once and rolled back a better challenger. ``RECLOOP_SERVE_THREADS=1`` or ``2``
    for throughput on a box whose cores the service has to itself. ``0``: the stages run on
    the event loop's thread itself, one request at a time a process (the hydrate reads still on
    their pool), after one turn of the loop so that requests which have arrived reach the guard
    (``max_in_flight`` counts them, and sheds beyond it, as with threads): no thread hand-off a
    request, no GIL contention between requests; one slow request (a Redis read up to its
    deadline) holds the process's other requests meanwhile.
    At 1M items two such replicas behind HAProxy kept 200 req/s at p99 27 ms against 40-48 with
    4 threads and served 300 req/s (p50 7-12 ms) where 4 threads fell behind (277-284 req/s),
    interleaved runs (benchmarks/README.md, seventeenth session)."""
    # retrieval / ranking
    candidates: int = 500
    """Most candidates per request, all sources together."""
    source_quotas: tuple[tuple[str, int], ...] = (
        ("two_tower", 300), ("mf", 100), ("covisit", 60), ("trending", 40), ("catalog", 100),
    )  # fmt: skip
    """Candidate sources and how many candidates each offers (``serving.sources``): ``two_tower``
    (the bundle's FAISS index), ``mf`` (the bundle's matrix factorization, exact inner product),
    ``covisit`` (item-to-item neighbours of the user's recent items), ``trending`` (the item
    table's trending order), ``catalog`` (a per-user sample of the whole catalog, least shown
    first, for the explore slot only: with it and ``explore_uniform`` 0.5 the live requests of
    demo day 6 were shown 431 distinct items instead of 340, true CTR unchanged at 0.0609;
    benchmarks/README.md). Merged by :func:`serving.sources.merge` (round robin by quota,
    duplicates kept once, first source wins); a source the bundle lacks offers nothing."""
    online_sequence: bool = False
    """Read each request's user's recent items from Redis (``pipelines.features.sequences``,
    appended by ``/feedback``, rebuilt daily from the logs), beside the bundle's training
    history: they join the seen exclusion and the ``covisit`` history, the newest weighted
    ``1 + sequence_boost`` decaying by half every ``sequence_half_life`` items
    (:func:`serving.sources.recency_history`); a user unknown to the bundle with a sequence gets
    covisit candidates. Redis failing: the bundle's history only (the read shares the hydrate
    deadline and breaker). Off by default: the simulator's users click again items they just
    clicked, so excluding them lowers the true CTR (demo day 10, 1,500 users: champion 0.06385
    → 0.06384; bundle 9, a day older than its day-9 clicks, 0.0622 → 0.0604; benchmarks/README.md,
    "Online user sequence")."""
    sequence_boost: float = 1.0
    sequence_half_life: float = 10.0
    force_cold_start: bool = False
    """Serve every user the cold-start trending list (the ``trending`` variant of
    ``recloop stages``)."""
    include_policy: bool = False
    """Add the slate's whole policy to each response (``policy``: exploit list, explore pool and
    its probabilities, rate; :func:`serving.rerank.policy_record`): what off-policy evaluation of
    this configuration replays (:mod:`pipelines.release.served_ope`). Off for clients."""
    include_candidates: bool = False
    """Add the request's candidates to each response (``candidates``: ``{"ids": [C ids in
    retrieval order], "scores": [C exploit scores]}``, the scores the exploit list is chosen by:
    :func:`serving.pipeline.exploit_scores`): what the stage funnel of ``recloop stages``
    (:func:`pipelines.loop.stages.funnel_figures`) reads. Off for clients."""
    ranker_batch: int = 65_536
    # deadlines
    deadline_ms: float = 250.0
    hydrate_deadline_ms: float = 100.0
    redis_cooldown_s: float = 2.0
    """After a Redis failure, skip Redis for this long (popularity answers): no retry storm."""
    item_cache_ttl_s: float = 60.0
    """Candidates' online item features are kept in the process (``serving.item_cache.
    ItemFeatureCache``) for this long, and dropped at once when a new day is materialized;
    0 = read every candidate from Redis on every request. The user's row is always read."""
    item_cache_max: int = 2_000_000
    """Item rows kept per feature service (beyond: read uncached)."""
    # A/B experiment
    experiment: str = "champion-vs-challenger"
    salt: str = "recloop-ab-v1"
    challenger_share: float = 0.1
    # re-ranking
    category_cap: int = 0
    """At most this many items of one category in a response (filled beyond it only if short);
    0 (the default): no cap, the exploit list is the score order. With the ``cross_lr`` ranker
    a cap of 3 (the default before) cost up to 6 % of the served true CTR over a 10-day demo
    loop and served fewer distinct items, but lists that mixed more categories
    (benchmarks/README.md, fourteenth session); set it for slates that must mix categories."""
    reranker: str = "cap"
    """How the exploit list is chosen (``serving.pipeline._rerank``): ``cap`` (greedy by score
    under ``category_cap``, :func:`serving.rerank.exploit_list`), ``calibrated`` (the list's
    category distribution close to the user's by KL, :func:`serving.diversify.calibrated_list`)
    or ``mmr`` (:func:`serving.diversify.mmr_list`, same category = similar). Exploration and
    its propensities are the same for all three. Demo day 10, bundle 9, 800 users: ``cap`` true
    CTR 0.0611, calibration KL 1.65, 338 distinct items; ``calibrated`` at 0.5: 0.0617, 1.15,
    356 (benchmarks/README.md, "Calibrated and MMR re-ranking")."""
    rerank_lambda: float = 0.5
    """``lam`` of the ``calibrated`` (weight of the KL, 0 = score order) and ``mmr`` (weight of
    relevance, 1 = score order) re-rankers, in ``[0, 1]``; unused by ``cap``."""
    fresh_days: int = 3
    fresh_boost: float = 0.0
    """Added to the ranker's click probability of items at most ``fresh_days`` old. Off by
    default: at 0.05 (the old default, above a typical click probability of 0.03) it put every
    new item of unknown quality on top and cost 12.6% of the served true CTR (demo day 10,
    0.0516 → 0.0451, benchmarks/README.md); new items reach users through exploration."""
    excluded_items: tuple[str, ...] = ()
    exploit_optimism: float = 0.0
    """UCB bonus on the ranker's click probability ``p`` of each candidate in the exploit list:
    ``exploit_optimism * sqrt(p (1 - p) / (1 + n))`` with ``n`` the item's 28-day impressions, so
    items the loop has rarely shown (whose ``p`` rests on few clicks) can reach the exploit slots
    and be learnt (``serving.rerank.optimistic_scores``; deterministic: propensities unchanged).
    Only when a ranker scored the candidates. Off by default: at 0.5 the 10-day demo served
    0.028–0.057 instead of 0.049–0.065 (early rankers' probabilities are small, the bonus
    dominated) and the truly best items were found no sooner (benchmarks/README.md, "Optimism")."""
    retrieval_weight: float | None = None
    """``w`` of :func:`serving.rerank.retrieval_tempered`: the exploit order is the ranker's click
    probability times ``(1 + r) ** -w``, ``r`` the candidate's place in the merged retrieval
    order (the ranker sees no source or retrieval score, so the order carries what it lacks).
    None (``auto``): the bundle's stage-gate choice among :data:`RETRIEVAL_WEIGHTS`
    (``LoadedBundle.retrieval_weight``), else 0 (:func:`retrieval_weight_for`). On the
    simulator 0.3 served +5-6 % true CTR (demo days 6 and 10); on MovieLens 100K it cost 4 %
    NDCG@10 (benchmarks/README.md, tenth session): so the gate decides per bundle."""
    tower_weight: float = 0.0
    """``w`` of :func:`serving.rerank.tower_blended`: the exploit order is the ranker's click
    probability times ``exp(w * z)``, ``z`` the user tower's score of the candidate (the user's
    online features against the two-tower's item embedding) standardised over the request's
    candidates: the tower, trained on every positive against the whole catalog, may know item
    taste the impression-trained ranker lacks. 0 (off) by default and not a stage-gate choice:
    over two 10-day demos, 0.2 in place of the tempering served -0.9 to +2.4 % a day (+0.7 % on
    average, same users) while the gate's OPE lost two thirds of its effective sample size; on
    MovieLens 100K it cost 2.7 % NDCG@10 (benchmarks/README.md, twelfth session). ``recloop
    stages`` shows it as ``ranker_tower`` (:data:`TOWER_WEIGHT_TRIED`)."""
    explore_rate: float = 0.4
    explore_pool: int = 300
    """One response in ``explore_rate`` explores one slot, from the ``explore_pool`` best
    candidates outside the exploit list (Thompson over their click posteriors). Pool 300 (was
    150): demo day 10, bundle 9, the day's 1,128 users: 485 distinct items instead of 412, true
    CTR 0.0646 instead of 0.0648 (pool 600: 468, 0.0645; rate 0.45 / pool 400: 477, 0.0642).
    0.4 / 150 (was 0.1 / 30): on demo day 10 with the impression-trained ranker, 800 users' slates showed 251
    distinct items instead of 80 (0.3 / 10: 91) for 0.8% of true CTR (0.0613 → 0.0608); the
    exploration keeps the catalog open and gives the served OPE its overlap (its PBM ESS of a
    retrained bundle on a demo day was ~520 at 0.1 / 30, 1,285 at 0.3 / 10; benchmarks/README.md).
    Keep the rate below 0.5: the logs' explore slot is recognised by its propensity."""
    explore_uniform: float = 0.5
    """Share of the explore draw made uniformly over the pool instead of by Thompson sampling
    (``serving.rerank.explore``; the logged propensity is that of the mixture)."""
    explore_prior: tuple[float, float] = (1.0, 19.0)
    """Beta prior of the click posteriors (mean 0.05); a new item keeps the prior's spread."""
    explore_grid: int = 256
    explorer: str = "thompson"
    """How the explored slot's item is drawn from the pool (``serving.rerank``): ``thompson``
    (Thompson sampling mixed with ``explore_uniform``, as before), ``epsilon`` (uniform over the
    pool) or ``linucb`` (softmax over LinUCB scores of a 10-dimensional context, mixed with
    ``linucb_uniform``; state fitted daily from the served logs, ``serving.linucb``). Each logs
    the exact propensity; simulated 14-day regret in benchmarks/README.md ("Exploration")."""
    linucb_alpha: float = 0.05
    """``linucb``: weight of the confidence width ``sqrt(x A^-1 x)`` in the UCB score."""
    linucb_temperature: float = 0.01
    """``linucb``: softmax temperature over the UCB scores (click-probability units, > 0)."""
    linucb_uniform: float = 0.1
    """``linucb``: share of the draw made uniformly over the pool (overlap for the OPE)."""
    linucb_lambda: float = 1.0
    """``linucb``: ridge ``lam`` of the prior state used while no fitted state exists."""
    # lifecycle
    reload_interval_s: float = 30.0
    smoke_users: int = 4
    # impression log
    log_flush_rows: int = 2_000
    log_flush_s: float = 5.0
    request_cache: int = 100_000
    request_cache_shared: int = 10_000
    """Recent requests kept in memory when they are also shared through Redis (``processes``
    above 1; Redis answers ``/feedback`` for older ones until ``request_ttl_s``): the in-memory
    copy is then only the fast path, and a smaller one keeps a worker's memory flat (soak,
    benchmarks/README.md: the 100k-entry cache grew each worker ~10 % in 10 minutes)."""
    processes: int = 1
    """Worker processes serving together (``recloop serve --workers``): above 1, served requests
    are shared through Redis for ``/feedback`` (:mod:`serving.shared`)."""
    request_ttl_s: float = 86_400.0
    new_users: str = "auto"
    """Users the bundle's model has no vector for: ``trending`` (cold-start list, not ranked),
    ``user_tower`` (encode them from their online demographics; their candidates — the tower's
    and trending — then go through the ranker like anyone's) or ``auto``: what the bundle's stage
    gate chose on held-out data (``LoadedBundle.new_users``, :mod:`pipelines.release.stage_gate`),
    ``user_tower`` when it chose nothing (:func:`new_user_policy`). The tower wins on the
    simulator (demo day 7: 0.0618 true CTR against 0.0311 with trending for new users), the
    trending list on MovieLens 100K (NDCG@10 0.5060 against 0.4976 for new users): so the gate
    decides per bundle."""
    """How long a served request can receive feedback through Redis (seconds)."""
    """Recent requests kept in memory so ``/feedback`` can name their items."""
    # security / network
    admin_token: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 8000
    seed: int | None = None
    """Seed of the exploration draws (None: OS entropy); tests pin it."""

    def __post_init__(self) -> None:
        checks = [
            (1 <= self.k_default <= self.k_max, "k_default must be in [1, k_max]"),
            (self.candidates >= self.k_max, "candidates must be >= k_max"),
            (0.0 <= self.challenger_share <= 1.0, "challenger_share must be in [0, 1]"),
            (0.0 <= self.explore_rate < 1.0, "explore_rate must be in [0, 1)"),
            (self.exploit_optimism >= 0.0, "exploit_optimism must be >= 0"),
            (
                self.retrieval_weight is None or self.retrieval_weight >= 0.0,
                "retrieval_weight must be >= 0 (or auto)",
            ),
            (
                self.tower_weight >= 0.0,
                "tower_weight must be >= 0",
            ),
            (0.0 <= self.explore_uniform <= 1.0, "explore_uniform must be in [0, 1]"),
            (self.explorer in EXPLORERS, f"explorer must be one of {EXPLORERS}"),
            (
                self.linucb_alpha >= 0
                and self.linucb_temperature > 0
                and self.linucb_lambda > 0
                and 0.0 <= self.linucb_uniform <= 1.0,
                "linucb_alpha must be >= 0, linucb_temperature and linucb_lambda > 0, "
                "linucb_uniform in [0, 1]",
            ),
            (self.max_in_flight >= 1, "max_in_flight must be >= 1"),
            (self.workers >= 0, "workers (RECLOOP_SERVE_THREADS) must be >= 0"),
            (self.category_cap >= 0, "category_cap must be >= 0 (0: no cap)"),
            (self.reranker in RERANKERS, f"reranker must be one of {RERANKERS}"),
            (0.0 <= self.rerank_lambda <= 1.0, "rerank_lambda must be in [0, 1]"),
            (self.deadline_ms > 0 and self.hydrate_deadline_ms > 0, "deadlines must be > 0"),
            (self.log_flush_s > 0, "log_flush_s must be > 0"),
            (
                self.new_users in NEW_USER_POLICIES,
                f"new_users must be one of {NEW_USER_POLICIES}",
            ),
            (
                self.processes >= 1 and self.request_ttl_s > 0,
                "processes, request_ttl_s must be >= 1, > 0",
            ),
            (self.item_cache_ttl_s >= 0 and self.item_cache_max >= 0, "item cache must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"serving config: {msg} ({self!r})")

    @property
    def local_requests(self) -> int:
        """Most requests kept in this process's memory for ``/feedback``."""
        return (
            self.request_cache
            if self.processes <= 1
            else min(self.request_cache, self.request_cache_shared)
        )

    @property
    def admin_enabled(self) -> bool:
        return bool(self.admin_token)

    def with_(self, **changes: Any) -> ServingConfig:
        """A copy with ``changes`` (validated again)."""
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ServingConfig:
        """Defaults, then the ``RECLOOP_SERVE_*`` / ``RECLOOP_ADMIN_TOKEN`` variables, then
        ``overrides``."""
        env = os.environ if env is None else env
        kw: dict[str, Any] = {}
        for name, key, read in (
            ("RECLOOP_SERVE_CANDIDATES", "candidates", env_int),
            ("RECLOOP_SERVE_MAX_IN_FLIGHT", "max_in_flight", env_int),
            ("RECLOOP_SERVE_THREADS", "workers", env_int),
            ("RECLOOP_SERVE_CHALLENGER_SHARE", "challenger_share", env_float),
            ("RECLOOP_SERVE_EXPLORE_RATE", "explore_rate", env_float),
            ("RECLOOP_SERVE_RELOAD_S", "reload_interval_s", env_float),
            ("RECLOOP_SERVE_DEADLINE_MS", "deadline_ms", env_float),
            ("RECLOOP_SERVE_LOG_FLUSH_S", "log_flush_s", env_float),
            ("RECLOOP_SERVE_SEED", "seed", env_int),
            ("RECLOOP_SERVE_PROCESSES", "processes", env_int),
            ("RECLOOP_SERVE_NEW_USERS", "new_users", env_text),
            ("RECLOOP_SERVE_ITEM_CACHE_TTL_S", "item_cache_ttl_s", env_float),
            ("RECLOOP_SERVE_EXPLORE_POOL", "explore_pool", env_int),
            ("RECLOOP_SERVE_EXPLORE_UNIFORM", "explore_uniform", env_float),
            ("RECLOOP_SERVE_EXPLOIT_OPTIMISM", "exploit_optimism", env_float),
            ("RECLOOP_SERVE_RETRIEVAL_WEIGHT", "retrieval_weight", _env_weight),
            ("RECLOOP_SERVE_TOWER_WEIGHT", "tower_weight", env_float),
            ("RECLOOP_SERVE_SOURCES", "source_quotas", _env_quotas),
            ("RECLOOP_SERVE_CATEGORY_CAP", "category_cap", env_int),
            ("RECLOOP_SERVE_RERANKER", "reranker", env_text),
            ("RECLOOP_SERVE_RERANK_LAMBDA", "rerank_lambda", env_float),
            ("RECLOOP_SERVE_EXPLORER", "explorer", env_text),
            ("RECLOOP_SERVE_LINUCB_ALPHA", "linucb_alpha", env_float),
            ("RECLOOP_SERVE_LINUCB_TEMPERATURE", "linucb_temperature", env_float),
            ("RECLOOP_SERVE_LINUCB_UNIFORM", "linucb_uniform", env_float),
            ("RECLOOP_SERVE_ONLINE_SEQUENCE", "online_sequence", env_int),
        ):
            value = read(env, name)
            if value is not None:
                kw[key] = value
        token = env_text(env, "RECLOOP_ADMIN_TOKEN")
        if token is not None and len(token) < 16:
            raise ValueError("RECLOOP_ADMIN_TOKEN must be at least 16 characters")
        kw["admin_token"] = token
        kw.update(overrides)
        return cls(**kw)


def _env_weight(env: Mapping[str, str], name: str) -> float | None:
    """``name`` as a float; None when unset, empty or ``auto``."""
    raw = env_text(env, name)
    if raw is None or raw.strip().lower() in ("", "auto"):
        return None
    return env_float(env, name)


def retrieval_weight_for(bundle: Any, cfg: ServingConfig) -> float:
    """The ``w`` of :func:`serving.rerank.retrieval_tempered` for ``bundle`` under ``cfg``: an
    explicit ``cfg.retrieval_weight`` wins, else the bundle's stage-gate choice
    (``bundle.retrieval_weight``), else 0."""
    if cfg.retrieval_weight is not None:
        return float(cfg.retrieval_weight)
    chosen = getattr(bundle, "retrieval_weight", None)
    return float(chosen) if chosen is not None else 0.0


def new_user_policy(bundle: Any, cfg: ServingConfig) -> str:
    """How ``bundle`` serves users it has no vector for under ``cfg``: ``trending`` or
    ``user_tower``. An explicit ``cfg.new_users`` wins; ``auto`` takes the bundle's stage-gate
    decision (``bundle.new_users``), else ``user_tower``. A bundle without a user tower serves
    them the trending list whatever this says."""
    if cfg.new_users != "auto":
        return cfg.new_users
    chosen = getattr(bundle, "new_users", None)
    return chosen if chosen in NEW_USER_POLICIES[1:] else "user_tower"


def gate_choice_value(key: str, raw: Any) -> str | float | None:
    """A stage-gate serving choice as read from a bundle tag or a judgement: ``new_users`` →
    ``trending`` / ``user_tower``, ``retrieval_weight`` → a finite float ``>= 0``; None when
    ``raw`` is missing or not one (the caller says so)."""
    if raw is None:
        return None
    if key == "new_users":
        return str(raw) if raw in NEW_USER_POLICIES[1:] else None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return None
    return value if value >= 0.0 and math.isfinite(value) else None
