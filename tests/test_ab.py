"""A/B analysis against a real MLflow registry and validated partitions written here.

Two arms with controlled click rates (Bernoulli per impression, users sticky to an arm); the
mSPRT decisions, alias moves, reports and the ``recloop ab`` output are checked."""

from __future__ import annotations

import datetime as dt
import json
import math

import numpy as np
import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.core import schema
from pipelines.core.settings import Settings
from pipelines.experiments import ab
from pipelines.release import registry
from tests.helpers import DAGS, START, write_day

CFG = ab.ABConfig(alpha=0.05, tau=0.01, min_impressions=2_000, max_days=7)


@pytest.fixture()
def ws(ab_registry: tuple[Settings, str, str]) -> tuple[Settings, str, str]:
    """This module's name for conftest's ``ab_registry``: champion and challenger, no data."""
    return ab_registry


def run_days(s: Settings, champ: str, chall: str, ctr: tuple[float, float], days: int,
             cfg: ab.ABConfig = CFG, stop_on_terminal: bool = True) -> list[ab.Decision]:  # fmt: skip
    exp = ab.experiment_name(champ, chall)
    out = []
    for k in range(days):
        day = START + dt.timedelta(days=k)
        write_day(s, day, champ, chall, ctr)
        out.append(ab.analyze(s, exp, day, cfg))
        if stop_on_terminal and out[-1].action in ab.TERMINAL:
            break
    return out


def test_better_challenger_is_promoted_within_horizon(ws):
    s, champ, chall = ws
    decisions = run_days(s, champ, chall, (0.05, 0.08), CFG.max_days)
    assert decisions[-1].action == ab.PROMOTE, [d.reason for d in decisions]
    assert len(decisions) <= CFG.max_days
    assert all(d.action == ab.CONTINUE for d in decisions[:-1])
    assert registry.get_alias(s, "champion") == chall
    assert registry.get_alias(s, "challenger") is None
    last = decisions[-1]
    assert last.diff["p_value"] <= CFG.alpha and last.diff["lower"] > 0
    assert 0.015 < last.diff["ctr_diff"] < 0.045
    arms = {a["arm"]: a for a in last.arms}
    assert arms["challenger"]["impressions"] == 3_000 * len(decisions)
    assert arms["champion"]["ctr_lo"] < 0.05 < arms["champion"]["ctr_hi"]
    # recorded: report file and MLflow run with the numbers
    rec = json.loads(ab.report_path(s, last.experiment, last.date).read_text())
    assert rec["action"] == ab.PROMOTE and rec["aliases"]["champion"] == chall
    assert rec["config"]["min_impressions"] == CFG.min_impressions
    run = registry.client(s).get_run(rec["mlflow_run_id"])
    assert run.data.params["action"] == ab.PROMOTE
    assert run.data.metrics["challenger.impressions"] == arms["challenger"]["impressions"]
    assert math.isclose(run.data.metrics["diff.p_value"], last.diff["p_value"], rel_tol=1e-9)
    # a later date: the experiment is over, nothing applied again
    write_day(s, START + dt.timedelta(days=len(decisions)), champ, chall, (0.05, 0.08))
    later = ab.analyze(s, last.experiment, START + dt.timedelta(days=len(decisions)), CFG)
    assert later.action == ab.PROMOTE and "ended on" in later.reason
    assert registry.get_alias(s, "champion") == chall


def test_worse_challenger_is_rolled_back(ws):
    s, champ, chall = ws
    decisions = run_days(s, champ, chall, (0.08, 0.04), CFG.max_days)
    assert decisions[-1].action == ab.ROLLBACK, [d.reason for d in decisions]
    assert "ctr_drop" in decisions[-1].reason
    assert registry.get_alias(s, "challenger") is None
    assert registry.get_alias(s, "champion") == champ


