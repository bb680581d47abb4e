"""The explore slot's three explorers (issue 16): 14 simulated days of regret against the truth.

  nice .venv/bin/python benchmarks/bench_explorers.py [--scale demo] [--seed 42] [--users 400]
      [--days 14] [--requests 1000] [--k 10] [--pool 100] [--rate 0.4] [--noise 1.0]
      [--runs 3] [--out benchmarks/figures/explorers_regret.png]

A bandit simulation of the serving re-rank stage (:func:`serving.rerank.explore`) against the
simulator's truth (:func:`pipelines.data.simulate.true_probabilities`, the truth that
``recloop stages`` scores served slates with): ``--users`` users and the items of the world's
day 0 (demo: 2,000), true relevance ``rel[u, i]`` (position-free click probability; a click at
slot ``s`` is ``EXAMINATION[s] * rel``). A fixed ranker scores every pair by the relevance logit
plus ``N(0, noise²)`` (drawn once): each user's exploit list is their top ``k``, the explore pool
the next ``pool`` items, as the service's pool is the best-ranked candidates outside the list.

Each day has ``--requests`` requests of uniformly drawn users; a request explores with
probability ``rate`` at a uniform slot, the explored item drawn by the explorer; every shown
slot is clicked with its true probability. As in production the explorers' inputs change once a
day: the item table's click/impression counts (cumulative), the users' features (top clicked
category and its share, CTR, impressions) and LinUCB's state (``A``, ``b`` updated with all of
the day's impressions: :func:`serving.linucb.update`, the daily fit of
:mod:`pipelines.release.linucb_fit`). Explorers, with the service's defaults:

- ``thompson``: Thompson over ``Beta(1 + clicks, 19 + impressions - clicks)`` mixed half with a
  uniform draw (``explore_uniform`` 0.5); ``thompson_pure``: without the uniform half;
- ``epsilon``: uniform over the pool;
- ``linucb``: softmax of LinUCB scores over :func:`serving.linucb.context_features`
  (``linucb_alpha``, ``linucb_temperature``, ``linucb_uniform`` of ``ServingConfig``; uniform on
  day 1, before any fitted state). ``item_trending`` is 1 for all items (not simulated).

**Regret** of an explored slot ``s`` showing ``j`` to ``u``: ``EXAMINATION[s] * (max_pool
rel[u, .] - rel[u, j])`` (the oracle explores the pool's truly best item); cumulative over the
days. Also the explored slot's mean true relevance, and the **ESS** of the explored slots' logs
for an off-policy evaluation of a uniform explore choice (weights ``(1 / P) / P_logged(j)``,
ESS ``(sum w)² / sum w²``, as a share of the explored slots): the overlap the logs leave.
All explorers see the same users, explore decisions and slots (common random numbers).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.data import simulate as sim  # noqa: E402
from serving import linucb, rerank  # noqa: E402
from serving.config import ServingConfig  # noqa: E402

EXPLORERS = ("thompson", "thompson_pure", "epsilon", "linucb")


class World:
    """The fixed part of a run: truth ``rel`` ``(U, I)``, exploit lists ``(U, k)``, pools
    ``(U, pool)``, item categories ``(I,)`` (names) and ages on day 0 ``(I,)``."""

    def __init__(self, args: argparse.Namespace, run: int) -> None:
        world = sim.build_world(args.scale, args.seed)
        users = np.flatnonzero(world.signup_day <= 0)[: args.users]
        items = np.flatnonzero(world.created_day <= 0)
        u = np.repeat(users, len(items))
        i = np.tile(items, len(users))
        rel = sim.true_probabilities(world, u, i, np.zeros(len(u), np.int64))["relevance"]
        self.rel = rel.reshape(len(users), len(items))
        rng = np.random.default_rng([args.seed, run, 1])
        logit = np.log(self.rel / (1 - self.rel))
        score = logit + args.noise * rng.standard_normal(self.rel.shape)
        order = np.argsort(-score, axis=1)
        self.exploit = order[:, : args.k]
        self.pool = order[:, args.k : args.k + args.pool]
        self.cats = np.array(sim.CATEGORIES)[world.item_category[items]]
        self.ages = (-world.created_day[items]).astype(np.int64)
        self.exam = sim.EXAMINATION[: args.k]


class State:
    """What the explorers see, refreshed once a day: item counts, user features, LinUCB."""

    def __init__(self, n_users: int, n_items: int, cfg: ServingConfig) -> None:
        self.clicks = np.zeros(n_items)
        self.imps = np.zeros(n_items)
        self.user_cat_clicks: list[dict[str, int]] = [{} for _ in range(n_users)]
        self.user_clicks = np.zeros(n_users)
        self.user_imps = np.zeros(n_users)
        self.lin = linucb.prior_state(cfg.linucb_lambda)
        self.day_x: list[np.ndarray] = []
        self.day_r: list[np.ndarray] = []

    def snapshot(self) -> State:
        """A copy of the counts and user features (the LinUCB state is immutable: shared)."""
        out = State.__new__(State)
        out.clicks, out.imps = self.clicks.copy(), self.imps.copy()
        out.user_cat_clicks = [dict(c) for c in self.user_cat_clicks]
        out.user_clicks, out.user_imps = self.user_clicks.copy(), self.user_imps.copy()
        out.lin, out.day_x, out.day_r = self.lin, [], []
        return out

    def user(self, u: int) -> dict:
        cats = self.user_cat_clicks[u]
        total = sum(cats.values())
        top = max(sorted(cats), key=lambda c: cats[c]) if total else "unknown"
        return {
            "user_top_category": top,
            "user_top_category_share": cats.get(top, 0) / total if total else 0.0,
            "user_ctr_28d": (self.user_clicks[u] + 0.5) / (self.user_imps[u] + 10.0),
            "user_impressions_28d": self.user_imps[u],
        }


def _probs(name: str, w: World, st: State, u: int, day: int, cfg: ServingConfig) -> np.ndarray:
    """The explorer ``name``'s choice probabilities over user ``u``'s pool ``(P,)``."""
    pool = w.pool[u]
    a0, b0 = cfg.explore_prior
    alpha = a0 + st.clicks[pool]
    beta = b0 + np.maximum(st.imps[pool] - st.clicks[pool], 0.0)
    if name == "epsilon":
        return rerank.epsilon_probabilities(len(pool))
    if name in ("thompson", "thompson_pure"):
        p = rerank.thompson_probabilities(alpha, beta, cfg.explore_grid)
        share = cfg.explore_uniform if name == "thompson" else 0.0
        return share / len(pool) + (1 - share) * p
    x = _contexts(w, st, u, pool, day, cfg)
    return linucb.choice_probabilities(
        x, st.lin, cfg.linucb_alpha, cfg.linucb_temperature, cfg.linucb_uniform
    )


def _contexts(
    w: World, st: State, u: int, items: np.ndarray, day: int, cfg: ServingConfig
) -> np.ndarray:
    return linucb.context_features(
        st.user(u), st.clicks[items], st.imps[items], w.cats[items], w.ages[items] + day,
        np.ones(len(items)), cfg.explore_prior,
    )  # fmt: skip


def _end_of_day(st: State) -> None:
    """The daily refresh of LinUCB's state from the day's impressions (the counts grow during
    the day, the explorers read a snapshot taken at its start: :meth:`State.snapshot`)."""
    if st.day_x:
        st.lin = linucb.update(st.lin, np.concatenate(st.day_x), np.concatenate(st.day_r))
    st.day_x, st.day_r = [], []


def simulate(name: str, w: World, args: argparse.Namespace, run: int) -> dict:
    """One explorer's 14 days: daily regret, explored relevance, ESS (module docstring)."""
    cfg = ServingConfig.from_env()
    n_users, n_items = w.rel.shape
    st = State(n_users, n_items, cfg)
    stream = np.random.default_rng([args.seed, run, 2])  # users, explore decisions, slots
    draws = np.random.default_rng([args.seed, run, 3, EXPLORERS.index(name)])
    regret, explored_rel, oracle_rel, weights = [], [], [], []
    for day in range(args.days):
        seen = st.snapshot()  # what the explorers read today: the counts up to yesterday
        day_regret = 0.0
        for _ in range(args.requests):
            u = int(stream.integers(n_users))
            explore_now, slot = stream.random() < args.rate, int(stream.integers(args.k))
            shown = w.exploit[u].copy()
            if explore_now:
                p = _probs(name, w, seen, u, day, cfg)
                j = int(draws.choice(len(p), p=p))
                shown = np.concatenate([shown[:slot], [w.pool[u, j]], shown[slot:-1]])
                best = float(w.rel[u, w.pool[u]].max())
                got = float(w.rel[u, w.pool[u, j]])
                day_regret += w.exam[slot] * (best - got)
                explored_rel.append(got)
                oracle_rel.append(best)
                weights.append((1.0 / len(p)) / p[j])
            clicked = draws.random(args.k) < w.exam * w.rel[u, shown]
            st.day_x.append(_contexts(w, seen, u, shown, day, cfg))
            st.day_r.append(clicked.astype(float))
            _count(st, w, u, shown, clicked)
        _end_of_day(st)
        regret.append(day_regret)
    wt = np.asarray(weights)
    return {
        "explorer": name,
        "daily_regret": regret,
        "cumulative_regret": np.cumsum(regret).tolist(),
        "explored_rel": float(np.mean(explored_rel)),
        "oracle_rel": float(np.mean(oracle_rel)),
        "ess_share_uniform": float(wt.sum() ** 2 / (wt**2).sum() / len(wt)),
        "explored": len(wt),
    }


