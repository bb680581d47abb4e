"""A/B decisions over many simulated experiments: false promotions, correctness, time to decide.

  .venv/bin/python benchmarks/bench_ab.py [--experiments 1000] [--effect-experiments 300]
      [--scale demo] [--requests 1500] [--share 0.5] [--bank 8] [--small-min-impressions 200]
      [--lifts -0.1,-0.05,0.025,0.05,0.1,0.2] [--check 2] [--seed 0] [--out FILE]

Offline and fast: no service, no workspace. One simulator world (``--scale``, ``--seed``); each
simulated day ``d`` (day 1 = the world's start date) brings the first ``--requests`` requests of
``simulate.requests_for_day`` (what ``recloop demo`` sends to the service; 0 = all of them). Each
experiment routes users with a fresh salt exactly as the service does (``sha256(salt:experiment:
user_id) < share``, ``serving.routing.bucket``; sticky per user), shows each request a slate of
10 from its arm's policy, draws the users' clicks from the truth (``P(click) = examination(slot)
· relevance``) and purchases from ``purchase_given_click`` (``simulate.true_probabilities``, as
``simulate.respond`` does), and feeds the cumulative per-user numbers of every daily look to the
real A/B code: the per-arm ratio and its user-clustered variance (``ab.ratio_variance``, as
``ab.summarize``), the mSPRT looks (``ab.always_valid``, assembled as ``ab.daily_looks``) and the
decision rule ``ab.decide`` on day 1, 2, ... until the first terminal action (as ``ab.analyze``:
a terminal decision ends the experiment). ``--check N`` rebuilds the first N A/A experiments as
event rows and asserts that ``ab.daily_looks`` (the DAG's pandas path) gives the same looks.

Policies (per request, slates of 10):

- ``logging``: the simulator's logging policy (popularity softmax + 10 % uniform, sampled slot by
  slot without replacement, ``simulate.sample_slates``); the champion of every scenario. Slates
  come from a bank of ``--bank`` independent draws per request and day (each request of each
  experiment picks one at random) so that experiments stay cheap;
- ``oracle``: the truth's top 10 per user (``simulate.oracle_slates``): clearly better;
- ``uniform``: 10 distinct items uniformly at random (no popularity, no personalisation), the
  analogue of a bundle with shuffled item embeddings: clearly worse;
- ``lift±x``: per request the ``oracle`` slate (positive x) or the ``uniform`` one (negative x)
  with probability m, else ``logging``; m set from the true CTRs so that the challenger's true
  CTR is ``(1 + x)`` times the logging policy's: the power curve.

True CTR = the mean true click probability of a policy's impressions over all the simulated
requests (as ``ab.true_ctr`` measures it for an arm). The config is the A/B DAG's
(``ABConfig.from_env()``: the defaults unless ``RECLOOP_AB_*`` is set). Service guardrails are not exercised (no
request log: their verdict is ``no data``, as for imported logs). Figures: per scenario the
share of experiments ending in ``promote`` / ``rollback`` / ``stop`` with Wilson 95% intervals,
the median (and p90) day of the terminal decision, rollbacks split by the guardrail that fired.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from tqdm import tqdm  # noqa: E402

from pipelines.core import fmt
from pipelines.data import simulate as sim
from pipelines.experiments import ab

K = sim.SLATE_SIZE


# --- the world's traffic and the policies' true probabilities ---------------------------------


@dataclasses.dataclass
class Day:
    """One simulated day: requests' user rows ``(n,)`` and per policy the true probabilities of
    each slot ``(bank, n, K)`` float32 (click; purchase given click); deterministic policies have
    ``bank = 1``."""

    date: dt.date
    users: np.ndarray
    click: dict[str, np.ndarray]
    buy: dict[str, np.ndarray]


def _probs(world: sim.World, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, ...]:
    """True (click, purchase-given-click) of item rows ``items (n, K)`` shown to ``users (n,)``."""
    n = len(users)
    u, i, pos = np.repeat(users, K), items.ravel(), np.tile(np.arange(K), n)
    t = sim.true_probabilities(world, u, i, pos)
    return (
        t["click"].reshape(n, K).astype(np.float32),
        t["purchase_given_click"].reshape(n, K).astype(np.float32),
    )


def build_days(
    world: sim.World, days: int, requests: int, bank: int, seed: int, oracle: bool
) -> list[Day]:
    """The first ``requests`` requests (0: all) of each of ``days`` days, with the true slot
    probabilities of ``logging`` and ``uniform`` (``bank`` slate draws each) and ``oracle``."""
    out = []
    for d in tqdm(range(days), desc="world days", unit="day"):
        date = world.start_date + dt.timedelta(days=d)
        reqs = sim.requests_for_day(world, date)
        if requests:
            reqs = reqs.head(requests)
        users = reqs["user_row"].to_numpy(np.int64)
        n = len(users)
        pool, q = sim.logging_policy(world, date)
        rng = np.random.default_rng([seed, 101, d])
        click: dict[str, np.ndarray] = {}
        buy: dict[str, np.ndarray] = {}
        for name, dist in (("logging", q), ("uniform", np.full(len(pool), 1.0 / len(pool)))):
            cs, bs = [], []
            for _ in range(bank):
                items, _ = sim.sample_slates(pool, dist, n, K, rng)
                c, b = _probs(world, users, items)
                cs.append(c)
                bs.append(b)
            click[name], buy[name] = np.stack(cs), np.stack(bs)
        if oracle:
            uniq, inv = np.unique(users, return_inverse=True)
            ids = sim.oracle_slates(world, np.array([f"u{u}" for u in uniq]), date)
            items = sim.item_rows(world, ids.ravel()).reshape(len(uniq), K)[inv]
            c, b = _probs(world, users, items)
            click["oracle"], buy["oracle"] = c[None], b[None]
        out.append(Day(date, users, click, buy))
    return out


def true_ctr(days: list[Day], policy: str) -> float:
    """Mean true click probability of ``policy``'s impressions over all the requests."""
    tot = sum(float(d.click[policy].astype(np.float64).mean(axis=0).sum()) for d in days)
    return tot / sum(len(d.users) * K for d in days)


