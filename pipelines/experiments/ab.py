"""A/B analysis of the served arms: per-arm numbers, an always-valid sequential test, a decision.

**Experiment.** The service routes users to the arms ``champion`` / ``challenger``
(``serving.bundle.ARMS``) and stamps every impression / click / purchase row with ``arm`` and
``model_version = "bundle-<v>"``; the log has no experiment-name field (the service's
``experiment`` setting only salts the routing hash). An experiment is therefore the pair of
bundle versions, named ``"<champion v>-vs-<challenger v>"`` (:func:`experiment_name`), e.g.
``"3-vs-5"``: its rows are the validated rows with ``arm == "champion"`` and
``model_version == "bundle-3"``, or ``arm == "challenger"`` and ``model_version == "bundle-5"``.
It starts on the first validated day holding a challenger row of it (:func:`start_date`).

**Per arm** (:func:`arm_stats`, from ``data/validated/date=D/``): impressions, clicks (distinct
clicked ``(request_id, position)`` slots, so CTR stays in [0, 1]), CTR with a Wilson 95% interval
(impression level), purchases (distinct purchased ``(request_id, item_id)`` pairs: a repeated
purchase counts once), conversion = purchases / impressions, distinct users, and ``ctr_var`` /
``conv_var``: the variance of the ratio estimate with users as the unit (delta
method: ``sum_u (c_u - r n_u)^2 / N^2 * U / (U - 1)`` for user u's clicks c_u, impressions n_u,
arm totals N and r = C / N), because routing is sticky per user and a user's impressions are
not independent. With one impression per user it is ``r (1 - r) / N``.

**mSPRT** (mixture sequential probability ratio test, Johari, Pekelis & Walsh, "Always valid
inference", 2017/2022). Δ̂ = CTR(challenger) − CTR(champion), s² = Var(Δ̂) = ctr_var(challenger) +
ctr_var(champion). Under H0 (Δ = 0), Δ̂ ≈ N(0, s²); mixing the alternative Δ ~ N(0, τ²) gives the
likelihood ratio

    Λ = sqrt(s² / (s² + τ²)) · exp( τ² Δ̂² / (2 s² (s² + τ²)) ),

a non-negative martingale under H0, so P(Λ ever ≥ 1/α) ≤ α (Ville). Looks are daily on the
cumulative data since the experiment's start; the always-valid p-value is
``p_k = min(1, min_{j ≤ k} 1/Λ_j)`` (never increases over looks), and inverting the test gives
the always-valid confidence sequence for Δ, intersected over looks:

    Δ̂ ± sqrt( 2 s² (s² + τ²) / τ² · (log(1/α) + ½ log((s² + τ²) / s²)) ).

``τ`` (:attr:`ABConfig.tau`) is the prior scale of plausible CTR differences (default 0.01,
absolute): the test is most powerful for effects near it and valid for any value.

**Decision** (:func:`decide`, pure; :func:`analyze` applies it), checked in this order:

1. the experiment already ended on an earlier date (a terminal report exists) → that action,
   nothing applied again;
2. **guardrails** (any look, even below the minimum sample: the intervals are always valid):
   the upper end of the CTR confidence sequence below ``−ctr_max_drop``, or of the conversion
   one below ``−conversion_max_drop`` → ``rollback``;
3. either arm below ``min_impressions`` → ``continue`` (or ``stop`` when the duration is over);
4. **service guardrails** (below) → ``rollback`` when one fails;
5. p ≤ α and the CTR sequence's lower end > 0 → ``promote``;
6. day ``max_days`` reached (day 1 = start date) → ``stop``; otherwise ``continue``.

**Service guardrails** (:func:`service_stats`, :func:`service_guardrails`), per arm over the
experiment's requests so far, from the service's request log (``serving/requests/``, written by
:class:`serving.logging.RequestLog`): latency p99 (ms, server total), error rate (non-200 among
routed requests), degraded rate (200 answers that fell back to popularity because Redis, the
index or the ranker failed; cold start is reported but is not a failure) and catalog coverage
(distinct items shown / the arm bundle's catalog: its two-tower's item vocabulary, else the item
table ``data/items.parquet``). The log is written on the wall clock while the loop's ingest moves
impression rows to simulated dates, so its rows are found by ``request_id``: the requests of the
experiment's validated impression rows, plus every other logged request of the same ``(arm,
model_version)`` in the wall-clock span of those (the errors, which have no impression). Rules
(:class:`ABConfig`): challenger p99 / champion p99 > ``latency_p99_max_ratio``, both p99s first
raised to ``latency_floor_ms`` (so 2 ms vs 5 ms does not fire); error or degraded rate above the
champion's by more than ``max_error_rate_increase`` / ``max_degraded_rate_increase``; coverage
ratio challenger / champion below ``min_coverage_ratio``, both coverages rarefied to the smaller
arm's impression count (the expected number of distinct items in a random sample of that many
impressions) because a 10% arm shows fewer distinct items by sample size alone. These are plain
comparisons of point estimates, not always-valid tests: they are judged only once both arms
reached ``min_impressions`` (before that: verdict ``pending``); an arm with fewer than
``service_min_requests`` logged requests (or no request log at all, e.g. logs imported from
elsewhere) gives verdict ``no data``, never a fail.

**OPE beside A/B** (:func:`ope_prediction`, :func:`true_ctr`): every decision carries
``predicted`` {arm: OPE or null}: what off-policy evaluation said about the arm's bundle before
the test, read from the gate's reports (``reports/ope/date=D/bundle-<v>.json``, D = the day the
gate made the challenger the challenger, ``reports/gates/date=D.json``; else the newest such
report of the bundle dated on or before the experiment's start): ``snips``, ``ci_low``,
``ci_high``, ``dr``, ``date``, ``source``. SNIPS estimates the mean reward per logged item-slot
(one impression) with reward 1 for a click on it: clicks per impression, the same unit as the
A/B CTR (distinct clicked slots / impressions), so the numbers are used as they are (factor 1).
Caveats stated in the output: OPE's target is the bundle's served policy (the bundle through the
serving pipeline, :func:`pipelines.release.bundle_ope.evaluate_served_bundle`; reports written
before it: the two-tower softmax policy) on a sample of the OPE day's requests, with slates as long
as that day's logs, and a per-impression CTR depends on the slate length through position bias. ``truth`` {arm: float or null}: on simulated data only (``truth/world.json``), the mean
true click probability (``simulate.true_click_prob``) of the impressions the arm served in the
experiment's rows: the arm's expected CTR, which the measured CTR estimates.

Actions: ``promote`` (the challenger's version becomes ``champion`` through
``registry.promote(..., expected=<old champion>)``; the ``challenger`` alias is cleared: the
old champion keeps no alias and is recorded in the decision), ``rollback`` (challenger alias
deleted when it still points at this experiment's challenger; champion untouched), ``stop``
(duration over without a significant difference: challenger alias cleared, nothing promoted),
``continue``. While the champion is pinned by hand (:mod:`pipelines.release.operations`) a
``promote`` is recorded as ``continue`` with the pin in the reason: the experiment keeps running
and promotes on the first look after ``unpin``. Every decision — arm table, looks, p-value, intervals, guardrails, config,
aliases after — is written to ``reports/ab/<experiment>/date=D.json`` and logged to MLflow
(experiment ``recloop-ab``: params, metrics, ``decision.json``).

**Restarts.** No running state is kept: each analysis recomputes every look from the validated
logs (rows de-duplicated by ``event_id``), so re-running a date gives the same numbers and
decision and nothing is counted twice; alias moves are compare-and-set, so re-applying a
decision is a no-op.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core import fmt, layout, schema
from pipelines.core.ab_decisions import ab_decision_dates, read_ab_decision, write_ab_decision
from pipelines.core.gate_decisions import gate_decision_dates, read_gate_decision
from pipelines.core.ope_reports import ope_report_dates, read_ope_report
from pipelines.core.settings import Settings, env_float, env_int
from pipelines.core.validated import validated_dates, validated_files

log = logging.getLogger("recloop.ab")

AB_EXPERIMENT = "recloop-ab"
ARMS = ("champion", "challenger")  # as serving.bundle.ARMS (not imported: it pulls in FAISS)
PROMOTE, CONTINUE, ROLLBACK, STOP = "promote", "continue", "rollback", "stop"
TERMINAL = (PROMOTE, ROLLBACK, STOP)
_COLUMNS = [
    "event_id", "user_id", "item_id", "event", "request_id", "position", "arm", "model_version",
]  # fmt: skip
_NAME = re.compile(r"^(\d+)-vs-(\d+)$")


@dataclass(frozen=True)
class ABConfig:
    """The stated design of every experiment (recorded in each decision)."""

    alpha: float = 0.05
    """Type-I error of the mSPRT over all looks (two-sided)."""
    tau: float = 0.01
    """Standard deviation of the normal mixing distribution on the CTR difference (absolute)."""
    conversion_tau: float = 0.002
    """Same, for the conversion (purchases per impression) guardrail."""
    min_impressions: int = 2_000
    """Minimum impressions in *each* arm before promote/stop can be decided."""
    max_days: int = 14
    """Maximum duration: on day ``max_days`` (day 1 = start) an undecided experiment stops."""
    ctr_max_drop: float = 0.0
    """Guardrail: roll back when the challenger's CTR is below the champion's by more than this
    (absolute) with confidence 1 − alpha (upper end of the always-valid interval < −drop)."""
    conversion_max_drop: float = 0.001
    """Guardrail: same for conversion (purchases per impression)."""
    latency_p99_max_ratio: float = 1.5
    """Service guardrail: roll back when challenger p99 / champion p99 exceeds this."""
    latency_floor_ms: float = 25.0
    """Both p99s are raised to at least this (ms) before the ratio: tiny latencies never fire."""
    max_error_rate_increase: float = 0.01
    """Service guardrail: challenger error rate − champion's above this (absolute) → rollback."""
    max_degraded_rate_increase: float = 0.05
    """Service guardrail: same for the degraded (fallback) rate."""
    min_coverage_ratio: float = 0.25
    """Service guardrail: challenger coverage / champion coverage below this → rollback. A
    collapse, not a shift: a challenger that is better because it concentrates on what users
    like shows fewer distinct items than a champion spread over the tail (bench_loop's better
    scenario: 0.45 of an inverted champion's coverage while +0.02 true CTR), so the default is
    a quarter, not a half."""
    service_min_requests: int = 50
    """Logged requests an arm needs before its service guardrails are judged (else ``no data``)."""

    def __post_init__(self) -> None:
        checks = [
            (0 < self.alpha < 1, "alpha must be in (0, 1)"),
            (self.tau > 0 and self.conversion_tau > 0, "tau and conversion_tau must be > 0"),
            (self.min_impressions >= 1, "min_impressions must be >= 1"),
            (self.max_days >= 1, "max_days must be >= 1"),
            (self.ctr_max_drop >= 0 and self.conversion_max_drop >= 0, "max drops must be >= 0"),
            (self.latency_p99_max_ratio >= 1, "latency_p99_max_ratio must be >= 1"),
            (self.latency_floor_ms >= 0, "latency_floor_ms must be >= 0"),
            (
                self.max_error_rate_increase >= 0 and self.max_degraded_rate_increase >= 0,
                "max rate increases must be >= 0",
            ),
            (0 <= self.min_coverage_ratio <= 1, "min_coverage_ratio must be in [0, 1]"),
            (self.service_min_requests >= 1, "service_min_requests must be >= 1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"ABConfig: {msg}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ABConfig:
        """Defaults overridden by ``RECLOOP_AB_<FIELD>`` variables (e.g. ``RECLOOP_AB_ALPHA``,
        ``RECLOOP_AB_MIN_IMPRESSIONS``, ``RECLOOP_AB_MAX_DAYS``); a bad value names the variable."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            read = env_int if f.type in (int, "int") else env_float
            value = read(env, f"RECLOOP_AB_{f.name.upper()}")
            if value is not None:
                values[f.name] = value
        return cls(**values)


@dataclass
class Decision:
    """One experiment's decision on one date (see the module docstring for the fields' rules)."""

    experiment: str
    date: str
    champion_version: str
    challenger_version: str
    action: str
    reason: str
    start_date: str | None = None
    day: int = 0
    arms: list[dict[str, Any]] = field(default_factory=list)
    diff: dict[str, Any] = field(default_factory=dict)
    looks: list[dict[str, Any]] = field(default_factory=list)
    guardrails: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    applied: str = ""
    aliases: dict[str, str | None] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    service: dict[str, Any] = field(default_factory=dict)
    """Per-arm service numbers (:func:`service_stats`) behind the service guardrails."""
    predicted: dict[str, Any] = field(default_factory=dict)
    """{arm: OPE dict or None} (:func:`ope_prediction`)."""
    truth: dict[str, Any] = field(default_factory=dict)
    """{arm: true expected CTR or None} (:func:`true_ctr`)."""

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


# --- naming -----------------------------------------------------------------------------------


def experiment_name(champion_version: str | int, challenger_version: str | int) -> str:
    """``"<champion>-vs-<challenger>"`` (bundle version numbers)."""
    return f"{champion_version}-vs-{challenger_version}"


def parse_experiment(experiment: str) -> tuple[str, str]:
    """``(champion version, challenger version)`` of ``"C-vs-H"``; ValueError otherwise."""
    m = _NAME.match(str(experiment))
    if not m:
        raise ValueError(
            f"experiment {experiment!r}: expected '<champion version>-vs-<challenger version>', "
            "e.g. '3-vs-5' (serving_bundle version numbers)"
        )
    return m.group(1), m.group(2)


def current_experiment(settings: Settings) -> str | None:
    """The experiment the registry aliases define now, or None without a distinct challenger."""
    from pipelines.release import registry

    champ = registry.get_alias(settings, "champion")
    chall = registry.get_alias(settings, "challenger")
    if champ is None or chall is None or champ == chall:
        return None
    return experiment_name(champ, chall)


def report_path(settings: Settings, experiment: str, date: str | dt.date) -> Path:
    """``reports/ab/<experiment>/date=D.json``."""
    parse_experiment(experiment)
    return layout.ab_report_path(settings, experiment, date)


# --- reading the logs -------------------------------------------------------------------------


def _read_day(settings: Settings, day: dt.date) -> pd.DataFrame:
    import pyarrow.parquet as pq

    frames = []
    for f in validated_files(settings, day, day):
        try:
            frames.append(pq.read_table(f, columns=_COLUMNS).to_pandas())
        except (KeyError, ValueError, OSError) as exc:
            raise ValueError(f"{f}: not a validated interactions file ({exc})") from exc
    if not frames:
        return pd.DataFrame(columns=_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def experiment_rows(
    settings: Settings, experiment: str, first: str | dt.date | None, last: str | dt.date
) -> pd.DataFrame:
    """The experiment's validated rows of days ``first..last`` (None: from the first partition)
    with a ``date`` column; de-duplicated by ``event_id``; columns ``_COLUMNS + [date]``."""
    champ, chall = parse_experiment(experiment)
    frames = []
    for day in validated_dates(settings, first, last):
        f = _read_day(settings, day)
        keep = ((f["arm"] == "champion") & (f["model_version"] == f"bundle-{champ}")) | (
            (f["arm"] == "challenger") & (f["model_version"] == f"bundle-{chall}")
        )
        f = f[keep.fillna(False).astype(bool)].copy()
        f["date"] = day
        frames.append(f)
    if not frames:
        return pd.DataFrame(columns=[*_COLUMNS, "date"])
    out = pd.concat(frames, ignore_index=True)
    return out.drop_duplicates("event_id", keep="first").reset_index(drop=True)


def start_date(settings: Settings, experiment: str, last: str | dt.date) -> dt.date | None:
    """First validated day up to ``last`` with a challenger row of ``experiment`` (None: none)."""
    rows = experiment_rows(settings, experiment, None, last)
    chall = rows[rows["arm"] == "challenger"]
    return None if chall.empty else min(chall["date"])


# --- statistics -------------------------------------------------------------------------------


def wilson(successes: float, n: float, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion; ``(nan, nan)`` when ``n == 0``."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)


def ratio_variance(num: np.ndarray, den: np.ndarray) -> float:
    """Delta-method variance of ``sum(num) / sum(den)`` with the rows (users) as independent units.

    ``num``, ``den``: per-user sums ``(U,)`` (e.g. clicks and impressions: the variance of an arm's
    CTR, clustered by user). NaN when ``sum(den) <= 0`` or fewer than 2 users.
    """
    n_tot = float(den.sum())
    units = len(den)
    if n_tot <= 0 or units < 2:
        return float("nan")
    r = float(num.sum()) / n_tot
    resid = num - r * den
    return float((resid**2).sum() / n_tot**2 * units / (units - 1))


def _per_user(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, user): impressions, clicks (distinct slots), purchases (distinct purchased
    (request, item) pairs: a repeated purchase row counts once)."""
    imp = rows[rows["event"] == "impression"]
    clk = rows[rows["event"] == "click"].drop_duplicates(["arm", "request_id", "position"])
    buy = rows[rows["event"] == "purchase"].drop_duplicates(["arm", "request_id", "item_id"])
    parts = {
        "impressions": imp.groupby(["arm", "user_id"]).size(),
        "clicks": clk.groupby(["arm", "user_id"]).size(),
        "purchases": buy.groupby(["arm", "user_id"]).size(),
    }
    out = pd.DataFrame(parts).fillna(0).astype("int64")
    return out[out["impressions"] > 0]  # feedback without an impression is not in the ratio


def summarize(rows: pd.DataFrame) -> pd.DataFrame:
    """Per-arm table (index ``arm`` in :data:`ARMS` order) of experiment rows (see module doc)."""
    per_user = _per_user(rows) if len(rows) else None
    out = []
    for arm in ARMS:
        u = (
            per_user.xs(arm, level="arm")
            if per_user is not None and arm in per_user.index.get_level_values("arm")
            else pd.DataFrame({"impressions": [], "clicks": [], "purchases": []})
        )
        n = int(u["impressions"].sum())
        c = int(u["clicks"].sum())
        b = int(u["purchases"].sum())
        lo, hi = wilson(c, n)
        imp, clk, buy = (u[k].to_numpy(float) for k in ("impressions", "clicks", "purchases"))
        out.append(
            {
                "arm": arm,
                "impressions": n,
                "clicks": c,
                "ctr": c / n if n else float("nan"),
                "ctr_lo": lo,
                "ctr_hi": hi,
                "purchases": b,
                "conversion": b / n if n else float("nan"),
                "users": len(u),
                "ctr_var": ratio_variance(clk, imp),
                "conv_var": ratio_variance(buy, imp),
            }
        )
    return pd.DataFrame(out).set_index("arm")


def arm_stats(
    settings: Settings, experiment: str, first: str | dt.date, last: str | dt.date
) -> pd.DataFrame:
    """Per-arm table of ``experiment`` over validated days ``first..last`` (both included).

    Index ``arm`` (champion, challenger); columns ``impressions, clicks, ctr, ctr_lo, ctr_hi``
    (Wilson 95%), ``purchases, conversion`` (purchases / impression), ``users``, ``ctr_var``,
    ``conv_var`` (user-clustered variances of the two ratios)."""
    return summarize(experiment_rows(settings, experiment, first, last))


def msprt_lambda(delta: Any, var: Any, tau: float) -> Any:
    """Mixture likelihood ratio Λ for an observed difference ``delta`` with variance ``var``
    (arrays broadcast); NaN where ``var`` is not positive."""
    delta = np.asarray(delta, dtype=float)
    var = np.asarray(var, dtype=float)
    t2 = tau * tau
    with np.errstate(invalid="ignore", divide="ignore"):
        log_l = 0.5 * np.log(var / (var + t2)) + t2 * delta**2 / (2 * var * (var + t2))
        return np.where(var > 0, np.exp(np.minimum(log_l, 700.0)), np.nan)


def msprt_halfwidth(var: Any, tau: float, alpha: float) -> Any:
    """Half-width of the always-valid (1 − alpha) interval for the difference (one look)."""
    var = np.asarray(var, dtype=float)
    t2 = tau * tau
    with np.errstate(invalid="ignore", divide="ignore"):
        inner = 2 * var * (var + t2) / t2 * (math.log(1 / alpha) + 0.5 * np.log((var + t2) / var))
        return np.where(var > 0, np.sqrt(inner), np.nan)


def always_valid(
    deltas: list[float], variances: list[float], tau: float, alpha: float
) -> list[dict[str, float]]:
    """Per look: ``lambda``, ``p_value`` (running min of 1/Λ, capped at 1) and the running
    intersection ``lower, upper`` of the confidence sequence. Looks with no variance yet keep
    the previous values (p = 1, interval (−inf, inf) before the first)."""
    p, lo, hi = 1.0, -math.inf, math.inf
    out = []
    for d, v in zip(deltas, variances, strict=True):
        lam = float(msprt_lambda(d, v, tau))
        if math.isfinite(lam) and math.isfinite(d):
            p = min(p, 1.0 / lam) if lam > 0 else p
            h = float(msprt_halfwidth(v, tau, alpha))
            lo, hi = max(lo, d - h), min(hi, d + h)
        out.append({"lambda": lam, "p_value": min(p, 1.0), "lower": lo, "upper": hi})
    return out


# --- service guardrails -----------------------------------------------------------------------

_REQUEST_COLUMNS = ["request_id", "ts", "arm", "model_version", "status", "latency_ms",
                    "degraded", "fallbacks"]  # fmt: skip
NO_DATA, PENDING = "no data", "pending"


def request_log_dir(settings: Settings) -> Path:
    """``RECLOOP_HOME/serving/requests`` (as ``serving.logging.requests_dir``)."""
    return layout.requests_dir(settings)


def read_request_log(settings: Settings) -> pd.DataFrame:
    """Every partition of the service's request log (columns ``_REQUEST_COLUMNS``), de-duplicated
    by ``request_id``; empty when there is no log."""
    import pyarrow.parquet as pq

    root = request_log_dir(settings)
    frames = []
    for day in schema.partition_dates(root) if root.exists() else []:
        for f in sorted(schema.partition_dir(root, day).glob("*.parquet")):
            try:
                frames.append(pq.read_table(f, columns=_REQUEST_COLUMNS).to_pandas())
            except (KeyError, ValueError, OSError) as exc:
                raise ValueError(f"{f}: not a request-log file ({exc})") from exc
    if not frames:
        return pd.DataFrame(columns=_REQUEST_COLUMNS)
    out = pd.concat(frames, ignore_index=True)
    return out.drop_duplicates("request_id", keep="first").reset_index(drop=True)


def experiment_requests(
    log_rows: pd.DataFrame, experiment: str, rows: pd.DataFrame
) -> pd.DataFrame:
    """The request-log rows of ``experiment``: those whose ``request_id`` has an impression in the
    experiment's ``rows``, plus every logged request of the same (arm, model_version) between the
    first and last of those (wall clock: the failed requests, which have no impression). Empty
    when none of the experiment's requests is in the log."""
    champ, chall = parse_experiment(experiment)
    ids = set(rows.loc[rows["event"] == "impression", "request_id"].dropna())
    if log_rows.empty or not ids:
        return log_rows.iloc[0:0]
    matched = log_rows["request_id"].isin(ids)
    if not matched.any():
        return log_rows.iloc[0:0]
    ts = pd.to_datetime(log_rows["ts"], utc=True)
    lo, hi = ts[matched].min(), ts[matched].max()
    ours = ((log_rows["arm"] == "champion") & (log_rows["model_version"] == f"bundle-{champ}")) | (
        (log_rows["arm"] == "challenger") & (log_rows["model_version"] == f"bundle-{chall}")
    )
    keep = matched | (ours.fillna(False).astype(bool) & (ts >= lo) & (ts <= hi))
    return log_rows[keep].reset_index(drop=True)


def rarefied_distinct(counts: np.ndarray, n: int) -> float:
    """Expected number of distinct items in a uniform sample of ``n`` of the ``N = sum(counts)``
    impressions (without replacement), item i shown ``counts[i]`` times:
    ``sum_i 1 − C(N − c_i, n) / C(N, n)``. ``n >= N``: the number of items."""
    from scipy.special import gammaln

    c = np.asarray(counts, dtype=float)
    c = c[c > 0]
    total = c.sum()
    if n <= 0 or total <= 0:
        return 0.0
    if n >= total:
        return float(len(c))
    rest = total - c
    with np.errstate(invalid="ignore"):
        log_p = (gammaln(rest + 1) - gammaln(rest - n + 1) - gammaln(total + 1)
                 + gammaln(total - n + 1))  # fmt: skip
    p_missing = np.where(rest >= n, np.exp(np.nan_to_num(log_p, nan=-np.inf)), 0.0)
    return float((1.0 - p_missing).sum())


def catalog_size(settings: Settings, version: str) -> tuple[int | None, str]:
    """``(items, source)`` of bundle ``version``'s catalog: its two-tower item vocabulary, else
    the item table ``data/items.parquet``; ``(None, why)`` when neither can be read."""
    try:
        from pipelines.core.vocab import Vocab
        from pipelines.release import registry

        folder = registry.load_bundle(settings, version)["paths"]["two_tower"]
        return len(Vocab.load(Path(folder) / "items.json")), f"bundle-{version} two-tower items"
    except Exception as exc:  # noqa: BLE001 - any unreadable bundle falls back to the item table
        log.debug("catalog of bundle-%s from its two-tower failed: %r", version, exc)
    path = layout.attributes_path(settings, "items")
    if path.exists():
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows), str(path)
    return None, "no bundle item vocabulary and no item table"


