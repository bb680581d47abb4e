"""Off-policy evaluation: estimators pinned to hand-computed values, exclusion, the CLI, slate
marginals against exact enumeration, and interval coverage against the simulator's truth."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.data import simulate as sim
from pipelines.release import ope

DATE = "2026-01-01"


def _hand_table() -> pd.DataFrame:
    """Five rows: w = target / logging = [0.5, 2, 2, 1, 0.5]."""
    return pd.DataFrame(
        {
            "reward": [1.0, 0.0, 1.0, 0.0, 1.0],
            "propensity": [0.5, 0.25, 0.2, 0.5, 1.0],
            "target_propensity": [0.25, 0.5, 0.4, 0.5, 0.5],
            "predicted_reward": [0.6, 0.2, 0.5, 0.1, 0.4],
            "target_predicted_reward": [0.5, 0.3, 0.4, 0.2, 0.5],
        }
    )


def test_estimators_match_hand_computed_values() -> None:
    res = ope.estimate(_hand_table(), n_boot=0, clip=1.5)
    assert set(res) == set(ope.ESTIMATORS)
    # ips = (0.5 + 2 + 0.5) / 5; clipped w = [0.5, 1.5, 1.5, 1, 0.5] -> (0.5 + 1.5 + 0.5) / 5
    assert res["ips"]["estimate"] == pytest.approx(0.6)
    assert res["clipped_ips"]["estimate"] == pytest.approx(0.5)
    assert res["clipped_ips"]["clipped_rows"] == 2
    assert res["snips"]["estimate"] == pytest.approx(3.0 / 6.0)
    assert res["dm"]["estimate"] == pytest.approx(1.9 / 5)
    # dr rows: .5+.5*.4, .3+2*(-.2), .4+2*.5, .2+1*(-.1), .5+.5*.6 = .7 -.1 1.4 .1 .8
    assert res["dr"]["estimate"] == pytest.approx(2.9 / 5)
    assert res["ips"]["ess"] == pytest.approx(36 / 9.5)  # (sum w)^2 / sum w^2
    assert res["clipped_ips"]["ess"] == pytest.approx(25 / 6.0)
    assert res["dm"]["ess"] == 5
    assert res["ips"]["mean_weight"] == pytest.approx(1.2)
    for e in res.values():
        assert e["n"] == 5 and e["excluded"] == 0 and e["ci_low"] is None


def test_missing_or_zero_propensity_rows_are_excluded_and_counted() -> None:
    bad = pd.DataFrame(
        {
            "reward": [1.0, 1.0, 0.0],
            "propensity": [np.nan, 0.0, None],
            "target_propensity": [0.9, 0.9, 0.9],
            "predicted_reward": [0.5, 0.5, 0.5],
            "target_predicted_reward": [9.0, 9.0, 9.0],
        }
    )
    table = pd.concat([_hand_table().iloc[:2], bad, _hand_table().iloc[2:]], ignore_index=True)
    res = ope.estimate(table, n_boot=0, clip=1.5)
    clean = ope.estimate(_hand_table(), n_boot=0, clip=1.5)
    for name in ope.ESTIMATORS:
        assert res[name]["excluded"] == 3
        assert res[name]["n"] == 5
        assert res[name]["estimate"] == pytest.approx(clean[name]["estimate"])


def test_errors_name_the_row_and_column() -> None:
    t = _hand_table()
    with pytest.raises(ValueError, match=r"logs.parquet: missing column 'target_propensity'"):
        ope.estimate(t.drop(columns="target_propensity"), source="logs.parquet")
    t2 = t.copy()
    t2.loc[3, "propensity"] = 1.5
    with pytest.raises(ValueError, match=r"row 3, column 'propensity'.*outside"):
        ope.estimate(t2)
    t3 = t.copy()
    t3.loc[1, "reward"] = np.nan
    with pytest.raises(ValueError, match=r"row 1, column 'reward' is missing"):
        ope.estimate(t3)
    t4 = t.astype({"reward": object})
    t4.loc[2, "reward"] = "yes"
    with pytest.raises(ValueError, match=r"row 2, column 'reward'.*not a number"):
        ope.estimate(t4)
    with pytest.raises(ValueError, match="no rows with a usable propensity"):
        ope.estimate(t.assign(propensity=0.0))


def test_dm_and_dr_are_skipped_without_model_columns() -> None:
    res = ope.estimate(_hand_table().drop(columns="target_predicted_reward"), n_boot=50)
    assert res["dm"]["estimate"] is None and "target_predicted_reward" in res["dm"]["skipped"]
    assert res["dr"]["estimate"] is None
    assert res["snips"]["estimate"] == pytest.approx(0.5)


def test_bootstrap_resamples_requests_and_is_seeded() -> None:
    rng = np.random.default_rng(0)
    n_req, k = 300, 5
    table = pd.DataFrame(
        {
            "request_id": np.repeat([f"r{i}" for i in range(n_req)], k),
            "reward": rng.random(n_req * k) < 0.3,
            "propensity": np.full(n_req * k, 0.2),
            "target_propensity": rng.choice([0.1, 0.3], n_req * k),
        }
    )
    a = ope.estimate(table, n_boot=300, seed=1)
    b = ope.estimate(table, n_boot=300, seed=1)
    assert a == b
    for name in ("ips", "clipped_ips", "snips"):
        e = a[name]
        assert e["clusters"] == n_req
        assert e["ci_low"] < e["estimate"] < e["ci_high"]
    # rows identical within each request: clustering must widen the interval (here ~ sqrt(k))
    same = table.groupby("request_id", sort=False).transform("first")
    same["request_id"] = table["request_id"]
    width = {}
    for label, t in (("clustered", same), ("rows", same.drop(columns="request_id"))):
        e = ope.estimate(t, n_boot=400, seed=2)["ips"]
        width[label] = e["ci_high"] - e["ci_low"]
    assert width["clustered"] > 1.6 * width["rows"]


def _exact_marginals(q: np.ndarray, k: int) -> np.ndarray:
    m = np.zeros((len(q), k))
    for perm in itertools.permutations(range(len(q)), k):
        p, placed = 1.0, 0.0
        for a in perm:
            p *= q[a] / (1.0 - placed)
            placed += q[a]
        for j, a in enumerate(perm):
            m[a, j] += p
    return m


def test_slot_marginals_match_exact_enumeration() -> None:
    q = np.array([0.35, 0.25, 0.15, 0.1, 0.08, 0.05, 0.02])
    exact = _exact_marginals(q, 3)
    est = ope.slot_marginals(q, 3, n_samples=20_000, seed=3)
    assert est.shape == (7, 3)
    np.testing.assert_allclose(est[:, 0], q)  # slot 0 is exact
    np.testing.assert_allclose(est.sum(axis=0), 1.0)
    assert np.abs(est - exact).max() < 0.01
    # a batch of distributions, one with zeros and one peaked (exercises the exact fallback)
    peaked = np.array([0.96, 0.01, 0.01, 0.01, 0.01, 0.0, 0.0])
    batch = ope.slot_marginals(np.stack([q, peaked]), 3, n_samples=20_000, seed=4)
    assert np.abs(batch[0] - exact).max() < 0.01
    assert np.abs(batch[1] - _exact_marginals(peaked, 3)).max() < 0.01
    assert np.all(batch[1, 5:] == 0.0)
    # the simulator's per-slot conditional propensity is not the marginal
    assert not np.allclose(exact[:, 2], q / (1 - q[0] - q[1]), atol=0.01)


def test_cli_prints_json_for_parquet_and_csv(tmp_path: Path, capsys, settings) -> None:
    table = _hand_table()
    table.loc[len(table)] = [1.0, np.nan, 0.5, 0.5, 0.5]
    expected = ope.estimate(table, n_boot=200, clip=1.5, seed=3)
    for path in (tmp_path / "t.parquet", tmp_path / "t.csv"):
        if path.suffix == ".csv":
            table.to_csv(path, index=False)
        else:
            table.to_parquet(path)
        rc = main(["ope", "--table", str(path), "--n-boot", "200", "--clip", "1.5", "--seed", "3"])
        out = json.loads(capsys.readouterr().out)
        assert rc == 0
        assert set(out) == set(ope.ESTIMATORS)
        for name in ope.ESTIMATORS:
            for key in ("estimate", "ci_low", "ci_high", "ess", "n", "excluded"):
                assert out[name][key] == pytest.approx(expected[name][key])
        assert out["snips"]["excluded"] == 1


def test_cli_errors_name_the_file_and_column(tmp_path: Path, capsys, settings) -> None:
    path = tmp_path / "broken.csv"
    _hand_table().drop(columns="propensity").to_csv(path, index=False)
    assert main(["ope", "--table", str(path)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "'propensity'" in err
    assert main(["ope", "--table", str(tmp_path / "nope.parquet")]) == 2
    assert "not found" in capsys.readouterr().err


# --- against the simulator's truth ------------------------------------------------------------
@pytest.fixture(scope="module")
def world_setup():
    """A tiny world, its day-0 logging marginals, the oracle scorer and the per-user truth."""
    world = sim.build_world("tiny", 5)
    pool, _ = sim.logging_policy(world, DATE)
    items = np.array([f"i{r}" for r in pool], dtype=object)
    score = ope.simulator_relevance_score(world)
    users = np.array([f"u{u}" for u in np.flatnonzero(world.signup_day <= 0)], dtype=object)
    truth = ope.true_policy_value(world, users, score, items, 1.0, sim.SLATE_SIZE, n_samples=300)
    return {
        "world": world,
        "items": items,
        "score": score,
        "logging": ope.simulator_logging_marginals(world, DATE),
        "predict": ope.noisy_reward_model(world, noise=0.5, seed=1),
        "truth": pd.Series(truth, index=users),
    }


def test_intervals_cover_the_true_value(world_setup) -> None:
    """30 simulated experiments (1,500 requests each, slates of 10, logging = the simulator's
    popularity policy, target = softmax of the true relevance at temperature 1): the 95% intervals
    of SNIPS and DR cover the true value on the logged contexts in >= 85% of runs; IPS too.
    Ignoring the propensities (w = 1: the logging policy's own CTR) covers it in none."""
    s = world_setup
    runs, covered = 30, {name: 0 for name in ("ips", "snips", "dr", "naive")}
    for seed in range(runs):
        logs = ope.simulated_logs(s["world"], DATE, 1500, seed=seed)
        table = ope.policy_table(
            logs, s["score"], s["items"], temperature=1.0, logging_marginals=s["logging"],
            predict=s["predict"], n_samples=100, seed=seed,
        )  # fmt: skip
        truth = s["truth"].loc[table["user_id"]].mean()
        res = ope.estimate(table, n_boot=300, seed=seed)
        res["naive"] = ope.estimate(
            table.assign(target_propensity=table["propensity"]), n_boot=300, seed=seed
        )["snips"]
        for name in covered:
            covered[name] += res[name]["ci_low"] <= truth <= res[name]["ci_high"]
    rate = {name: c / runs for name, c in covered.items()}
    assert rate["snips"] >= 0.85, rate
    assert rate["dr"] >= 0.85, rate
    assert rate["ips"] >= 0.85, rate
    assert rate["naive"] <= 0.1, rate


def test_policy_table_on_a_simulated_day(world_setup) -> None:
    """simulate_day's own logs → table: the propensities become item-position marginals, the
    target's probabilities are proper, and SNIPS / DR land near the truth."""
    s = world_setup
    day = sim.simulate_day(s["world"], DATE)
    logs = day.events.to_pandas()
    table = ope.policy_table(
        logs, s["score"], s["items"], temperature=1.0, logging_marginals=s["logging"],
        predict=s["predict"], n_samples=200,
    )  # fmt: skip
    imp = logs[logs["event"] == "impression"]
    assert len(table) == len(imp)
    clicks = logs[logs["event"] == "click"]
    assert table["reward"].sum() == len(clicks.drop_duplicates(["request_id", "position"]))
    assert set(table.columns) >= {
        "request_id", "reward", "propensity", "target_propensity", "predicted_reward",
        "target_predicted_reward",
    }  # fmt: skip
    # slot 0 of the logging policy: its marginal equals the logged conditional propensity
    first = table[table["position"] == 0].merge(
        imp[["request_id", "position", "propensity"]], on=["request_id", "position"]
    )
    np.testing.assert_allclose(first["propensity_x"], first["propensity_y"])
    deep = table[table["position"] == 9].merge(
        imp[["request_id", "position", "propensity"]], on=["request_id", "position"]
    )
    # at slot 9 the logged conditional (mass above removed) overstates the marginal on average
    assert deep["propensity_y"].mean() > 1.2 * deep["propensity_x"].mean()
    res = ope.estimate(table, n_boot=500)
    truth = s["truth"].loc[table["user_id"]].mean()
    assert 0.8 < res["snips"]["mean_weight"] < 1.2
    for name in ("snips", "dr"):
        assert res[name]["ci_low"] <= truth <= res[name]["ci_high"], (name, res[name], truth)
    # the target (personalised) beats the popularity logging policy, and the estimate sees it
    assert res["snips"]["ci_low"] > table["reward"].mean()


def test_policy_table_items_outside_the_logging_marginals_are_excluded(world_setup) -> None:
    s = world_setup
    logs = ope.simulated_logs(s["world"], DATE, 50, seed=1)
    ids, m = s["logging"]
    drop = logs.loc[logs["event"] == "impression", "item_id"].iloc[0]
    keep = ids != drop
    table = ope.policy_table(
        logs, s["score"], s["items"], logging_marginals=(ids[keep], m[keep]), n_samples=50
    )
    n_missing = int((logs.loc[logs["event"] == "impression", "item_id"] == drop).sum())
    res = ope.estimate(table, n_boot=0)
    assert res["snips"]["excluded"] == n_missing
    assert res["dm"]["estimate"] is None  # no reward model given


def test_snips_without_any_weight_is_reported_not_divided_by_zero() -> None:
    res = ope.estimate(_hand_table().assign(target_propensity=0.0), n_boot=20)
    assert res["ips"]["estimate"] == 0.0
    assert res["snips"]["estimate"] is None and "weights are 0" in res["snips"]["skipped"]
    json.dumps(res, allow_nan=False)