def test_equal_arms_continue_until_max_duration_then_stop(ws):
    s, champ, chall = ws
    decisions = run_days(s, champ, chall, (0.06, 0.06), CFG.max_days)
    actions = [d.action for d in decisions]
    assert actions == [ab.CONTINUE] * (CFG.max_days - 1) + [ab.STOP], [d.reason for d in decisions]
    assert decisions[-1].day == CFG.max_days
    assert registry.get_alias(s, "champion") == champ
    assert registry.get_alias(s, "challenger") is None
    # the always-valid p-value never increases over looks, the interval only shrinks
    looks = decisions[-1].looks
    assert len(looks) == CFG.max_days
    ps = [lk["p_value"] for lk in looks]
    assert all(b <= a for a, b in zip(ps, ps[1:], strict=False))
    assert all(b["upper"] <= a["upper"] and b["lower"] >= a["lower"]
               for a, b in zip(looks, looks[1:], strict=False))  # fmt: skip
    assert [d.diff["p_value"] for d in decisions] == ps


def test_minimum_sample_holds_back_a_decision(ws):
    s, champ, chall = ws
    cfg = ab.ABConfig(min_impressions=10_000, max_days=30)
    decisions = run_days(s, champ, chall, (0.05, 0.09), 5, cfg)
    # 3 000 challenger impressions a day: no promotion before day 4 whatever the p-value
    assert [d.action for d in decisions[:3]] == [ab.CONTINUE] * 3
    assert decisions[2].diff["p_value"] <= cfg.alpha
    assert "minimum sample" in decisions[2].reason
    assert decisions[3].action == ab.PROMOTE


def test_rerun_same_date_is_idempotent(ws):
    s, champ, chall = ws
    exp = ab.experiment_name(champ, chall)
    for k in range(3):
        write_day(s, START + dt.timedelta(days=k), champ, chall, (0.06, 0.06))
    first = ab.analyze(s, exp, START + dt.timedelta(days=2), CFG)
    # a restart: the same day analysed again (and the earlier days too) counts nothing twice
    ab.analyze(s, exp, START, CFG)
    again = ab.analyze(s, exp, START + dt.timedelta(days=2), CFG)
    assert again.action == first.action == ab.CONTINUE
    assert again.arms == first.arms and again.looks == first.looks and again.diff == first.diff
    assert {a["arm"]: a["impressions"] for a in again.arms} == {
        "champion": 9_000, "challenger": 9_000,
    }  # fmt: skip
    # duplicated log rows (e.g. a file ingested twice) are counted once
    day = START + dt.timedelta(days=2)
    dup = schema.read_partition(s.validated_dir, day)
    schema.write_partition_atomic(pd.concat([dup, dup]), s.validated_dir, day)
    assert ab.analyze(s, exp, day, CFG).arms == first.arms
    # a promotion re-applied is a no-op
    promoted = run_days(s, champ, chall, (0.04, 0.09), 7)
    assert promoted[-1].action == ab.PROMOTE
    final = ab.analyze(s, exp, promoted[-1].date, CFG)
    assert final.action == ab.PROMOTE and registry.get_alias(s, "champion") == chall


def test_other_experiments_rows_are_not_counted(ws):
    s, champ, chall = ws
    write_day(s, START, champ, chall, (0.05, 0.05))
    write_day(s, START + dt.timedelta(days=1), champ, "99", (0.05, 0.05))  # another challenger
    t = ab.arm_stats(s, ab.experiment_name(champ, chall), START, START + dt.timedelta(days=1))
    assert t.loc["challenger", "impressions"] == 3_000
    assert t.loc["champion", "impressions"] == 6_000
    assert t.loc["champion", "users"] <= 400
    assert ab.start_date(s, ab.experiment_name(champ, "99"), START) is None
    with pytest.raises(ValueError, match="expected '<champion version>-vs-"):
        ab.parse_experiment("champion-vs-challenger")