def service_stats(
    settings: Settings, experiment: str, rows: pd.DataFrame, log_rows: pd.DataFrame | None = None
) -> dict[str, dict[str, Any]]:
    """Per arm: ``requests`` (logged), ``errors``, ``error_rate``, ``latency_p50_ms``,
    ``latency_p99_ms``, ``degraded_rate``, ``cold_start_rate`` (None without logged requests),
    ``impressions``, ``distinct_items``, ``catalog``, ``catalog_source``, ``coverage`` (distinct /
    catalog), ``distinct_items_rarefied`` / ``coverage_rarefied`` (at the smaller arm's
    impression count). ``log_rows``: the request log (default: read from the workspace)."""
    champ, chall = parse_experiment(experiment)
    log_rows = read_request_log(settings) if log_rows is None else log_rows
    req = experiment_requests(log_rows, experiment, rows)
    imp = rows[rows["event"] == "impression"]
    counts = {arm: imp.loc[imp["arm"] == arm, "item_id"].value_counts().to_numpy() for arm in ARMS}
    n_min = int(min(c.sum() for c in counts.values()))
    out: dict[str, dict[str, Any]] = {}
    for arm, version in zip(ARMS, (champ, chall), strict=True):
        r = req[req["arm"] == arm]
        n = len(r)
        ok = r[r["status"] == 200]
        lat = r["latency_ms"].to_numpy(float)
        fb = ok["fallbacks"].fillna("").astype(str)
        catalog, source = catalog_size(settings, version)
        distinct = int(len(counts[arm]))
        rare = rarefied_distinct(counts[arm], n_min)
        out[arm] = {
            "requests": n,
            "errors": int((r["status"] != 200).sum()),
            "error_rate": float((r["status"] != 200).mean()) if n else None,
            "latency_p50_ms": float(np.percentile(lat, 50)) if n else None,
            "latency_p99_ms": float(np.percentile(lat, 99)) if n else None,
            "degraded_rate": float(ok["degraded"].astype(bool).mean()) if len(ok) else None,
            "cold_start_rate": float(fb.str.contains("cold_start").mean()) if len(ok) else None,
            "impressions": int(counts[arm].sum()),
            "distinct_items": distinct,
            "catalog": catalog,
            "catalog_source": source,
            "coverage": distinct / catalog if catalog else None,
            "distinct_items_rarefied": rare,
            "coverage_rarefied": rare / catalog if catalog else None,
        }
    return out