# --- one experiment ---------------------------------------------------------------------------

Mix = list[tuple[str, float]]
"""A policy as a mixture per request: [(pure policy, probability), ...]."""


def bucket(user_rows: np.ndarray, salt: str, experiment: str) -> np.ndarray:
    """``serving.routing.bucket`` of users ``u<row>``: sticky position in [0, 1) (not imported:
    serving pulls in FAISS)."""
    out = np.empty(len(user_rows))
    for j, u in enumerate(user_rows):
        h = hashlib.sha256(f"{salt}:{experiment}:u{int(u)}".encode()).digest()
        out[j] = int.from_bytes(h[:8], "big") / 2.0**64
    return out


def _serve(
    day: Day, rows: np.ndarray, policy: Mix, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """True (click, purchase-given-click) ``(len(rows), K)`` of the slates ``policy`` shows to
    requests ``rows`` of ``day``: per request a mixture component, then one of its bank's draws."""
    names = [p for p, _ in policy]
    comp = rng.choice(len(names), size=len(rows), p=[w for _, w in policy])
    pc = np.empty((len(rows), K), dtype=np.float32)
    pb = np.empty((len(rows), K), dtype=np.float32)
    for j, name in enumerate(names):
        sel = np.flatnonzero(comp == j)
        bank = day.click[name].shape[0]
        b = rng.integers(0, bank, len(sel))
        pc[sel] = day.click[name][b, rows[sel]]
        pb[sel] = day.buy[name][b, rows[sel]]
    return pc, pb


@dataclasses.dataclass
class Experiment:
    """Per-user daily numbers of one experiment: ``(days, n_users)`` int arrays and the arms."""

    challenger: np.ndarray  # (n_users,) bool
    impressions: np.ndarray
    clicks: np.ndarray
    purchases: np.ndarray
    true_clicks: dict[str, float]  # arm -> sum of true click probabilities served
    shown: dict[str, int]  # arm -> impressions
    slots: list[dict[str, Any]] | None = None  # per day, for --check: requests' arms and outcomes


def run_experiment(
    days: list[Day],
    n_users: int,
    champion: Mix,
    challenger: Mix,
    share: float,
    seed: int,
    keep: bool = False,
) -> Experiment:
    """Route, serve and draw the users' responses for every day (``keep``: the slot outcomes)."""
    rng = np.random.default_rng([seed, 202])
    users = np.unique(np.concatenate([d.users for d in days]))
    chall = np.zeros(n_users, dtype=bool)
    chall[users] = bucket(users, f"bench-{seed}", "bench-ab") < share
    shape = (len(days), n_users)
    imp, clk, buy = (np.zeros(shape, dtype=np.int64) for _ in range(3))
    true_clicks = {arm: 0.0 for arm in ab.ARMS}
    shown = {arm: 0 for arm in ab.ARMS}
    slots = [] if keep else None
    for t, day in enumerate(days):
        is_ch = chall[day.users]
        pc = np.empty((len(day.users), K), dtype=np.float32)
        pb = np.empty_like(pc)
        for arm, policy, sel in (
            ("champion", champion, np.flatnonzero(~is_ch)),
            ("challenger", challenger, np.flatnonzero(is_ch)),
        ):
            pc[sel], pb[sel] = _serve(day, sel, policy, rng)
            true_clicks[arm] += float(pc[sel].sum(dtype=np.float64))
            shown[arm] += len(sel) * K
        c = rng.random(pc.shape, dtype=np.float32) < pc
        b = c & (rng.random(pc.shape, dtype=np.float32) < pb)
        imp[t] = np.bincount(day.users, minlength=n_users) * K
        clk[t] = np.bincount(day.users, weights=c.sum(1), minlength=n_users).astype(np.int64)
        buy[t] = np.bincount(day.users, weights=b.sum(1), minlength=n_users).astype(np.int64)
        if slots is not None:
            slots.append({"users": day.users, "challenger": is_ch, "click": c, "buy": b})
    return Experiment(chall, imp, clk, buy, true_clicks, shown, slots)


def looks(exp: Experiment, days: list[Day], cfg: ab.ABConfig) -> list[dict[str, Any]]:
    """The daily looks of ``ab.daily_looks`` from per-user cumulative numbers: per look and arm the
    ratio and ``ab.ratio_variance`` over the arm's users with impressions (as ``ab.summarize``),
    then ``ab.always_valid`` for CTR and conversion."""
    cum_n, cum_c, cum_b = (np.cumsum(x, axis=0) for x in (exp.impressions, exp.clicks,
                                                          exp.purchases))  # fmt: skip
    d_ctr, v_ctr, d_conv, v_conv, out = [], [], [], [], []
    for t, day in enumerate(days):
        arm: dict[str, dict[str, float]] = {}
        for name, mask in (("champion", ~exp.challenger), ("challenger", exp.challenger)):
            sel = mask & (cum_n[t] > 0)
            n, c, b = (x[t, sel].astype(float) for x in (cum_n, cum_c, cum_b))
            tot = n.sum()
            arm[name] = {
                "impressions": int(tot),
                "ctr": c.sum() / tot if tot else float("nan"),
                "conversion": b.sum() / tot if tot else float("nan"),
                "ctr_var": ab.ratio_variance(c, n),
                "conv_var": ab.ratio_variance(b, n),
            }
        a, h = arm["champion"], arm["challenger"]
        d_ctr.append(float(h["ctr"] - a["ctr"]))
        v_ctr.append(float(h["ctr_var"] + a["ctr_var"]))
        d_conv.append(float(h["conversion"] - a["conversion"]))
        v_conv.append(float(h["conv_var"] + a["conv_var"]))
        out.append(
            {
                "date": day.date.isoformat(),
                "impressions_champion": a["impressions"],
                "impressions_challenger": h["impressions"],
                "ctr_champion": float(a["ctr"]),
                "ctr_challenger": float(h["ctr"]),
                "ctr_diff": d_ctr[-1],
                "conversion_diff": d_conv[-1],
            }
        )
    ctr = ab.always_valid(d_ctr, v_ctr, cfg.tau, cfg.alpha)
    conv = ab.always_valid(d_conv, v_conv, cfg.conversion_tau, cfg.alpha)
    for look, c, v in zip(out, ctr, conv, strict=True):
        look.update({k: c[k] for k in ("lambda", "p_value", "lower", "upper")})
        look.update({f"conversion_{k}": v[k] for k in ("p_value", "lower", "upper")})
    return out


def decision(lks: list[dict[str, Any]], cfg: ab.ABConfig) -> tuple[str, int, str]:
    """``(action, day, reason)``: ``ab.decide`` on day 1, 2, ... up to ``cfg.max_days``; the first
    terminal action ends the experiment (``continue`` when the looks run out first)."""
    for k in range(1, min(len(lks), cfg.max_days) + 1):
        action, reason, _ = ab.decide(lks[:k], k, cfg, None)
        if action in ab.TERMINAL:
            return action, k, reason
    return ab.CONTINUE, min(len(lks), cfg.max_days), "looks ran out"


# --- the DAG's pandas path, for --check -------------------------------------------------------


def event_rows(exp: Experiment, days: list[Day]) -> pd.DataFrame:
    """The experiment as validated event rows (the columns ``ab.daily_looks`` reads)."""
    frames = []
    for t, (day, s) in enumerate(zip(days, exp.slots or [], strict=True)):
        n = len(s["users"])
        req = np.repeat(np.arange(n), K)
        pos = np.tile(np.arange(K), n)
        base = pd.DataFrame(
            {
                "user_id": [f"u{u}" for u in s["users"][req]],
                "request_id": [f"r{t}-{r}" for r in req],
                "position": pos,
                "arm": np.where(s["challenger"][req], "challenger", "champion"),
            }
        )
        for event, mask in (("impression", None), ("click", s["click"]), ("purchase", s["buy"])):
            f = base if mask is None else base[mask.ravel()]
            frames.append(f.assign(event=event, date=day.date))
    rows = pd.concat(frames, ignore_index=True)
    rows["event_id"] = np.arange(len(rows)).astype(str)
    return rows


def check_looks(exp: Experiment, days: list[Day], cfg: ab.ABConfig) -> float:
    """Largest absolute difference between :func:`looks` and ``ab.daily_looks`` on the same rows."""
    fast = looks(exp, days, cfg)
    slow = ab.daily_looks(event_rows(exp, days), [d.date for d in days], cfg)
    worst = 0.0
    for f, s in zip(fast, slow, strict=True):
        for key, v in s.items():
            if key == "date":
                assert f[key] == v
                continue
            a, b = float(f[key]), float(v)
            if math.isinf(a) or math.isinf(b):
                assert a == b, (key, a, b)
                continue
            worst = max(worst, abs(a - b))
    if worst > 1e-9:
        raise AssertionError(f"fast looks differ from ab.daily_looks by {worst:.3g}")
    return worst


# --- scenarios --------------------------------------------------------------------------------


def share(k: int, n: int) -> dict[str, float]:
    lo, hi = ab.wilson(k, n)
    return {"count": k, "share": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi}


def summarize_runs(results: list[tuple[str, int, str]], n: int) -> dict[str, Any]:
    """Shares of each action (Wilson 95%), decision day stats, rollbacks by guardrail."""
    out: dict[str, Any] = {"experiments": n}
    for action in (ab.PROMOTE, ab.ROLLBACK, ab.STOP, ab.CONTINUE):
        out[action] = share(sum(1 for a, _, _ in results if a == action), n)
    for action in (ab.PROMOTE, ab.ROLLBACK):
        dd = [d for a, d, _ in results if a == action]
        out[f"{action}_day_median"] = float(np.median(dd)) if dd else None
        out[f"{action}_day_p90"] = float(np.percentile(dd, 90)) if dd else None
    reasons = [r for a, _, r in results if a == ab.ROLLBACK]
    out["rollback_by"] = {
        g: sum(1 for r in reasons if g in r) for g in ("ctr_drop", "conversion_drop")
    }
    return out


def run_scenario(
    name: str,
    days: list[Day],
    n_users: int,
    challenger: Mix,
    configs: dict[str, ab.ABConfig],
    args: argparse.Namespace,
    n_exp: int,
    seed0: int,
    check: int = 0,
) -> dict[str, Any]:
    """``n_exp`` experiments of ``logging`` vs ``challenger``, decided under each config."""
    results: dict[str, list] = {k: [] for k in configs}
    served = {arm: [0.0, 0] for arm in ab.ARMS}
    worst = None
    t0 = time.perf_counter()
    first_cfg = next(iter(configs.values()))
    for e in tqdm(range(n_exp), desc=name, unit="exp", leave=False):
        exp = run_experiment(days, n_users, [("logging", 1.0)], challenger, args.share,
                             seed0 + e, keep=e < check)  # fmt: skip
        if e < check:
            w = check_looks(exp, days, first_cfg)
            worst = w if worst is None else max(worst, w)
        for arm in ab.ARMS:
            served[arm][0] += exp.true_clicks[arm]
            served[arm][1] += exp.shown[arm]
        lks: list[dict[str, Any]] | None = None
        last_key: tuple[float, float] | None = None
        for key, cfg in configs.items():
            if lks is None or last_key != (cfg.tau, cfg.alpha):
                lks, last_key = looks(exp, days, cfg), (cfg.tau, cfg.alpha)
            results[key].append(decision(lks, cfg))
    out = {
        "challenger_policy": challenger,
        "true_ctr_served": {arm: served[arm][0] / served[arm][1] for arm in ab.ARMS},
        "seconds": time.perf_counter() - t0,
        "decisions": {k: summarize_runs(v, n_exp) for k, v in results.items()},
    }
    if worst is not None:
        out["check_max_abs_diff_vs_ab_looks"] = worst
        out["checked_experiments"] = check
    return out


def mixture(lift: float, ctr: dict[str, float]) -> Mix:
    """The challenger whose true CTR is ``(1 + lift)`` times the logging policy's."""
    other = "oracle" if lift > 0 else "uniform"
    m = abs(lift) * ctr["logging"] / abs(ctr[other] - ctr["logging"])
    if not 0 < m <= 1:
        raise ValueError(f"lift {lift:+g} not reachable by mixing logging with {other}")
    return [("logging", 1.0 - m), (other, m)]


# --- output -----------------------------------------------------------------------------------


def _pct(s: dict[str, float]) -> str:
    return f"{100 * s['share']:5.1f}% [{100 * s['ci_low']:4.1f}, {100 * s['ci_high']:4.1f}]"


def table(report: dict[str, Any]) -> str:
    head = (f"{'scenario':<16}{'config':<14}{'true CTR ch/cm':>16}{'lift':>8}{'n':>6}  "
            f"{'promote [95% CI]':<22}{'rollback [95% CI]':<22}{'stop':>7}"
            f"{'day prom':>9}{'day roll':>9}  rollback by ctr/conv")  # fmt: skip
    lines = [head, "-" * len(head)]
    for name, sc in report["scenarios"].items():
        t = sc["true_ctr_served"]
        lift = t["challenger"] / t["champion"] - 1
        for key, d in sc["decisions"].items():
            lines.append(
                f"{name:<16}{key:<14}{t['challenger']:>8.4f}/{t['champion']:.4f}"
                f"{100 * lift:>+7.1f}%{d['experiments']:>6}  {_pct(d[ab.PROMOTE]):<22}"
                f"{_pct(d[ab.ROLLBACK]):<22}{100 * d[ab.STOP]['share']:>6.1f}%"
                f"{fmt.number(d['promote_day_median'], '.0f'):>9}"
                f"{fmt.number(d['rollback_day_median'], '.0f'):>9}  "
                f"{d['rollback_by']['ctr_drop']}/{d['rollback_by']['conversion_drop']}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiments", type=int, default=1000, help="A/A experiments (default 1000)")
    p.add_argument(
        "--effect-experiments",
        type=int,
        default=300,
        help="experiments per better / worse / lift scenario (default 300; 0 = A/A only)",
    )
    p.add_argument("--scale", default="demo", choices=sorted(sim.SCALES))
    p.add_argument(
        "--requests",
        type=int,
        default=1500,
        help="requests per day, the first N (default 1500 as `recloop demo`; 0 = all)",
    )
    p.add_argument("--share", type=float, default=0.5, help="challenger share (default 0.5)")
    p.add_argument("--bank", type=int, default=8, help="slate draws per request for random "
                   "policies (default 8)")  # fmt: skip
    p.add_argument(
        "--small-min-impressions",
        type=int,
        default=200,
        help="A/A also decided with this min_impressions (default 200)",
    )
    p.add_argument(
        "--alt-tau",
        type=float,
        default=0.002,
        help="every scenario also decided with this mSPRT tau (default 0.002, "
        "about 10%% of the logging CTR; 0 = off)",
    )
    p.add_argument(
        "--lifts",
        default="-0.1,-0.05,0.025,0.05,0.1,0.2",
        help="relative true-CTR lifts of the power curve",
    )
    p.add_argument(
        "--check",
        type=int,
        default=2,
        help="A/A experiments re-run through ab.daily_looks (pandas) to compare (default 2)",
    )
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
    p.add_argument("--out", help="write the figures as JSON here (default: stdout after table)")
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    # the A/B DAG's config: defaults, overridden by RECLOOP_AB_* where ab.py reads them
    base = ab.ABConfig.from_env() if hasattr(ab.ABConfig, "from_env") else ab.ABConfig()
    configs = {
        "default": base,
        f"min_imp={args.small_min_impressions}": dataclasses.replace(
            base, min_impressions=args.small_min_impressions
        ),
    }
    effect_configs = {"default": base}
    if args.alt_tau > 0:
        alt = dataclasses.replace(base, tau=args.alt_tau)
        configs[f"tau={args.alt_tau:g}"] = effect_configs[f"tau={args.alt_tau:g}"] = alt
    world = sim.build_world(args.scale, args.seed)
    lifts = [float(x) for x in args.lifts.split(",") if x.strip()]
    days = build_days(world, base.max_days, args.requests, args.bank, args.seed, oracle=True)
    n_users = world.n_users
    ctr = {name: true_ctr(days, name) for name in ("logging", "oracle", "uniform")}
    setup_s = time.perf_counter() - t0
    scen: dict[str, Any] = {}
    scen["A/A logging"] = run_scenario("A/A logging", days, n_users, [("logging", 1.0)], configs,
                                       args, args.experiments, 10_000, args.check)  # fmt: skip
    scen["A/A logging"]["target_lift"] = 0.0
    plans = [("better oracle", [("oracle", 1.0)]), ("worse uniform", [("uniform", 1.0)])]
    if args.effect_experiments <= 0:  # A/A only
        plans, lifts = [], []
    plans += [(f"lift {100 * x:+g}%", mixture(x, ctr)) for x in lifts]
    lift_of = {f"lift {100 * x:+g}%": x for x in lifts}
    for j, (name, mix) in enumerate(tqdm(plans, desc="scenarios", unit="scenario")):
        scen[name] = run_scenario(name, days, n_users, mix, effect_configs, args,
                                  args.effect_experiments, 100_000 * (j + 1))  # fmt: skip
        scen[name]["target_lift"] = None if name.startswith(("better", "worse")) else lift_of[name]
    report = {
        "command": "benchmarks/bench_ab.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "scale": args.scale,
        "seed": args.seed,
        "days": base.max_days,
        "requests_per_day": [len(d.users) for d in days],
        "impressions_per_day": [len(d.users) * K for d in days],
        "users_in_traffic": int(len(np.unique(np.concatenate([d.users for d in days])))),
        "challenger_share": args.share,
        "bank": args.bank,
        "true_ctr": ctr,
        "config": dataclasses.asdict(base),
        "alpha": base.alpha,
        "setup_seconds": setup_s,
        "total_seconds": time.perf_counter() - t0,
        "scenarios": scen,
    }
    print(
        f"scale {args.scale} seed {args.seed}: {report['users_in_traffic']} users, "
        f"{sum(report['requests_per_day'])} requests over {base.max_days} days "
        f"({report['impressions_per_day'][0]} impressions on day 1), share {args.share}; "
        f"true CTR logging {ctr['logging']:.4f}, oracle {ctr['oracle']:.4f}, "
        f"uniform {ctr['uniform']:.4f}; alpha {base.alpha}, tau {base.tau}, "
        f"min_impressions {base.min_impressions}, max_days {base.max_days}"
    )
    print(table(report))
    aa = scen["A/A logging"]
    if "check_max_abs_diff_vs_ab_looks" in aa:
        print(f"check: {aa['checked_experiments']} A/A experiments through ab.daily_looks "
              f"(pandas): max |diff| {aa['check_max_abs_diff_vs_ab_looks']:.2e}")  # fmt: skip
    print(f"setup {setup_s:.1f} s, total {report['total_seconds']:.1f} s")
    text = json.dumps(report, indent=2, default=str)
    if args.out:
        Path(args.out).write_text(text)
        print(f"figures written to {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
