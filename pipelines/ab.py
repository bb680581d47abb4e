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
(impression level), purchases, conversion = purchases / impressions, distinct users, and
``ctr_var`` / ``conv_var``: the variance of the ratio estimate with users as the unit (delta
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
4. p ≤ α and the CTR sequence's lower end > 0 → ``promote``;
5. day ``max_days`` reached (day 1 = start date) → ``stop``; otherwise ``continue``.

Actions: ``promote`` (the challenger's version becomes ``champion`` through
``registry.promote(..., expected=<old champion>)``; the ``challenger`` alias is cleared: the
old champion keeps no alias and is recorded in the decision), ``rollback`` (challenger alias
deleted when it still points at this experiment's challenger; champion untouched), ``stop``
(duration over without a significant difference: challenger alias cleared, nothing promoted),
``continue``. Every decision — arm table, looks, p-value, intervals, guardrails, config,
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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import schema
from pipelines.settings import Settings

log = logging.getLogger("recloop.ab")

AB_EXPERIMENT = "recloop-ab"
ARMS = ("champion", "challenger")  # as serving.bundle.ARMS (not imported: it pulls in FAISS)
PROMOTE, CONTINUE, ROLLBACK, STOP = "promote", "continue", "rollback", "stop"
TERMINAL = (PROMOTE, ROLLBACK, STOP)
_COLUMNS = ["event_id", "user_id", "event", "request_id", "position", "arm", "model_version"]
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

    def __post_init__(self) -> None:
        checks = [
            (0 < self.alpha < 1, "alpha must be in (0, 1)"),
            (self.tau > 0 and self.conversion_tau > 0, "tau and conversion_tau must be > 0"),
            (self.min_impressions >= 1, "min_impressions must be >= 1"),
            (self.max_days >= 1, "max_days must be >= 1"),
            (self.ctr_max_drop >= 0 and self.conversion_max_drop >= 0, "max drops must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"ABConfig: {msg}")


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
    from pipelines import registry

    champ = registry.get_alias(settings, "champion")
    chall = registry.get_alias(settings, "challenger")
    if champ is None or chall is None or champ == chall:
        return None
    return experiment_name(champ, chall)


def report_dir(settings: Settings, experiment: str) -> Path:
    """``reports/ab/<experiment>``."""
    parse_experiment(experiment)
    return settings.reports_dir / "ab" / experiment


def report_path(settings: Settings, experiment: str, date: str | dt.date) -> Path:
    """``reports/ab/<experiment>/date=D.json``."""
    return report_dir(settings, experiment) / f"date={schema.parse_date(date).isoformat()}.json"


# --- reading the logs -------------------------------------------------------------------------


def _read_day(settings: Settings, day: dt.date) -> pd.DataFrame:
    import pyarrow.parquet as pq

    folder = schema.partition_dir(settings.validated_dir, day)
    frames = []
    for f in sorted(folder.glob("*.parquet")):
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
    lo = schema.parse_date(first) if first is not None else dt.date.min
    hi = schema.parse_date(last)
    frames = []
    for day in schema.partition_dates(settings.validated_dir):
        if not lo <= day <= hi:
            continue
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


def _ratio_var(num: np.ndarray, den: np.ndarray) -> float:
    """Delta-method variance of sum(num)/sum(den) with the rows (users) as independent units."""
    n_tot = float(den.sum())
    units = len(den)
    if n_tot <= 0 or units < 2:
        return float("nan")
    r = float(num.sum()) / n_tot
    resid = num - r * den
    return float((resid**2).sum() / n_tot**2 * units / (units - 1))


def _per_user(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, user): impressions, clicks (distinct slots), purchases."""
    imp = rows[rows["event"] == "impression"]
    clk = rows[rows["event"] == "click"].drop_duplicates(["arm", "request_id", "position"])
    buy = rows[rows["event"] == "purchase"]
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
                "ctr_var": _ratio_var(clk, imp),
                "conv_var": _ratio_var(buy, imp),
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


# --- decision ---------------------------------------------------------------------------------


def _looks(rows: pd.DataFrame, days: list[dt.date], cfg: ABConfig) -> list[dict[str, Any]]:
    """Cumulative per-arm numbers and both sequential tests at each daily look."""
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


def decide(looks: list[dict[str, Any]], day: int, cfg: ABConfig) -> tuple[str, str, list[dict]]:
    """Pure rule (module docstring, steps 2-5) on the looks so far and the experiment's day
    number (1 = start): ``(action, reason, guardrails)``."""
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
    if failed:
        return ROLLBACK, f"guardrail failed: {', '.join(failed)}", guardrails
    n_min = min(last["impressions_champion"], last["impressions_challenger"])
    over = day >= cfg.max_days
    if n_min < cfg.min_impressions:
        if over:
            return STOP, f"max duration {cfg.max_days} days reached below the minimum sample " \
                f"({n_min} < {cfg.min_impressions} impressions in an arm)", guardrails  # fmt: skip
        return CONTINUE, f"minimum sample not reached ({n_min} < {cfg.min_impressions})", guardrails
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
    """Every recorded decision of ``experiment``, by date."""
    folder = report_dir(settings, experiment)
    files = sorted(folder.glob("date=*.json")) if folder.exists() else []
    return [json.loads(f.read_text()) for f in files]


def _concluded(settings: Settings, experiment: str, day: dt.date) -> dict[str, Any] | None:
    """The earliest terminal decision recorded before ``day``, if any."""
    for rec in history(settings, experiment):
        if rec["date"] < day.isoformat() and rec["action"] in TERMINAL:
            return rec
    return None


def _apply(settings: Settings, action: str, champ: str, chall: str) -> str:
    """Move the aliases for ``action`` (compare-and-set; re-applying is a no-op); what happened."""
    from mlflow.exceptions import MlflowException

    from pipelines import registry

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

    from pipelines import registry

    metrics: dict[str, Any] = {}
    for arm in rec["arms"]:
        for k in ("impressions", "clicks", "ctr", "ctr_lo", "ctr_hi", "purchases", "conversion"):
            metrics[f"{arm['arm']}.{k}"] = arm[k]
        metrics[f"{arm['arm']}.users"] = arm["users"]
    metrics.update({f"diff.{k}": v for k, v in rec["diff"].items() if isinstance(v, float)})
    metrics["day"] = rec["day"]
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
    from pipelines import registry

    cfg = config or ABConfig()
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
    elif start is None:
        dec.reason = f"no challenger traffic of bundle-{chall} in the validated logs through {day}"
    else:
        rows = experiment_rows(settings, experiment, start, day)
        days = [d for d in schema.partition_dates(settings.validated_dir) if start <= d <= day]
        looks = _looks(rows, days, cfg)
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
        dec.action, dec.reason, dec.guardrails = decide(looks, dec.day, cfg)
        dec.applied = _apply(settings, dec.action, champ, chall) if apply else "not applied"
    dec.aliases = {a: registry.get_alias(settings, a) for a in ("champion", "challenger")}
    rec = dec.to_dict()
    dec.mlflow_run_id = _log_to_mlflow(settings, rec)
    rec["mlflow_run_id"] = dec.mlflow_run_id
    schema.write_json_atomic(rec, report_path(settings, experiment, day))
    log.info("A/B %s on %s: %s (%s); %s", experiment, day, dec.action, dec.reason, dec.applied)
    return dec


def analyze_current(
    settings: Settings, date: str | dt.date | None = None, config: ABConfig | None = None
) -> dict[str, Any]:
    """The DAG's entry point: analyse the experiment the aliases define now, through ``date``
    (default: the newest validated partition). JSON-able dict; ``action`` ``none`` when there is
    no experiment running or no validated data."""
    if date is None:
        dates = schema.partition_dates(settings.validated_dir)
        if not dates:
            return {"action": "none", "reason": "no validated partitions"}
        date = dates[-1]
    exp = current_experiment(settings)
    if exp is None:
        return {"action": "none", "date": str(date), "reason": "no challenger alias: no experiment"}
    return analyze(settings, exp, date, config).to_dict()


# --- display ----------------------------------------------------------------------------------


def _f(x: Any, spec: str) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "-"
    return format(v, spec) if math.isfinite(v) else "-"


def format_arms(arms: list[dict[str, Any]]) -> str:
    """The per-arm table as text."""
    head = f"{'arm':<11}{'impr':>9}{'clicks':>8}{'CTR':>8}  {'95% CI':<17}{'buys':>6}" \
        f"{'conv':>8}{'users':>7}"  # fmt: skip
    lines = [head]
    for a in arms:
        ci = f"[{_f(a['ctr_lo'], '.4f')}, {_f(a['ctr_hi'], '.4f')}]"
        lines.append(
            f"{a['arm']:<11}{a['impressions']:>9}{a['clicks']:>8}{_f(a['ctr'], '.4f'):>8}  "
            f"{ci:<17}{a['purchases']:>6}{_f(a['conversion'], '.4f'):>8}{a['users']:>7}"
        )
    return "\n".join(lines)


def format_history(records: list[dict[str, Any]]) -> str:
    """One line per recorded decision."""
    lines = [f"{'date':<12}{'day':>4}  {'action':<9}{'CTR diff':>9}  {'always-valid CI':<20}"
             f"{'p':>8}  reason"]  # fmt: skip
    for r in records:
        d = r.get("diff") or {}
        ci = f"[{_f(d.get('lower'), '+.4f')}, {_f(d.get('upper'), '+.4f')}]"
        lines.append(
            f"{r['date']:<12}{r['day']:>4}  {r['action']:<9}{_f(d.get('ctr_diff'), '+.4f'):>9}  "
            f"{ci:<20}{_f(d.get('p_value'), '.4f'):>8}  {r['reason']}"
        )
    return "\n".join(lines)