def service_guardrails(
    stats: dict[str, dict[str, Any]] | None, cfg: ABConfig, sample_met: bool
) -> list[dict[str, Any]]:
    """The four service guardrails (module docstring) from :func:`service_stats`; each entry has
    ``name, kind="service", champion, challenger`` (per-arm values), ``value`` (the compared
    number), ``threshold``, ``verdict`` (pass / fail / pending / no data) and ``note``."""
    stats = stats or {}
    a, b = stats.get("champion") or {}, stats.get("challenger") or {}
    logged = min(a.get("requests") or 0, b.get("requests") or 0)
    floor = cfg.latency_floor_ms

    def ratio_p99() -> float:
        return max(b["latency_p99_ms"], floor) / max(a["latency_p99_ms"], floor, 1e-9)

    def cov(x: dict[str, Any]) -> float | None:
        both = a.get("catalog") and b.get("catalog")
        return x.get("coverage_rarefied") if both else x.get("distinct_items_rarefied")

    def cov_ratio() -> float:
        ca, cb = cov(a), cov(b)
        return float("inf") if not ca else float(cb) / float(ca)

    specs = [
        ("latency_p99", "latency_p99_ms", True, ratio_p99, cfg.latency_p99_max_ratio, "ratio",
         f"challenger / champion p99 (ms), each floored at {floor:g} ms; fail when > threshold"),
        ("error_rate", "error_rate", True, lambda: b["error_rate"] - a["error_rate"],
         cfg.max_error_rate_increase, "increase",
         "non-200 share of routed requests, challenger − champion; fail when > threshold"),
        ("degraded_rate", "degraded_rate", True, lambda: b["degraded_rate"] - a["degraded_rate"],
         cfg.max_degraded_rate_increase, "increase",
         "share of 200 answers degraded (fallback), challenger − champion; fail when > threshold"),
        ("catalog_coverage", "coverage_rarefied", False, cov_ratio, cfg.min_coverage_ratio,
         "min ratio", "challenger / champion coverage at equal impressions (rarefied); "
         "fail when < threshold"),
    ]  # fmt: skip
    out = []
    for name, key, from_log, value, threshold, _, note in specs:
        g: dict[str, Any] = {"name": name, "kind": "service", "champion": a.get(key),
                             "challenger": b.get(key), "value": None, "threshold": threshold,
                             "verdict": NO_DATA, "note": note}  # fmt: skip
        if key == "coverage_rarefied" and g["champion"] is None:
            g["champion"], g["challenger"] = (
                a.get("distinct_items_rarefied"),
                b.get("distinct_items_rarefied"),
            )
            g["note"] += " (catalog size unknown: distinct items compared)"
        have = (
            logged >= cfg.service_min_requests and None not in (a.get(key), b.get(key))
            if from_log
            else bool(a.get("impressions")) and bool(b.get("impressions"))
        )
        if not have:
            if from_log:
                g["note"] += (
                    f"; no data: {logged} logged requests in the smaller arm "
                    f"(< {cfg.service_min_requests}) or no request log"
                )
            out.append(g)
            continue
        g["value"] = float(value())
        if not sample_met:
            g["verdict"] = PENDING
            g["note"] += "; pending: judged once both arms reach min_impressions"
        elif name == "catalog_coverage":
            g["verdict"] = "fail" if g["value"] < threshold else "pass"
        else:
            g["verdict"] = "fail" if g["value"] > threshold else "pass"
        out.append(g)
    return out


