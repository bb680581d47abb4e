"""Explorers of the serving re-rank stage (issue 16): ``thompson`` (unchanged), ``epsilon``,
``linucb``; the setting, exact propensities, the policy record's replay and LinUCB's fit."""

from __future__ import annotations

import datetime as dt
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serving import linucb, rerank
from serving.config import ServingConfig

IDS = [f"i{j}" for j in range(40)]
CATS = np.array([f"c{j % 5}" for j in range(40)])


def _bundle() -> types.SimpleNamespace:
    from serving.bundle import ItemTable

    frame = pd.DataFrame({"item_id": IDS, "item_category": CATS,
                          "item_impressions_28d": [(j * 37) % 400 for j in range(40)],
                          "item_clicks_28d": [(j * 7) % 20 for j in range(40)]})  # fmt: skip
    return types.SimpleNamespace(item_table=ItemTable.from_frame(frame, "2026-01-01"))


def _serve(home: Path, n: int, **cfg_kw) -> list[rerank.Slate]:
    """``n`` slates of one request (``k`` 6, a 20-item pool) through the serving re-rank stage."""
    from pipelines.core.settings import Settings
    from serving.engine import build_engine
    from serving.pipeline import Request, _Ranked, _rerank

    bundle = _bundle()
    cfg = ServingConfig(seed=7, explore_pool=20, **{"include_policy": True, **cfg_kw})
    engine = build_engine(Settings(home=home), cfg)
    ranked = _Ranked(IDS, np.linspace(0.12, 0.01, 40), bundle.item_table.rows(IDS), CATS,
                     np.full(40, 30), ["two_tower"] * 40, True)  # fmt: skip
    user = {"user_top_category": "c1", "user_top_category_share": 0.8}
    try:
        return [_rerank(engine, Request("u1", 6), bundle, ranked, user) for _ in range(n)]
    finally:
        engine.hydrate_pool.shutdown(wait=False)


def test_explorer_setting_is_validated():
    assert ServingConfig().explorer == "thompson"
    assert ServingConfig.from_env({"RECLOOP_SERVE_EXPLORER": "linucb"}).explorer == "linucb"
    cfg = ServingConfig.from_env({"RECLOOP_SERVE_LINUCB_TEMPERATURE": "0.5"})
    assert cfg.linucb_temperature == 0.5
    for bad in ({"explorer": "ucb"}, {"linucb_temperature": 0.0}, {"linucb_uniform": 1.5},
                {"linucb_alpha": -1.0}):  # fmt: skip
        with pytest.raises(ValueError, match="explorer|linucb"):
            ServingConfig(**bad)
    with pytest.raises(ValueError, match="explorer"):
        ServingConfig.from_env({"RECLOOP_SERVE_EXPLORER": "greedy"})


def test_thompson_is_unchanged(tmp_path):
    """The default explorer serves the slates the code before the explorers served (seed 7;
    expected values recorded from that code): request index → rows of an explored slate."""
    slates = _serve(tmp_path, 24)
    explored = {
        3: [0, 11, 1, 2, 3, 4], 4: [0, 1, 2, 3, 4, 22], 7: [0, 1, 2, 3, 11, 4],
        15: [0, 11, 1, 2, 3, 4], 17: [7, 0, 1, 2, 3, 4], 23: [0, 1, 2, 6, 3, 4],
    }  # fmt: skip
    for i, s in enumerate(slates):
        assert s.rows.tolist() == explored.get(i, [0, 1, 2, 3, 4, 5]), i
        assert s.explorer == "thompson"
    assert slates[3].propensity[1] == pytest.approx(0.0233659361, abs=1e-9)
    assert slates[17].propensity[0] == pytest.approx(0.0016666667, abs=1e-9)


def test_explore_probabilities_only_when_needed(tmp_path):
    """Without ``include_policy`` a request that does not explore leaves the explore
    probabilities uncomputed; the slates, propensities and draws stay the same."""
    for explorer in ("thompson", "epsilon"):
        full = _serve(tmp_path / f"a{explorer}", 24, explorer=explorer)
        lazy = _serve(tmp_path / f"b{explorer}", 24, explorer=explorer, include_policy=False)
        for a, b in zip(full, lazy, strict=True):
            assert a.rows.tolist() == b.rows.tolist()
            np.testing.assert_allclose(a.propensity, b.propensity)
            assert (b.pool_probs is None) == (not b.explore.any())
        assert sum(b.pool_probs is None for b in lazy) > 12  # rate 0.4: most do not explore


def test_epsilon_draws_uniformly_over_the_pool(tmp_path):
    slates = _serve(tmp_path, 3, explorer="epsilon")
    assert np.allclose(slates[0].pool_probs, 1 / 20)
    record = rerank.policy_record(slates[0], IDS)
    assert record["explorer"] == "epsilon" and len(record["pool"]) == 20


