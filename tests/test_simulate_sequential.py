"""The simulator's sequential structure (issue 16, part 5): off by default and then today's world
byte for byte; when on, a user's next clicks follow the category transition matrix from their last
click, and the truth includes the term."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pytest

from pipelines.cli import main
from pipelines.core.settings import Settings
from pipelines.data import simulate as sim

START = dt.date(2026, 1, 1)

# sha256 (first 16 hex digits) of every file `simulate(tiny, seed 11, 2 days)` wrote with the code
# before the sequential structure existed (main at b79265e, run from a `git worktree` of it).
# The people (users, items) are drawn without floating-point arithmetic that depends on the CPU;
# the logs and truth go through BLAS products whose last bits differ between CPUs (a machine of
# another kind wrote other bytes for these 6 files from the same code and lock), so only the
# people are compared with these digests and the rest with a run of today's default.
HEAD_DIGESTS = {
    "data/interactions/date=2026-01-01/part-0.parquet": "19ff0cf51f189e96",
    "data/interactions/date=2026-01-02/part-0.parquet": "b45b2f04c3762d4d",
    "data/items.parquet": "1a157ca5059f61b7",
    "data/users.parquet": "4aa169c149928d06",
    "truth/impressions/date=2026-01-01/part-0.parquet": "1bdc62f37b2f2c57",
    "truth/impressions/date=2026-01-02/part-0.parquet": "63a4505f52d81121",
    "truth/policy_value.parquet": "ee6e832685bb5b7e",
    "truth/world.json": "09946f17a09d95e2",
}


def _digests(home: Path) -> dict[str, str]:
    out = {}
    for root in ("data", "truth"):
        for f in sorted((home / root).rglob("*")):
            if f.is_file():
                out[str(f.relative_to(home))] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
    return out


def _settings(home: Path, **env: str) -> Settings:
    return Settings.from_env({"RECLOOP_HOME": str(home), "RECLOOP_SEED": "11", **env})


def test_strength_zero_is_todays_world_byte_for_byte(tmp_path: Path) -> None:
    """Default (unset) and an explicit 0 write the same bytes (the people: HEAD's); 0.5
    writes other logs and truth (the structure changes the world) and records its strength."""
    sim.simulate(_settings(tmp_path / "a"), days=2, scale="tiny", start_date=START)
    sim.simulate(
        _settings(tmp_path / "b", RECLOOP_SIM_SEQUENTIAL="0"), days=2, scale="tiny",
        start_date=START,
    )  # fmt: skip
    default = _digests(tmp_path / "a")
    assert set(default) == set(HEAD_DIGESTS)
    for people in ("data/users.parquet", "data/items.parquet"):
        assert default[people] == HEAD_DIGESTS[people]
    assert _digests(tmp_path / "b") == default
    on = _settings(tmp_path / "c", RECLOOP_SIM_SEQUENTIAL="0.5")
    sim.simulate(on, days=2, scale="tiny", start_date=START)
    d = _digests(tmp_path / "c")
    assert d["data/users.parquet"] == HEAD_DIGESTS["data/users.parquet"]  # same people
    assert (
        d["data/interactions/date=2026-01-02/part-0.parquet"]
        != default["data/interactions/date=2026-01-02/part-0.parquet"]
    )
    assert sim.read_world_meta(on)["sequential"] == 0.5
    assert sim.load_world(on).sequential == 0.5


def test_cli_option_and_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECLOOP_HOME", str(tmp_path))
    monkeypatch.setenv("RECLOOP_SEED", "11")
    args = ["simulate", "--days", "1", "--scale", "tiny", "--sequential", "0.4"]
    assert main(args) == 0
    assert sim.read_world_meta(Settings.from_env())["sequential"] == 0.4
    with pytest.raises(ValueError, match="outside"):
        sim.build_world("tiny", 1, sequential=1.5)


def _successor_test(strength: float, days: int = 21) -> tuple[float, float, int]:
    """Clicks of ``days`` simulated days paired with the clicking user's state (the category of
    their last click before the day): ``(z, observed share, pairs)`` where the share is of clicks
    in the state's *successor* category (the strongest off-diagonal transition) and ``z`` its
    binomial z-score against the share the categories' marginal click distribution predicts."""
    world = sim.build_world("tiny", 3, START, sequential=strength)
    succ = sim.category_transitions(3)
    np.fill_diagonal(succ, 0.0)
    succ = succ.argmax(axis=1)
    prev, nxt = [], []
    for d in range(days):
        date = START + dt.timedelta(days=d)
        world.extend_to(date)
        state = world.user_last_category.astype(np.int64).copy()
        ev = sim.simulate_day(world, date).events.to_pandas()
        ev = ev[ev["event"] == "click"]
        p = state[sim.user_rows(world, ev["user_id"])]
        c = world.item_category[sim.item_rows(world, ev["item_id"])].astype(np.int64)
        prev.append(p[p >= 0])
        nxt.append(c[p >= 0])
    if strength == 0:  # no state is ever kept
        assert all(len(p) == 0 for p in prev)
        # the same clicks paired with the state they would have had
        return _successor_test_from_logs(days)
    p, c = np.concatenate(prev), np.concatenate(nxt)
    return _z(p, c, succ)