def _count(st: State, w: World, u: int, shown: np.ndarray, clicked: np.ndarray) -> None:
    st.imps[shown] += 1
    st.clicks[shown] += clicked
    st.user_imps[u] += len(shown)
    st.user_clicks[u] += clicked.sum()
    for c in w.cats[shown[clicked]]:
        st.user_cat_clicks[u][str(c)] = st.user_cat_clicks[u].get(str(c), 0) + 1


def plot(results: list[dict], out: Path) -> None:
    """Mean cumulative regret per day and explorer (over runs) as a PNG at ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in EXPLORERS:
        curves = np.array([r["cumulative_regret"] for r in results if r["explorer"] == name])
        days = np.arange(1, curves.shape[1] + 1)
        ax.plot(days, curves.mean(axis=0), marker="o", ms=3, label=name)
    ax.set_xlabel("simulated day")
    ax.set_ylabel("cumulative regret (expected clicks)")
    ax.set_title("Explore slot: regret vs the pool's oracle")
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", default="demo")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--users", type=int, default=400)
    p.add_argument("--days", type=int, default=14)
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--pool", type=int, default=100)
    p.add_argument("--rate", type=float, default=0.4)
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--explorers", default=",".join(EXPLORERS))
    p.add_argument("--out", type=Path, default=Path("benchmarks/figures/explorers_regret.png"))
    args = p.parse_args()
    t0 = time.perf_counter()
    results = []
    for run in range(args.runs):
        w = World(args, run)
        for name in args.explorers.split(","):
            results.append({"run": run, **simulate(name, w, args, run)})
    print(f"{'explorer':<14}{'regret@14':>11}{'±sd':>8}{'expl.rel':>10}{'oracle':>9}{'ESS/n':>8}")
    for name in args.explorers.split(","):
        rs = [r for r in results if r["explorer"] == name]
        final = np.array([r["cumulative_regret"][-1] for r in rs])
        print(
            f"{name:<14}{final.mean():>11.1f}{final.std():>8.1f}"
            f"{np.mean([r['explored_rel'] for r in rs]):>10.4f}"
            f"{np.mean([r['oracle_rel'] for r in rs]):>9.4f}"
            f"{np.mean([r['ess_share_uniform'] for r in rs]):>8.3f}"
        )
    if set(args.explorers.split(",")) == set(EXPLORERS):
        plot(results, args.out)
        print(f"figure: {args.out}")
    print(f"{time.perf_counter() - t0:.0f} s; args {json.dumps(vars(args), default=str)}")


if __name__ == "__main__":
    main()