# --- OPE beside A/B ---------------------------------------------------------------------------


def _ope_entry(settings: Settings, day: dt.date, version: str) -> dict[str, Any] | None:
    """The contract's OPE dict from the OPE report of bundle ``version`` on ``day`` (None: no
    report, an unreadable one (logged), or no SNIPS)."""
    label = f"bundle-{version}"
    try:
        rep = read_ope_report(settings, day, label)
    except ValueError as exc:
        log.warning("%s", exc)
        return None
    if rep is None:
        return None
    est = rep.get("estimates") or {}
    sn, dr = est.get("snips") or {}, est.get("dr") or {}
    if sn.get("estimate") is None:
        return None

    def num(x: Any) -> float | None:
        return None if x is None else float(x)

    return {
        "snips": float(sn["estimate"]),
        "ci_low": num(sn.get("ci_low")),
        "ci_high": num(sn.get("ci_high")),
        "dr": num(dr.get("estimate")),
        "date": str(rep.get("date") or day.isoformat()),
        "source": str(layout.ope_report_path(settings, day, label)),
    }


def gated_on(settings: Settings, version: str, last: dt.date) -> dt.date | None:
    """The first day through ``last`` whose gate decision (``reports/gates/date=D.json``) made
    bundle ``version`` the challenger (or champion); None when no such report."""
    for day in gate_decision_dates(settings):
        if day > last:
            break
        try:
            rec = read_gate_decision(settings, day)
        except ValueError:  # an unreadable decision made nobody challenger
            continue
        if rec is not None and str(rec.get("candidate_version")) == str(version) and rec.get("action") in (
            "challenger", "champion",
        ):  # fmt: skip
            return day
    return None