def _linucb_state_preferring(feature: str, weight: float = 0.5) -> linucb.LinUCBState:
    """A fitted-looking state whose ``theta`` is ``weight`` on ``feature`` (and 0.02 bias)."""
    a = 1e4 * np.eye(linucb.D)
    b = np.zeros(linucb.D)
    b[linucb.FEATURES.index("bias")] = 0.02 * 1e4
    b[linucb.FEATURES.index(feature)] = weight * 1e4
    return linucb.LinUCBState(a, b, 10_000, "planted")


def test_linucb_serves_from_the_saved_state(tmp_path):
    """With a state preferring the user's top category (c1), the pool's c1 items get most of
    the explore probability; without a state the choice is uniform."""
    prior = _serve(tmp_path, 1, explorer="linucb")[0]
    linucb.save_state(linucb.state_path(tmp_path), _linucb_state_preferring("category_match"))
    linucb._CACHE.clear()
    slate = _serve(tmp_path, 1, explorer="linucb")[0]
    linucb._CACHE.clear()
    c1 = CATS[slate.pool] == "c1"
    assert slate.explorer == "linucb" and abs(slate.pool_probs.sum() - 1) < 1e-9
    assert slate.pool_probs[c1].sum() > 0.85  # 4 of 20 items
    assert np.allclose(prior.pool_probs, 1 / 20)  # no fitted state yet: uniform
    assert slate.pool_probs.min() >= 0.1 / 20 - 1e-12  # the uniform share: overlap


def _explorer_probs(explorer: str, pool_size: int) -> np.ndarray:
    if explorer == "epsilon":
        return rerank.epsilon_probabilities(pool_size)
    rng = np.random.default_rng(3)
    x = linucb.context_features(
        {"user_top_category": "a", "user_top_category_share": 0.6}, rng.integers(0, 20, pool_size),
        rng.integers(0, 400, pool_size), np.array(["a", "b", "c"])[np.arange(pool_size) % 3],
        rng.integers(-1, 60, pool_size), rng.uniform(0, 3, pool_size),
    )  # fmt: skip
    return linucb.choice_probabilities(x, _linucb_state_preferring("item_ctr", 0.05), 0.05, 0.01,
                                       0.1)  # fmt: skip


@pytest.mark.parametrize("explorer", ["epsilon", "linucb"])
def test_logged_propensities_are_the_policy_frequencies(explorer: str):
    """Each (item, slot)'s empirical frequency over many draws equals the propensity logged with
    it, and the policy record's replay (:func:`serving.rerank.policy_probabilities`, what the
    served OPE uses) gives the same numbers for every item at every slot."""
    rng = np.random.default_rng(1)
    k, rate, n = 4, 0.3, 40_000
    exploit, scores = np.arange(k), np.array([0.4, 0.3, 0.2, 0.1])
    pool = np.arange(k, k + 3)
    probs = _explorer_probs(explorer, len(pool))
    alpha, beta = np.ones(3), np.full(3, 19.0)
    seen: Counter = Counter()
    logged: dict = {}
    for _ in range(n):
        s = rerank.explore(exploit, scores, pool, alpha, beta, k, rate, rng, probs=probs,
                           explorer=explorer)  # fmt: skip
        for slot, (row, prop) in enumerate(zip(s.rows, s.propensity, strict=True)):
            seen[(int(row), slot)] += 1
            assert abs(logged.setdefault((int(row), slot), prop) - prop) < 1e-12
    for key, prop in logged.items():
        assert abs(seen[key] / n - prop) < 4 * np.sqrt(prop * (1 - prop) / n) + 1e-3, key
    assert len(logged) == k + (k - 1) + k * len(pool)
    ids = [f"x{j}" for j in range(k + 3)]
    record = rerank.policy_record(s, ids)
    assert record["explorer"] == explorer
    replay_ids, replay = rerank.policy_probabilities(record, k)
    for (row, slot), prop in logged.items():
        assert replay[replay_ids.index(ids[row]), slot] == pytest.approx(prop, abs=1e-12)


def _write_served_day(settings, day: dt.date, n: int, seed: int = 0) -> None:
    """Day ``day``'s validated logs (``n`` impressions of 5-slot requests, clicks following
    ``0.02 + 0.15 * category_match``) and the day-before item and user feature tables."""
    from pipelines.core import layout

    rng = np.random.default_rng(seed)
    items = pd.DataFrame({"item_id": IDS, "item_category": CATS,
                          "item_impressions_28d": rng.integers(0, 500, 40),
                          "item_clicks_28d": rng.integers(0, 20, 40),
                          "item_age_days": 30})  # fmt: skip
    users = pd.DataFrame({"user_id": [f"u{j}" for j in range(30)],
                          "user_top_category": [f"c{j % 5}" for j in range(30)],
                          "user_top_category_share": 0.5, "user_ctr_28d": 0.05,
                          "user_impressions_28d": 100})  # fmt: skip
    for entity, frame in (("item", items), ("user", users)):
        path = layout.feature_table_path(settings, entity, day - dt.timedelta(days=1))
        path.parent.mkdir(parents=True)
        frame.to_parquet(path)
    u, i = rng.integers(0, 30, n), rng.integers(0, 40, n)
    match = users["user_top_category"].to_numpy()[u] == CATS[i]
    clicked = rng.random(n) < 0.02 + 0.15 * match
    req = [f"r{j // 5}" for j in range(n)]
    imp = pd.DataFrame({"event": "impression", "user_id": [f"u{x}" for x in u],
                        "item_id": [IDS[x] for x in i], "request_id": req,
                        "position": np.arange(n) % 5, "propensity": 0.9})  # fmt: skip
    rating = pd.DataFrame({"event": ["rating"], "user_id": ["u0"], "item_id": [IDS[0]]})
    log = pd.concat([imp, imp[clicked].assign(event="click"), rating], ignore_index=True)
    folder = layout.validated_partition(settings, day)
    folder.mkdir(parents=True)
    log.to_parquet(folder / "part-0.parquet")


