"""The world simulator: determinism, the log contract, the statistics of the world, the truth."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.data import simulate as sim

START = dt.date(2026, 1, 1)
DAYS = 4


def _settings(home: Path, seed: int = 7) -> Settings:
    return Settings.from_env({"RECLOOP_HOME": str(home), "RECLOOP_SEED": str(seed)})


def _digests(home: Path) -> dict[str, str]:
    """sha256 of every file the simulator wrote, by path relative to the workspace."""
    out = {}
    for root in ("data", "truth"):
        for f in sorted((home / root).rglob("*")):
            if f.is_file():
                out[str(f.relative_to(home))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, list[dict]]:
    """One tiny simulation of DAYS days, shared by the read-only tests below."""
    s = _settings(tmp_path_factory.mktemp("sim") / "home")
    summaries = sim.simulate(s, days=DAYS, scale="tiny", start_date=START)
    return s, summaries


@pytest.fixture(scope="module")
def logs(run: tuple[Settings, list[dict]]) -> pd.DataFrame:
    s, _ = run
    days = [
        schema.read_partition(s.interactions_dir, d)
        for d in schema.partition_dates(s.interactions_dir)
    ]
    return pd.concat(days, ignore_index=True)


# --- determinism --------------------------------------------------------------------------------
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a, b, c = (_settings(tmp_path / n, seed) for n, seed in (("a", 3), ("b", 3), ("c", 4)))
    for s in (a, b, c):
        sim.simulate(s, days=2, scale="tiny")
    da, db, dc = _digests(a.home), _digests(b.home), _digests(c.home)
    assert "data/interactions/date=2026-01-02/part-0.parquet" in da
    assert "truth/impressions/date=2026-01-02/part-0.parquet" in da
    assert len(da) == 8  # 2 log days, 2 truth days, users, items, policy value, world.json
    assert da == db
    differ = [k for k in da if k != "truth/world.json" and da[k] != dc[k]]
    assert sorted(differ) == sorted(k for k in da if k != "truth/world.json")


def test_rerun_in_place_changes_nothing(run: tuple[Settings, list[dict]]) -> None:
    s, summaries = run
    before = _digests(s.home)
    again = sim.simulate(s, days=DAYS, scale="tiny", start_date=START)
    assert _digests(s.home) == before
    assert again == summaries


def test_world_is_the_same_however_it_is_extended() -> None:
    stepwise = sim.build_world("tiny", 5)
    for d in range(1, 6):
        stepwise.extend_to(START + dt.timedelta(days=d))
    direct = sim.build_world("tiny", 5)
    direct.extend_to(START + dt.timedelta(days=5))
    assert stepwise.n_users == direct.n_users > sim.SCALES["tiny"].n_users
    np.testing.assert_array_equal(stepwise.user_vec, direct.user_vec)
    np.testing.assert_array_equal(stepwise.item_price, direct.item_price)
    np.testing.assert_array_equal(stepwise.created_day, direct.created_day)


# --- the log contract ---------------------------------------------------------------------------
def test_files_follow_the_schemas(run: tuple[Settings, list[dict]]) -> None:
    s, _ = run
    dates = schema.partition_dates(s.interactions_dir)
    assert dates == [START + dt.timedelta(days=d) for d in range(DAYS)]
    for d in dates:
        table = pq.read_table(schema.partition_dir(s.interactions_dir, d) / "part-0.parquet")
        assert table.schema.equals(schema.INTERACTIONS, check_metadata=False)
    users = pq.read_table(s.data_dir / "users.parquet")
    items = pq.read_table(s.data_dir / "items.parquet")
    assert users.schema.equals(schema.USERS, check_metadata=False)
    assert items.schema.equals(schema.ITEMS, check_metadata=False)
    assert users.column("user_id")[0].as_py().startswith("u")
    assert items.column("item_id")[0].as_py().startswith("i")


def test_events_are_valid(logs: pd.DataFrame) -> None:
    assert set(logs["event"]) == set(schema.EVENTS)
    assert logs["event_id"].is_unique
    assert (logs["arm"] == sim.ARM).all() and (logs["model_version"] == sim.MODEL_VERSION).all()
    p = logs["propensity"]
    assert p.notna().all() and (p > 0).all() and (p <= 1).all()
    assert logs["position"].between(0, sim.SLATE_SIZE - 1).all()
    ratings = logs.loc[logs["event"] == "rating", "value"]
    assert len(ratings) > 0 and ratings.between(1, 5).all() and (ratings == ratings.round()).all()
    assert ratings.nunique() >= 3
    assert (logs.loc[logs["event"] != "rating", "value"] == 1.0).all()
    day = logs["event_id"].str[1:9]
    start = pd.to_datetime(day, format="%Y%m%d", utc=True)
    assert (logs["ts"] >= start).all() and (logs["ts"] < start + pd.Timedelta(days=1)).all()


def test_every_slate_is_k_distinct_items(logs: pd.DataFrame) -> None:
    imp = logs[logs["event"] == "impression"]
    per_request = imp.groupby("request_id").agg(
        n=("item_id", "size"), distinct=("item_id", "nunique")
    )
    assert (per_request["n"] == sim.SLATE_SIZE).all()
    assert (per_request["distinct"] == sim.SLATE_SIZE).all()
    assert (imp.groupby("request_id")["user_id"].nunique() == 1).all()


def test_clicks_purchases_ratings_follow_their_impression(logs: pd.DataFrame) -> None:
    key = ["request_id", "position"]
    imp = logs[logs["event"] == "impression"].set_index(key)
    for event, parent in (("click", "impression"), ("purchase", "click"), ("rating", "purchase")):
        rows = logs[logs["event"] == event].set_index(key)
        above = logs[logs["event"] == parent].set_index(key)
        assert len(rows) > 0, event
        assert rows.index.isin(above.index).all(), f"{event} without a {parent}"
        assert rows.index.is_unique
        joined = rows.join(imp, rsuffix="_imp")
        assert (joined["item_id"] == joined["item_id_imp"]).all()
        assert (joined["user_id"] == joined["user_id_imp"]).all()
        assert (joined["propensity"] == joined["propensity_imp"]).all()
        assert (joined["ts"] >= joined["ts_imp"]).all()


def test_propensity_is_the_per_slot_conditional(
    run: tuple[Settings, list[dict]], logs: pd.DataFrame
) -> None:
    s, _ = run
    world = sim.load_world(s)
    pool, q = sim.logging_policy(world, START)
    q_of = dict(zip(pool.tolist(), q.tolist(), strict=True))
    day0 = logs[(logs["event"] == "impression") & logs["request_id"].str.startswith("r20260101-")]
    slate = day0[day0["request_id"] == day0["request_id"].iloc[0]].sort_values("position")
    placed = 0.0
    for item, prop in zip(slate["item_id"], slate["propensity"], strict=True):
        qi = q_of[int(item[1:])]
        assert prop == pytest.approx(qi / (1.0 - placed), rel=1e-9)
        placed += qi


# --- the statistics of the world ----------------------------------------------------------------
def test_popularity_is_skewed(logs: pd.DataFrame) -> None:
    for event, share in (("impression", 0.25), ("click", 0.45)):  # uniform: 0.1
        counts = logs.loc[logs["event"] == event, "item_id"].value_counts()
        n_items = sim.SCALES["tiny"].n_items
        assert counts.iloc[: n_items // 10].sum() / counts.sum() > share, event


def test_ctr_falls_with_position(run: tuple[Settings, list[dict]], logs: pd.DataFrame) -> None:
    imp = logs[logs["event"] == "impression"].groupby("position").size()
    clk = logs[logs["event"] == "click"].groupby("position").size().reindex(imp.index, fill_value=0)
    ctr = (clk / imp).to_numpy()
    assert ctr[:3].mean() > 2 * ctr[-3:].mean()
    s, _ = run
    value = pd.read_parquet(s.truth_dir / "policy_value.parquet")
    for by_pos in value["expected_ctr_by_position"]:
        assert by_pos[0] > 2 * by_pos[-1]
    # the same item for the same user is clicked less the lower it is shown (position bias)
    world = sim.load_world(s)
    probs = sim.true_click_prob(world, ["u3"] * 10, ["i5"] * 10, np.arange(10))
    assert np.all(np.diff(probs) < 0)


def test_new_users_and_items_arrive(run: tuple[Settings, list[dict]], logs: pd.DataFrame) -> None:
    s, summaries = run
    users = pd.read_parquet(s.data_dir / "users.parquet")
    items = pd.read_parquet(s.data_dir / "items.parquet")
    assert users["user_id"].is_unique and items["item_id"].is_unique
    signup = pd.to_datetime(users["signup_date"]).dt.date
    created = pd.to_datetime(items["created_date"]).dt.date
    last = START + dt.timedelta(days=DAYS - 1)
    assert (signup < START).sum() == sim.SCALES["tiny"].n_users
    assert (signup >= START).sum() > 0 and signup.max() <= last
    assert (created >= START).sum() > 0 and created.max() <= last
    assert sum(r["new_users"] for r in summaries) == (signup >= START).sum()
    # new arrivals show up in the logs, and nobody appears before they exist
    first_seen = logs.groupby("user_id")["ts"].min().dt.date
    joined = users.set_index("user_id").join(first_seen.rename("first"), how="inner")
    assert (pd.to_datetime(joined["signup_date"]).dt.date <= joined["first"]).all()
    assert (pd.to_datetime(joined["signup_date"]).dt.date >= START).any()
    shown = (
        logs.loc[logs["event"] == "impression", ["item_id", "ts"]].groupby("item_id")["ts"].min()
    )
    joined = items.set_index("item_id").join(shown.dt.date.rename("first"), how="inner")
    assert (pd.to_datetime(joined["created_date"]).dt.date <= joined["first"]).all()
    assert (pd.to_datetime(joined["created_date"]).dt.date >= START).any()


def test_demographics_predict_taste() -> None:
    """A user's latent taste is largely explained by age band, gender and country."""
    world = sim.build_world("demo", 11)
    band = np.searchsorted(np.asarray(sim.AGE_BANDS), world.user_age, side="right") - 1

    def r2(b: np.ndarray, g: np.ndarray, c: np.ndarray) -> float:
        x = np.concatenate(
            [
                np.eye(len(sim.AGE_BANDS))[b],
                np.eye(len(sim.GENDERS))[g],
                np.eye(len(sim.COUNTRIES))[c],
            ],
            axis=1,
        )
        y = world.user_vec.astype(np.float64)
        fit = x @ np.linalg.lstsq(x, y, rcond=None)[0]
        return 1.0 - ((y - fit) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()

    g, c = world.user_gender.astype(int), world.user_country.astype(int)
    rng = np.random.default_rng(0)
    assert r2(band, g, c) > 0.3
    assert r2(rng.permutation(band), rng.permutation(g), rng.permutation(c)) < 0.05


def test_known_logits_are_parts_of_the_truth_and_rank_better_with_more_known() -> None:
    """``known_logit``: appeal alone is the truth's appeal term; with the whole user and item
    vectors the taste term would be the truth's (checked through its parts); ordering a user's
    items by more knowledge finds truer items (demo world, 300 users x 400 items)."""
    world = sim.build_world("demo", 11)
    u = np.repeat(np.arange(300), 400)
    i = np.tile(np.arange(400), 300)
    appeal = sim.known_logit(world, u, i, "appeal")
    assert np.allclose(appeal, sim.REL_APPEAL * world.item_appeal[i] / world.appeal_scale)
    a = sim._affinity(world, u, i)
    rel = sim.true_probabilities(world, u, i, np.zeros(len(u), np.int64))["relevance"]
    logit = np.log(rel / (1.0 - rel)) - sim.REL_BIAS - world.user_bias[u]
    if world.sequential > 0:
        logit -= sim.sequential_logit(world, u, i)
    assert np.allclose(logit, appeal + sim.REL_AFFINITY * a, atol=1e-4)

    def top10(score: np.ndarray) -> float:  # mean relevance of each user's top 10 by score
        s, r = score.reshape(300, 400), rel.reshape(300, 400)
        return float(np.take_along_axis(r, np.argsort(-s, axis=1)[:, :10], 1).mean())

    got = {x: top10(sim.known_logit(world, u, i, x)) for x in sim.KNOWLEDGE}
    assert got["appeal"] < got["demographics_x_category"] < got["demographics_x_item"]
    assert got["demographics_x_category"] < got["user_x_category"] < top10(rel)
    with pytest.raises(ValueError, match="known must be one of"):
        sim.known_logit(world, u, i, "user_id")


def test_prices_are_positive_and_differ_by_category(run: tuple[Settings, list[dict]]) -> None:
    s, _ = run
    items = pd.read_parquet(s.data_dir / "items.parquet")
    assert (items["price"] > 0).all()
    assert 10 <= items["category"].nunique() <= 20
    medians = items.groupby("category")["price"].median()
    assert medians.max() > 3 * medians.min()


# --- the truth ----------------------------------------------------------------------------------
def test_truth_matches_the_logs(run: tuple[Settings, list[dict]], logs: pd.DataFrame) -> None:
    s, summaries = run
    truth = pd.concat(
        [
            schema.read_partition(sim.truth_impressions_dir(s), d)
            for d in schema.partition_dates(sim.truth_impressions_dir(s))
        ],
        ignore_index=True,
    )
    imp = logs[logs["event"] == "impression"]
    assert len(truth) == len(imp) and set(truth["event_id"]) == set(imp["event_id"])
    joined = imp.merge(truth, on="event_id").head(500)
    world = sim.load_world(s)
    probs = sim.true_click_prob(world, joined["user_id"], joined["item_id"], joined["position"])
    np.testing.assert_allclose(probs, joined["true_click_prob"], rtol=1e-12)
    # realised clicks track the true probabilities (binomial, 4 sigma)
    value = pd.read_parquet(s.truth_dir / "policy_value.parquet")
    assert value["date"].tolist() == [r["date"] for r in summaries]
    for row in value.itertuples():
        sigma = np.sqrt(row.expected_ctr * (1 - row.expected_ctr) / row.impressions)
        assert abs(row.realized_ctr - row.expected_ctr) < 4 * sigma
    clicks = logs[logs["event"] == "click"]
    assert len(clicks) == pytest.approx(truth["true_click_prob"].sum(), rel=0.15)


def test_respond_is_deterministic_and_follows_the_truth() -> None:
    world = sim.build_world("tiny", 9)
    day = START + dt.timedelta(days=1)
    users = sim.users_for_day(world, day)
    assert len(users) > 50 and len(set(users)) == len(users)
    users = np.repeat(users, 20)  # many requests, so CTRs are well measured
    best = sim.oracle_slates(world, users, day, k=sim.SLATE_SIZE)
    pool, _ = sim.logging_policy(world, day)
    rng = np.random.default_rng(1)
    random = np.array(
        [[f"i{j}" for j in rng.choice(pool, sim.SLATE_SIZE, replace=False)] for _ in users]
    )

    a = sim.respond(world, users, best, day, seed=3)
    b = sim.respond(world, users, best, day, seed=3)
    c = sim.respond(world, users, best, day, seed=4)
    pd.testing.assert_frame_equal(a.events, b.events)
    pd.testing.assert_frame_equal(a.impressions, b.impressions)
    assert not a.events["event_id"].equals(c.events["event_id"]) or not a.events["ts"].equals(
        c.events["ts"]
    )

    r = sim.respond(world, users, random, day, seed=3)
    n_shown = len(users) * sim.SLATE_SIZE
    ctr_best = (a.events["event"] == "click").sum() / n_shown
    ctr_random = (r.events["event"] == "click").sum() / n_shown
    assert ctr_best > 2 * ctr_random
    for resp in (a, r):
        expected = resp.impressions["true_click_prob"].sum()
        clicks = (resp.events["event"] == "click").sum()
        assert abs(clicks - expected) < 4 * np.sqrt(expected) + 1
    table = schema.conform(a.events)
    assert table.schema.equals(schema.INTERACTIONS)
    assert set(a.events["event"]) <= {"click", "purchase", "rating"}
    assert a.events["ts"].dt.date.eq(day).all()


def test_respond_accepts_ragged_slates_and_names_bad_ids() -> None:
    world = sim.build_world("tiny", 9)
    resp = sim.respond(
        world, ["u1", "u2"], [["i1", "i2", "i3"], ["i4"]], START, seed=0,
        request_ids=["a", "b"], arm="B", model_version="m7", propensities=[[0.5, 0.2, 0.1], [1.0]],
    )  # fmt: skip
    assert resp.impressions["position"].tolist() == [0, 1, 2, 0]
    assert resp.impressions["request_id"].tolist() == ["a", "a", "a", "b"]
    assert (resp.events["arm"] == "B").all()
    with pytest.raises(ValueError, match="'i999999'"):
        sim.respond(world, ["u1"], [["i1", "i999999"]], START, seed=0)
    with pytest.raises(ValueError, match="'x5'"):
        sim.true_click_prob(world, ["x5"], ["i1"], 0)
    with pytest.raises(ValueError, match="before the world's start"):
        sim.users_for_day(world, START - dt.timedelta(days=1))


def test_cli_prints_the_summary(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "simulate",
                "--days",
                "2",
                "--scale",
                "tiny",
                "--seed",
                "1",
                "--start-date",
                "2026-03-01",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "2026-03-01" in out and "2026-03-02" in out and "ctr" in out
    assert schema.partition_dates(settings.interactions_dir) == [
        dt.date(2026, 3, 1),
        dt.date(2026, 3, 2),
    ]
    assert main(["simulate", "--days", "0", "--scale", "tiny"]) == 2