def ope_prediction(
    settings: Settings, experiment: str, before: str | dt.date
) -> dict[str, dict[str, Any] | None]:
    """{arm: OPE dict or None}: the gate's OPE report of each arm's bundle (module docstring),
    from the day the challenger was gated, else the newest dated on or before ``before``."""
    champ, chall = parse_experiment(experiment)
    last = schema.parse_date(before)
    gate_day = gated_on(settings, chall, last)
    days = [d for d in ope_report_dates(settings) if d <= last]
    out: dict[str, dict[str, Any] | None] = {}
    for arm, version in zip(ARMS, (champ, chall), strict=True):
        order = ([gate_day] if gate_day else []) + sorted(days, reverse=True)
        out[arm] = None
        for day in order:
            if (entry := _ope_entry(settings, day, version)) is not None:
                out[arm] = entry
                break
    return out


def true_ctr(
    settings: Settings, rows: pd.DataFrame, last: str | dt.date
) -> dict[str, float | None]:
    """{arm: mean true click probability of the arm's impressions in ``rows``} on simulated data
    (``truth/world.json``); all None on real data or when an id is not the simulator's."""
    out: dict[str, float | None] = {arm: None for arm in ARMS}
    if not layout.world_path(settings).exists():
        return out
    from pipelines.data import simulate

    world = simulate.load_world(settings)
    try:
        world.extend_to(schema.parse_date(last))
    except ValueError as exc:
        log.warning("truth not computed: %s", exc)
        return out
    imp = rows[rows["event"] == "impression"]
    for arm in ARMS:
        r = imp[imp["arm"] == arm]
        if r.empty:
            continue
        try:
            p = simulate.true_click_prob(
                world, r["user_id"].to_numpy(), r["item_id"].to_numpy(),
                r["position"].to_numpy(np.int64),
            )  # fmt: skip
        except ValueError as exc:
            log.warning("truth of arm %s not computed: %s", arm, exc)
            continue
        out[arm] = float(p.mean())
    return out