def test_linucb_fit_recovers_a_planted_direction_from_served_logs(tmp_path):
    """Synthetic served logs whose clicks follow ``0.02 + 0.15 * category_match``: the daily fit
    (:func:`pipelines.release.linucb_fit.fit_served`), rebuilding contexts from the day-before
    feature tables, recovers that direction and writes the state the service loads."""
    from pipelines.core.settings import Settings
    from pipelines.release.linucb_fit import fit_served

    settings = Settings(home=tmp_path)
    day, n = dt.date(2026, 1, 10), 20_000
    _write_served_day(settings, day, n)
    state, summary = fit_served(settings, day, days=2)
    assert summary["rows"] == n and summary["days"] == [day.isoformat()]
    assert summary["skipped"] == [(day - dt.timedelta(days=1)).isoformat()]
    x_match = np.zeros(linucb.D)
    x_match[[0, linucb.FEATURES.index("category_match")]] = 1.0
    x_other = x_match.copy()
    x_other[linucb.FEATURES.index("category_match")] = 0.0
    uplift = float((x_match - x_other) @ state.theta + 0.5 * state.theta[7])  # match * share 0.5
    assert uplift == pytest.approx(0.15, abs=0.02)
    loaded = linucb.load_state(linucb.state_path(tmp_path))
    assert loaded is not None and np.allclose(loaded.a, state.a) and loaded.n == n


def test_daily_task_fits_day_d_and_the_service_explores_by_it_on_day_d_plus_1(
    tmp_path, monkeypatch
):
    """The daily DAG's ``fit_linucb`` on day D's validated logs writes the state; a linucb
    service that served D uniformly (no state yet) reloads it at its next check and explores
    the user's top category on D+1. A no-op for another explorer, a day without feedback and an
    older date's rerun; a rerun of D writes the same state."""
    import time

    from pipelines.core.settings import Settings
    from pipelines.orchestration import tasks

    monkeypatch.setenv("RECLOOP_HOME", str(tmp_path))
    monkeypatch.setenv("RECLOOP_SERVE_EXPLORER", "thompson")
    day, path = dt.date(2026, 1, 10), linucb.state_path(tmp_path)
    _write_served_day(Settings.from_env(), day, 5_000)
    assert tasks.fit_linucb(day.isoformat())["fitted"] is False and not path.exists()
    monkeypatch.setenv("RECLOOP_SERVE_EXPLORER", "linucb")
    served_d = _serve(tmp_path, 1, explorer="linucb")[0]  # day D: no state yet, uniform
    out = tasks.fit_linucb(day.isoformat())
    assert out["fitted"] and out["rows"] == 5_000 and out["days"] == [day.isoformat()]
    first = linucb.load_state(path)
    assert tasks.fit_linucb(day.isoformat())["fitted"]  # a rerun of D: the same state
    again = linucb.load_state(path)
    assert np.array_equal(again.a, first.a) and np.array_equal(again.b, first.b)
    older = tasks.fit_linucb((day - dt.timedelta(days=1)).isoformat())
    assert not older["fitted"] and older["reason"] == f"state fitted through {day}"
    empty = tasks.fit_linucb((day + dt.timedelta(days=30)).isoformat())
    assert not empty["fitted"] and empty["reason"] == "no feedback"
    assert np.array_equal(linucb.load_state(path).b, first.b)
    dated = linucb.dated_state_path(tmp_path, day.isoformat())
    assert np.array_equal(linucb.load_state(dated).b, first.b)  # kept for replays of D + 1
    assert linucb.state_path_for(tmp_path, day.isoformat()) == dated
    assert linucb.state_path_for(tmp_path, "2026-01-09") == path  # not kept: the latest
    assert linucb.state_path_for(tmp_path, None) == path
    later = time.monotonic() + 3600.0  # the service's next reload check
    monkeypatch.setattr(linucb, "time", types.SimpleNamespace(monotonic=lambda: later))
    try:
        served_next = _serve(tmp_path, 1, explorer="linucb")[0]
    finally:
        linucb._CACHE.pop(path, None)
    assert np.allclose(served_d.pool_probs, 1 / 20)
    c1 = CATS[served_next.pool] == "c1"  # the user's top category: 4 of the 20 pool items
    assert served_next.pool_probs[c1].sum() > 0.8