def _successor_test_from_logs(days: int) -> tuple[float, float, int]:
    """:func:`_successor_test` for strength 0: the states rebuilt from the logged clicks."""
    world = sim.build_world("tiny", 3, START, sequential=1.0)  # only to track states
    succ = sim.category_transitions(3)
    np.fill_diagonal(succ, 0.0)
    succ = succ.argmax(axis=1)
    plain = sim.build_world("tiny", 3, START)
    prev, nxt = [], []
    for d in range(days):
        date = START + dt.timedelta(days=d)
        world.extend_to(date)
        ev = sim.simulate_day(plain, date).events.to_pandas()
        ev = ev[ev["event"] == "click"]
        u, i = sim.user_rows(world, ev["user_id"]), sim.item_rows(world, ev["item_id"])
        p = world.user_last_category[u].astype(np.int64)
        prev.append(p[p >= 0])
        nxt.append(world.item_category[i[p >= 0]].astype(np.int64))
        sim.advance_state(world, u, i, sim._epoch_us(ev["ts"]))
    return _z(np.concatenate(prev), np.concatenate(nxt), succ)


def _z(prev: np.ndarray, nxt: np.ndarray, succ: np.ndarray) -> tuple[float, float, int]:
    marginal = np.bincount(nxt, minlength=len(sim.CATEGORIES)) / len(nxt)
    hit = nxt == succ[prev]
    expected = marginal[succ[prev]]
    z = (hit.sum() - expected.sum()) / np.sqrt((expected * (1 - expected)).sum())
    return float(z), float(hit.mean()), len(hit)


def test_next_category_follows_the_transitions_only_when_on() -> None:
    z_on, share_on, n_on = _successor_test(0.6)
    z_off, share_off, n_off = _successor_test(0.0)
    assert n_on > 300 and n_off > 300
    assert z_on > 8.0, (z_on, share_on)  # measured ~3x the marginal share
    assert abs(z_off) < 3.0, (z_off, share_off)
    assert share_on > 2 * share_off


def test_truth_includes_the_sequential_term(tmp_path: Path) -> None:
    """The true click probability of an item in the successor of the user's last category rises
    with the state; at strength 0 the state does not exist and the truth is the static one. The
    state rebuilt from the logs (a replay) equals the one the simulation left."""
    on = sim.build_world("tiny", 5, START, sequential=0.5)
    off = sim.build_world("tiny", 5, START)
    succ = sim.category_transitions(5)
    np.fill_diagonal(succ, 0.0)
    items = np.arange(on.n_items)
    user = np.zeros(len(items), dtype=np.int64)
    base = sim.true_probabilities(on, user, items, np.zeros(len(items), np.int64))["click"]
    on.user_last_category[0] = 2
    after = sim.true_probabilities(on, user, items, np.zeros(len(items), np.int64))["click"]
    target = on.item_category == succ[2].argmax()
    assert (after[target] > base[target]).all()
    assert (
        after[~target & (on.item_category != 2)] < base[~target & (on.item_category != 2)]
    ).all()
    plain = sim.true_probabilities(off, user, items, np.zeros(len(items), np.int64))["click"]
    np.testing.assert_array_equal(plain, base)
    assert off.user_last_category is not None and (off.user_last_category == -1).all()
    top = sim.oracle_slates(on, ["u0"], START, k=5)[0]
    assert (on.item_category[sim.item_rows(on, top)] == succ[2].argmax()).sum() >= 2

    s = _settings(tmp_path, RECLOOP_SIM_SEQUENTIAL="0.5")
    sim.simulate(s, days=3, scale="tiny", start_date=START)
    left = sim.build_world("tiny", 11, START, sequential=0.5)
    for d in range(3):
        sim.simulate_day(left, START + dt.timedelta(days=d))
    replay = sim.load_world_for_replay(s, START + dt.timedelta(days=3))
    assert (left.user_last_category >= 0).sum() > 50
    np.testing.assert_array_equal(sim.load_world(s).user_last_category, left.user_last_category)
    n = left.n_users  # the replay's world also holds day 3's arrivals, without clicks yet
    np.testing.assert_array_equal(replay.user_last_category[:n], left.user_last_category)
    assert (replay.user_last_category[n:] == -1).all()