# --- decision ---------------------------------------------------------------------------------


def daily_looks(rows: pd.DataFrame, days: list[dt.date], cfg: ABConfig) -> list[dict[str, Any]]:
    """Cumulative per-arm numbers and both sequential tests at each daily look.

    ``rows``: the experiment's event rows (:func:`experiment_rows`: both arms, a ``date`` column);
    ``days``: the look dates, ascending. Returns one dict per day: impressions and CTR per arm
    (cumulative through that day), ``ctr_diff`` / ``conversion_diff`` (challenger - champion) and
    the always-valid test of each (:func:`always_valid`: ``lambda``, ``p_value``, ``lower``,
    ``upper``; the conversion ones prefixed ``conversion_``). What :func:`decide` reads.
    """
    d_ctr, v_ctr, d_conv, v_conv, out = [], [], [], [], []
    for day in days:
        t = summarize(rows[rows["date"] <= day])
        a, b = t.loc["champion"], t.loc["challenger"]
        d_ctr.append(float(b["ctr"] - a["ctr"]))
        v_ctr.append(float(b["ctr_var"] + a["ctr_var"]))
        d_conv.append(float(b["conversion"] - a["conversion"]))
        v_conv.append(float(b["conv_var"] + a["conv_var"]))
        out.append(
            {
                "date": day.isoformat(),
                "impressions_champion": int(a["impressions"]),
                "impressions_challenger": int(b["impressions"]),
                "ctr_champion": float(a["ctr"]),
                "ctr_challenger": float(b["ctr"]),
                "ctr_diff": d_ctr[-1],
                "conversion_diff": d_conv[-1],
            }
        )
    ctr = always_valid(d_ctr, v_ctr, cfg.tau, cfg.alpha)
    conv = always_valid(d_conv, v_conv, cfg.conversion_tau, cfg.alpha)
    for look, c, v in zip(out, ctr, conv, strict=True):
        look.update({k: c[k] for k in ("lambda", "p_value", "lower", "upper")})
        look.update({f"conversion_{k}": v[k] for k in ("p_value", "lower", "upper")})
    return out


def decide(
    looks: list[dict[str, Any]],
    day: int,
    cfg: ABConfig,
    service: dict[str, dict[str, Any]] | None = None,
) -> tuple[str, str, list[dict]]:
    """Pure rule (module docstring, steps 2-7) on the looks so far, the experiment's day number
    (1 = start) and the per-arm service numbers (:func:`service_stats`; None: no request log,
    the service guardrails say ``no data``): ``(action, reason, guardrails)``."""
    last = looks[-1]
    guardrails = [
        {
            "name": "ctr_drop",
            "value": last["upper"],
            "threshold": -cfg.ctr_max_drop,
            "verdict": "fail" if last["upper"] < -cfg.ctr_max_drop else "pass",
            "note": "upper end of the always-valid CTR-difference interval",
        },
        {
            "name": "conversion_drop",
            "value": last["conversion_upper"],
            "threshold": -cfg.conversion_max_drop,
            "verdict": "fail" if last["conversion_upper"] < -cfg.conversion_max_drop else "pass",
            "note": "upper end of the always-valid conversion-difference interval",
        },
    ]
    failed = [g["name"] for g in guardrails if g["verdict"] == "fail"]
    n_min = min(last["impressions_champion"], last["impressions_challenger"])
    svc = service_guardrails(service, cfg, sample_met=n_min >= cfg.min_impressions)
    guardrails += svc
    if failed:
        return ROLLBACK, f"guardrail failed: {', '.join(failed)}", guardrails
    over = day >= cfg.max_days
    if n_min < cfg.min_impressions:
        if over:
            return STOP, f"max duration {cfg.max_days} days reached below the minimum sample " \
                f"({n_min} < {cfg.min_impressions} impressions in an arm)", guardrails  # fmt: skip
        return CONTINUE, f"minimum sample not reached ({n_min} < {cfg.min_impressions})", guardrails
    failed = [f"{g['name']} ({fmt.number(g['value'], '.4g')} vs {g['threshold']:g})"
              for g in svc if g["verdict"] == "fail"]  # fmt: skip
    if failed:
        return ROLLBACK, f"service guardrail failed: {', '.join(failed)}", guardrails
    if last["p_value"] <= cfg.alpha and last["lower"] > 0:
        return PROMOTE, (
            f"challenger better: p={last['p_value']:.4g} <= alpha={cfg.alpha}, CTR diff "
            f"{last['ctr_diff']:+.4f} in [{last['lower']:+.4f}, {last['upper']:+.4f}]"
        ), guardrails  # fmt: skip
    if over:
        return STOP, (
            f"max duration {cfg.max_days} days reached without a significant improvement "
            f"(p={last['p_value']:.4g})"
        ), guardrails  # fmt: skip
    return (
        CONTINUE,
        f"no decision yet (p={last['p_value']:.4g}, day {day}/{cfg.max_days})",
        guardrails,
    )