def test_recloop_ab_command(ws, capsys):
    s, champ, chall = ws
    exp = ab.experiment_name(champ, chall)
    assert ab.analyze_current(s)["action"] == "none"  # no validated data yet
    decisions = run_days(s, champ, chall, (0.05, 0.08), CFG.max_days)
    capsys.readouterr()
    assert main(["ab", "--experiment", exp]) == 0
    out = capsys.readouterr().out
    assert f"bundle-{champ}" in out and "champion" in out and "challenger" in out
    assert out.count("continue") == len(decisions) - 1 and "promote" in out
    assert str(3_000 * len(decisions)) in out
    assert main(["ab", "--experiment", exp, "--date", START.isoformat(), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {a["arm"]: a["impressions"] for a in data["arms"]} == {
        "champion": 3_000, "challenger": 3_000,
    }  # fmt: skip
    assert [h["action"] for h in data["history"]][-1] == ab.PROMOTE
    assert main(["ab", "--experiment", "nope"]) == 2


def test_analyze_current_follows_the_aliases(ws):
    s, champ, chall = ws
    write_day(s, START, champ, chall, (0.05, 0.05))
    out = ab.analyze_current(s, None, CFG)
    assert out["experiment"] == f"{champ}-vs-{chall}" and out["date"] == START.isoformat()
    assert out["action"] == ab.CONTINUE
    registry.client(s).delete_registered_model_alias(registry.BUNDLE, "challenger")
    assert ab.analyze_current(s, START, CFG)["action"] == "none"


@pytest.mark.integration  # Airflow parses the DAG in-process
def test_dag_parses_with_asset_schedule():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / "recloop_ab.py"))
    assert not bag.import_errors, bag.import_errors
    dag = bag.dags["recloop_ab"]
    assert "recloop" in dag.tags and dag.doc_md and "mSPRT" in dag.doc_md
    assert [t.task_id for t in dag.tasks] == ["analyze"]
    assert dag.tasks[0].retries >= 1
    assert "validated-interactions" in str(dag.timetable.asset_condition)


def test_msprt_false_positive_rate_with_daily_looks():
    """200 A/A experiments, 14 daily looks of 3 000 impressions per arm at CTR 0.05: the share
    ever reaching p <= alpha stays within alpha (+ slack for 200 draws); with a true +0.02 lift
    almost all reach it."""
    rng = np.random.default_rng(7)
    n_exp, days, per_day, alpha = 200, 14, 3_000, 0.05

    def reject_share(p_a: float, p_b: float) -> float:
        ca = rng.binomial(per_day, p_a, size=(n_exp, days)).cumsum(axis=1)
        cb = rng.binomial(per_day, p_b, size=(n_exp, days)).cumsum(axis=1)
        n = per_day * np.arange(1, days + 1)
        ra, rb = ca / n, cb / n
        var = ra * (1 - ra) / n + rb * (1 - rb) / n
        lam = ab.msprt_lambda(rb - ra, var, 0.01)
        p = np.minimum.accumulate(np.minimum(1.0, 1.0 / lam), axis=1)
        assert np.all(np.diff(p, axis=1) <= 0)
        return float((p[:, -1] <= alpha).mean())

    assert reject_share(0.05, 0.05) <= alpha + 0.03
    assert reject_share(0.05, 0.07) >= 0.9


def test_always_valid_interval_matches_the_test():
    """The confidence sequence excludes 0 exactly when the p-value is <= alpha (one look)."""
    for delta in np.linspace(-0.03, 0.03, 25):
        look = ab.always_valid([float(delta)], [1e-4], 0.01, 0.05)[0]
        assert (look["p_value"] <= 0.05) == (look["lower"] > 0 or look["upper"] < 0)
    assert all(math.isnan(x) for x in ab.wilson(0, 0))
    lo, hi = ab.wilson(50, 1000)
    assert lo < 0.05 < hi
    with pytest.raises(ValueError, match="max_days"):
        ab.ABConfig(max_days=0)


def test_config_from_environment_names_a_bad_variable():
    cfg = ab.ABConfig.from_env({"RECLOOP_AB_MIN_IMPRESSIONS": "500", "RECLOOP_AB_ALPHA": "0.01"})
    assert (cfg.min_impressions, cfg.alpha, cfg.max_days) == (500, 0.01, ab.ABConfig().max_days)
    assert ab.ABConfig.from_env({}) == ab.ABConfig()
    with pytest.raises(ValueError, match="RECLOOP_AB_MAX_DAYS"):
        ab.ABConfig.from_env({"RECLOOP_AB_MAX_DAYS": "two weeks"})
    with pytest.raises(ValueError, match="alpha"):
        ab.ABConfig.from_env({"RECLOOP_AB_ALPHA": "1.5"})