def history(settings: Settings, experiment: str) -> list[dict[str, Any]]:
    """Every recorded decision of ``experiment``, by date (``reports/ab/<experiment>/``,
    :mod:`pipelines.core.ab_decisions`); ``ValueError`` naming an unreadable file."""
    parse_experiment(experiment)
    days = ab_decision_dates(settings, experiment)
    return [r for d in days if (r := read_ab_decision(settings, experiment, d)) is not None]


def _concluded(settings: Settings, experiment: str, day: dt.date) -> dict[str, Any] | None:
    """The earliest terminal decision recorded before ``day``, if any."""
    for rec in history(settings, experiment):
        if rec["date"] < day.isoformat() and rec["action"] in TERMINAL:
            return rec
    return None


def _apply(settings: Settings, action: str, champ: str, chall: str) -> str:
    """Move the aliases for ``action`` (compare-and-set; re-applying is a no-op); what happened."""
    from mlflow.exceptions import MlflowException

    from pipelines.release import registry

    if action == CONTINUE:
        return "nothing to apply"
    notes = []
    if action == PROMOTE:
        current = registry.get_alias(settings, "champion")
        if current == chall:
            notes.append(f"champion already version {chall}")
        elif registry.promote(settings, chall, "champion", expected=champ):
            notes.append(f"champion {champ} -> {chall}")
        else:
            return f"not promoted: champion moved to {current} meanwhile (expected {champ})"
    with registry.registry_lock(settings):
        if registry.get_alias(settings, "challenger") == chall:
            try:
                registry.client(settings).delete_registered_model_alias(
                    registry.BUNDLE, "challenger"
                )
                notes.append(f"challenger alias (version {chall}) cleared")
            except MlflowException as exc:
                notes.append(f"challenger alias not cleared: {exc}")
        else:
            notes.append("challenger alias no longer on this experiment's challenger")
    return "; ".join(notes)


def _log_to_mlflow(settings: Settings, rec: dict[str, Any]) -> str:
    import tempfile

    from pipelines.release import registry

    metrics: dict[str, Any] = {}
    for arm in rec["arms"]:
        for k in ("impressions", "clicks", "ctr", "ctr_lo", "ctr_hi", "purchases", "conversion"):
            metrics[f"{arm['arm']}.{k}"] = arm[k]
        metrics[f"{arm['arm']}.users"] = arm["users"]
    metrics.update({f"diff.{k}": v for k, v in rec["diff"].items() if isinstance(v, float)})
    metrics["day"] = rec["day"]
    for g in rec["guardrails"]:
        if g.get("kind") == "service":
            for side in ("champion", "challenger", "value"):
                metrics[f"guardrail.{g['name']}.{side}"] = g.get(side)
    for arm in ARMS:
        pred = (rec.get("predicted") or {}).get(arm) or {}
        metrics[f"{arm}.ope_snips"] = pred.get("snips")
        metrics[f"{arm}.true_ctr"] = (rec.get("truth") or {}).get(arm)
    params = {
        "experiment": rec["experiment"],
        "date": rec["date"],
        "action": rec["action"],
        "champion_version": rec["champion_version"],
        "challenger_version": rec["challenger_version"],
        "start_date": rec["start_date"],
        **{f"config.{k}": v for k, v in rec["config"].items()},
    }
    tags = {
        "recloop.ab_experiment": rec["experiment"],
        "recloop.logical_date": rec["date"],
        "recloop.action": rec["action"],
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "decision.json"
        path.write_text(json.dumps(rec, indent=2, sort_keys=True, default=str))
        return registry.log_run(
            settings, AB_EXPERIMENT, f"ab-{rec['experiment']}-{rec['date']}", params, metrics,
            tags, {"": path},
        )  # fmt: skip


def analyze(
    settings: Settings,
    experiment: str,
    date: str | dt.date,
    config: ABConfig | None = None,
    apply: bool = True,
) -> Decision:
    """Analyse ``experiment`` on the validated logs through ``date``, decide, apply (unless
    ``apply`` is False), record to ``reports/ab/`` and MLflow; the :class:`Decision`."""
    from pipelines.release import registry
    from pipelines.release.operations import pin_note, pinned_champion

    cfg = config or ABConfig.from_env()
    champ, chall = parse_experiment(experiment)
    day = schema.parse_date(date)
    done = _concluded(settings, experiment, day)
    start = start_date(settings, experiment, day)
    dec = Decision(experiment, day.isoformat(), champ, chall, CONTINUE, "",
                   start.isoformat() if start else None, config=dataclasses.asdict(cfg))  # fmt: skip
    if done is not None:
        dec.action = done["action"]
        dec.reason = f"experiment ended on {done['date']}: {done['reason']}"
        dec.applied = "nothing (already applied then)"
        dec.day, dec.arms, dec.diff = done["day"], done["arms"], done["diff"]
        dec.looks, dec.guardrails = done["looks"], done["guardrails"]
        dec.service = done.get("service") or {}
        dec.predicted = done.get("predicted") or {arm: None for arm in ARMS}
        dec.truth = done.get("truth") or {arm: None for arm in ARMS}
    elif start is None:
        dec.reason = f"no challenger traffic of bundle-{chall} in the validated logs through {day}"
        dec.predicted = ope_prediction(settings, experiment, day)
        dec.truth = {arm: None for arm in ARMS}
    else:
        rows = experiment_rows(settings, experiment, start, day)
        days = validated_dates(settings, start, day)
        looks = daily_looks(rows, days, cfg)
        dec.day = (day - start).days + 1
        dec.looks = looks
        table = summarize(rows).reset_index()
        dec.arms = json.loads(table.to_json(orient="records"))
        last = looks[-1]
        dec.diff = {k: float(last[k]) for k in ("ctr_diff", "lambda", "p_value", "lower", "upper")}
        dec.diff.update(
            conversion_diff=float(last["conversion_diff"]),
            conversion_p_value=float(last["conversion_p_value"]),
            conversion_lower=float(last["conversion_lower"]),
            conversion_upper=float(last["conversion_upper"]),
        )
        dec.service = service_stats(settings, experiment, rows)
        dec.predicted = ope_prediction(settings, experiment, start)
        dec.truth = true_ctr(settings, rows, day)
        dec.action, dec.reason, dec.guardrails = decide(looks, dec.day, cfg, dec.service)
        pin = pinned_champion(settings) if dec.action == PROMOTE and apply else None
        if pin is not None:  # the champion is pinned by hand: the promotion waits for unpin
            dec.action = CONTINUE
            dec.reason += f"; not promoted: {pin_note(pin)}"
        dec.applied = _apply(settings, dec.action, champ, chall) if apply else "not applied"
    dec.aliases = {a: registry.get_alias(settings, a) for a in ("champion", "challenger")}
    rec = dec.to_dict()
    dec.mlflow_run_id = _log_to_mlflow(settings, rec)
    rec["mlflow_run_id"] = dec.mlflow_run_id
    write_ab_decision(settings, rec)
    log.info("A/B %s on %s: %s (%s); %s", experiment, day, dec.action, dec.reason, dec.applied)
    return dec


def analyze_current(
    settings: Settings, date: str | dt.date | None = None, config: ABConfig | None = None
) -> dict[str, Any]:
    """The DAG's entry point: analyse the experiment the aliases define now, through ``date``
    (default: the newest validated partition). JSON-able dict; ``action`` ``none`` when there is
    no experiment running or no validated data."""
    if date is None:
        dates = validated_dates(settings)
        if not dates:
            return {"action": "none", "reason": "no validated partitions"}
        date = dates[-1]
    exp = current_experiment(settings)
    if exp is None:
        return {"action": "none", "date": str(date), "reason": "no challenger alias: no experiment"}
    return analyze(settings, exp, date, config).to_dict()


# --- display ----------------------------------------------------------------------------------


def format_arms(arms: list[dict[str, Any]]) -> str:
    """The per-arm table as text."""
    head = f"{'arm':<11}{'impr':>9}{'clicks':>8}{'CTR':>8}  {'95% CI':<17}{'buys':>6}" \
        f"{'conv':>8}{'users':>7}"  # fmt: skip
    lines = [head]
    for a in arms:
        ci = f"[{fmt.number(a['ctr_lo'], '.4f')}, {fmt.number(a['ctr_hi'], '.4f')}]"
        lines.append(
            f"{a['arm']:<11}{a['impressions']:>9}{a['clicks']:>8}{fmt.number(a['ctr'], '.4f'):>8}  "
            f"{ci:<17}{a['purchases']:>6}{fmt.number(a['conversion'], '.4f'):>8}{a['users']:>7}"
        )
    return "\n".join(lines)


def format_history(records: list[dict[str, Any]]) -> str:
    """One line per recorded decision."""
    lines = [f"{'date':<12}{'day':>4}  {'action':<9}{'CTR diff':>9}  {'always-valid CI':<20}"
             f"{'p':>8}  reason"]  # fmt: skip
    for r in records:
        d = r.get("diff") or {}
        ci = f"[{fmt.number(d.get('lower'), '+.4f')}, {fmt.number(d.get('upper'), '+.4f')}]"
        lines.append(
            f"{r['date']:<12}{r['day']:>4}  {r['action']:<9}{fmt.number(d.get('ctr_diff'), '+.4f'):>9}  "
            f"{ci:<20}{fmt.number(d.get('p_value'), '.4f'):>8}  {r['reason']}"
        )
    return "\n".join(lines)


def format_ope(rec: dict[str, Any]) -> str:
    """OPE beside A/B: per arm, the OPE prediction (SNIPS [95% CI]), the measured CTR [Wilson
    95%] and, on simulated data, the true expected CTR; all in clicks per impression."""
    arms = {a["arm"]: a for a in rec.get("arms") or []}
    pred, truth = rec.get("predicted") or {}, rec.get("truth") or {}
    head = f"{'arm':<11}{'OPE predicted (SNIPS [CI])':<31}{'A/B measured CTR [CI]':<31}{'truth':>7}"
    lines = [head]
    sources = []
    for arm in ARMS:
        p, a = pred.get(arm), arms.get(arm) or {}
        if p:
            ope = f"{fmt.number(p['snips'], '.4f')} [{fmt.number(p['ci_low'], '.4f')}, {fmt.number(p['ci_high'], '.4f')}]"
            sources.append(f"{arm}: OPE of {p['date']} ({p['source']})")
        else:
            ope = "-"
        ctr = (f"{fmt.number(a.get('ctr'), '.4f')} [{fmt.number(a.get('ctr_lo'), '.4f')}, "
               f"{fmt.number(a.get('ctr_hi'), '.4f')}]") if a else "-"  # fmt: skip
        lines.append(f"{arm:<11}{ope:<31}{ctr:<31}{fmt.number(truth.get(arm), '.4f'):>7}")
    lines.append(
        "units: clicks per impression (SNIPS = mean reward per logged item-slot; CTR = clicked "
        "slots / impressions; truth = mean true click prob of the served impressions). OPE's "
        "target is the bundle's served policy, replayed on a sample of the OPE day's requests."
    )
    lines += sources
    return "\n".join(lines)


def format_guardrails(rec: dict[str, Any]) -> str:
    """The guardrails of one decision: name, per-arm values, compared value, threshold, verdict."""
    lines = [f"{'guardrail':<18}{'champion':>10}{'challenger':>12}{'value':>10}{'threshold':>11}"
             f"  verdict"]  # fmt: skip
    for g in rec.get("guardrails") or []:
        lines.append(
            f"{g['name']:<18}{fmt.number(g.get('champion'), '.4g'):>10}{fmt.number(g.get('challenger'), '.4g'):>12}"
            f"{fmt.number(g.get('value'), '.4g'):>10}{fmt.number(g.get('threshold'), '.4g'):>11}  {g['verdict']}"
        )
    return "\n".join(lines)
