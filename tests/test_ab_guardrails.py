"""Service guardrails and OPE beside A/B, against a real MLflow registry, validated partitions
and request logs written by the service's own writer (``serving.logging.RequestLog``)."""

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
from serving.logging import RequestLog, request_row, requests_dir
from tests.helpers import START, write_day

CFG = ab.ABConfig(alpha=0.05, tau=0.01, min_impressions=2_000, max_days=7)
WALL = pd.Timestamp("2026-03-10 09:00", tz="UTC")  # the service's wall clock (not the sim date)


@pytest.fixture()
def ws(ab_registry: tuple[Settings, str, str]) -> tuple[Settings, str, str]:
    """This module's name for conftest's ``ab_registry``: champion and challenger, no data."""
    return ab_registry


def log_requests(
    s: Settings,
    day: dt.date,
    latency: dict[str, float],
    errors: dict[str, int] | None = None,
    versions: dict[str, str] | None = None,
    seed: int = 0,
) -> None:
    """Request-log rows for every request of ``day``'s validated partition (status 200, latency
    ~ ``latency[arm]`` ms), plus ``errors[arm]`` failed (500) requests of that arm with no
    impression, interleaved in time; written by the service's RequestLog."""
    rng = np.random.default_rng([seed, day.toordinal()])
    rows = schema.read_partition(s.validated_dir, day)
    imp = rows[rows["event"] == "impression"].drop_duplicates("request_id")
    out, t = [], WALL + pd.Timedelta(days=(day - START).days)
    for i, r in enumerate(imp.itertuples()):
        lat = latency[r.arm] * rng.uniform(0.8, 1.2)
        ts = t + pd.Timedelta(milliseconds=10 * i)
        out.append(request_row(r.request_id, ts, r.user_id, r.arm, r.model_version, 200, lat,
                               n_items=5))  # fmt: skip
    n = len(out)
    for arm, k in (errors or {}).items():
        mv = (versions or {})[arm]
        for j in range(k):
            ts = t + pd.Timedelta(milliseconds=10 * int(rng.integers(n)))
            out.append(
                request_row(f"err-{day}-{arm}-{mv}-{j}", ts, f"{arm}-u{j}", arm, mv, 500, 3.0)
            )
    writer = RequestLog(requests_dir(s.home))
    writer.add(out)
    assert writer.flush()


def by_name(dec: ab.Decision) -> dict[str, dict]:
    return {g["name"]: g for g in dec.guardrails}


def test_slow_challenger_is_rolled_back_once_the_sample_is_met(ws):
    s, champ, chall = ws
    exp = ab.experiment_name(champ, chall)
    cfg = ab.ABConfig(min_impressions=4_000, max_days=7)
    write_day(s, START, champ, chall, (0.06, 0.06))
    log_requests(s, START, {"champion": 40.0, "challenger": 120.0})
    first = ab.analyze(s, exp, START, cfg)
    g = by_name(first)["latency_p99"]
    assert first.action == ab.CONTINUE and g["verdict"] == ab.PENDING  # 3 000 < 4 000
    assert 2.4 < g["value"] < 3.6 and g["challenger"] > g["champion"] > 40
    day2 = START + dt.timedelta(days=1)
    write_day(s, day2, champ, chall, (0.06, 0.06))
    log_requests(s, day2, {"champion": 40.0, "challenger": 120.0})
    dec = ab.analyze(s, exp, day2, cfg)
    assert dec.action == ab.ROLLBACK, dec.reason
    assert "service guardrail failed: latency_p99" in dec.reason
    assert by_name(dec)["error_rate"]["verdict"] == "pass"
    assert dec.service["challenger"]["requests"] == 2 * 600
    assert registry.get_alias(s, "challenger") is None
    assert registry.get_alias(s, "champion") == champ
    rec = json.loads(ab.report_path(s, exp, day2).read_text())
    assert {g["name"] for g in rec["guardrails"] if g.get("kind") == "service"} == {
        "latency_p99", "error_rate", "degraded_rate", "catalog_coverage",
    }  # fmt: skip


def test_tiny_latencies_under_the_floor_do_not_fire(ws):
    s, champ, chall = ws
    write_day(s, START, champ, chall, (0.06, 0.06))
    log_requests(s, START, {"champion": 2.0, "challenger": 6.0})  # 3x, but a few ms
    dec = ab.analyze(s, ab.experiment_name(champ, chall), START, CFG)
    g = by_name(dec)["latency_p99"]
    assert g["verdict"] == "pass" and g["value"] == pytest.approx(1.0)
    assert dec.action == ab.CONTINUE


def test_failing_challenger_requests_are_found_by_arm_version_and_time(ws):
    s, champ, chall = ws
    exp = ab.experiment_name(champ, chall)
    write_day(s, START, champ, chall, (0.06, 0.06))
    # 150 challenger 500s within the experiment's span (no impression: not in validated rows);
    # 400 500s of another challenger bundle, and 500s after the span, must not count
    log_requests(s, START, {"champion": 30.0, "challenger": 30.0}, {"challenger": 150},
                 {"challenger": f"bundle-{chall}"})  # fmt: skip
    log_requests(s, START, {"champion": 30.0, "challenger": 30.0}, {"challenger": 400},
                 {"challenger": "bundle-99"}, seed=1)  # fmt: skip
    later = RequestLog(requests_dir(s.home))
    later.add([request_row(f"late-{j}", WALL + pd.Timedelta(days=2), "u", "challenger",
                           f"bundle-{chall}", 500, 3.0) for j in range(300)])  # fmt: skip
    later.flush()
    dec = ab.analyze(s, exp, START, CFG, apply=False)
    svc = dec.service["challenger"]
    assert svc["requests"] == 600 + 150 and svc["errors"] == 150
    assert svc["error_rate"] == pytest.approx(150 / 750)
    assert dec.service["champion"]["errors"] == 0
    assert dec.action == ab.ROLLBACK and "error_rate" in dec.reason


def test_no_request_log_means_no_data_not_a_failure(ws):
    s, champ, chall = ws
    exp = ab.experiment_name(champ, chall)
    write_day(s, START, champ, chall, (0.06, 0.06))
    dec = ab.analyze(s, exp, START, CFG)
    g = by_name(dec)
    for name in ("latency_p99", "error_rate", "degraded_rate"):
        assert g[name]["verdict"] == ab.NO_DATA and g[name]["value"] is None
    assert g["catalog_coverage"]["verdict"] == "pass"  # from the impressions themselves
    assert dec.action == ab.CONTINUE
    assert registry.get_alias(s, "challenger") == chall


def test_collapsed_catalog_coverage_is_rolled_back(ws):
    s, champ, chall = ws
    write_day(s, START, champ, chall, (0.06, 0.06), n=(12_000, 3_000))
    part = schema.read_partition(s.validated_dir, START)
    ch = part["arm"] == "challenger"
    part.loc[ch, "item_id"] = "i" + (part.loc[ch, "position"] % 3).astype(str)  # 3 items only
    schema.write_partition_atomic(schema.conform(part, schema.INTERACTIONS), s.validated_dir, START)
    dec = ab.analyze(s, ab.experiment_name(champ, chall), START, CFG)
    g = by_name(dec)["catalog_coverage"]
    # the champion's 100 items rarefied to 3 000 impressions: still all ~100
    assert g["champion"] == pytest.approx(100, abs=0.5) and g["challenger"] == pytest.approx(3)
    assert g["verdict"] == "fail" and dec.action == ab.ROLLBACK


def test_rarefied_distinct_matches_enumeration():
    assert ab.rarefied_distinct(np.array([2, 1]), 2) == pytest.approx(5 / 3)
    assert ab.rarefied_distinct(np.array([2, 1]), 1) == pytest.approx(1.0)
    assert ab.rarefied_distinct(np.array([5, 3, 1]), 9) == 3.0
    rng = np.random.default_rng(0)
    counts = np.array([50, 20, 5, 1, 1, 1])
    pool = np.repeat(np.arange(len(counts)), counts)
    sim = np.mean([len(set(rng.choice(pool, 10, replace=False))) for _ in range(20_000)])
    assert ab.rarefied_distinct(counts, 10) == pytest.approx(sim, abs=0.03)
    with pytest.raises(ValueError, match="min_coverage_ratio"):
        ab.ABConfig(min_coverage_ratio=2.0)


# --- OPE beside A/B ---------------------------------------------------------------------------


def write_world_day(s: Settings, day: dt.date, champ: str, chall: str, seed: int = 0) -> None:
    """A validated partition with the simulator's user / item ids: per arm 300 slates of 5,
    clicks drawn from the truth; plus rows of another challenger bundle (not this experiment)."""
    from pipelines.data.simulate import true_click_prob

    world = load_tiny_world(s)
    rng = np.random.default_rng([seed, day.toordinal()])
    rows, ts = [], pd.Timestamp(day, tz="UTC") + pd.Timedelta(hours=12)
    n_items = min(world.n_items, 200)
    for arm, version, top in (("champion", champ, 40), ("challenger", chall, n_items),
                              ("challenger", "99", 10)):  # fmt: skip
        for r in range(300):
            user = f"u{rng.integers(world.n_users)}"
            items = [f"i{x}" for x in rng.choice(top, 5, replace=False)]
            p = true_click_prob(world, [user] * 5, items, np.arange(5))
            req = f"{day}-{arm}-{version}-{r}"
            for pos, (item, pc) in enumerate(zip(items, p, strict=True)):
                base = {"ts": ts, "user_id": user, "item_id": item, "value": 1.0,
                        "request_id": req, "position": pos, "arm": arm,
                        "model_version": f"bundle-{version}", "propensity": 0.5}  # fmt: skip
                rows.append({**base, "event_id": f"{req}-{pos}i", "event": "impression"})
                if rng.random() < pc:
                    rows.append({**base, "event_id": f"{req}-{pos}c", "event": "click"})
    table = schema.conform(pd.DataFrame(rows), schema.INTERACTIONS)
    schema.write_partition_atomic(table, s.validated_dir, day)


def load_tiny_world(s: Settings):
    from pipelines.data.simulate import build_world, load_world, world_meta

    path = s.truth_dir / "world.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(world_meta(build_world("tiny", 3, START))))
    return load_world(s)


def write_ope(s: Settings, day: dt.date, version: str, snips: float, dr: float | None) -> None:
    """A report shaped like ``pipelines.release.bundle_ope.evaluate_bundle``'s."""
    est = {"snips": {"estimate": snips, "ci_low": snips - 0.01, "ci_high": snips + 0.01},
           "dr": {"estimate": dr}, "ips": {"estimate": snips + 0.002}}  # fmt: skip
    path = s.reports_dir / "ope" / f"date={day}" / f"bundle-{version}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"date": day.isoformat(), "policy": f"bundle-{version}",
                                "estimates": est, "truth": 0.5}))  # fmt: skip


def test_predicted_and_truth_beside_the_measured_ctr(ws, capsys):
    from pipelines.data.simulate import true_click_prob

    s, champ, chall = ws
    exp = ab.experiment_name(champ, chall)
    gated = START - dt.timedelta(days=1)
    # the gate made the challenger the challenger on `gated`, with OPE of both bundles that day
    gate = {"date": gated.isoformat(), "candidate_version": chall, "action": "challenger"}
    schema.write_json_atomic(gate, s.reports_dir / "gates" / f"date={gated}.json")
    write_ope(s, gated, chall, 0.061, 0.059)
    write_ope(s, gated, champ, 0.052, None)
    write_ope(s, gated - dt.timedelta(days=1), chall, 0.9, 0.9)  # older: not the gate's
    write_ope(s, START + dt.timedelta(days=1), champ, 0.7, 0.7)  # after the start: never used
    days = [START, START + dt.timedelta(days=1)]
    for day in days:
        write_world_day(s, day, champ, chall)
    dec = ab.analyze(s, exp, days[-1], CFG, apply=False)

    pred = dec.predicted
    assert pred["challenger"]["snips"] == pytest.approx(0.061)
    assert pred["challenger"]["dr"] == pytest.approx(0.059)
    assert pred["champion"]["snips"] == pytest.approx(0.052) and pred["champion"]["dr"] is None
    assert pred["champion"]["date"] == gated.isoformat()
    assert pred["challenger"]["source"].endswith(f"date={gated}/bundle-{chall}.json")
    for arm in ab.ARMS:
        p = pred[arm]
        assert set(p) == {"snips", "ci_low", "ci_high", "dr", "date", "source"}
        assert 0 <= p["ci_low"] <= p["snips"] <= p["ci_high"] <= 1

    # truth: the mean true click probability of each arm's impressions, computed here directly
    world = load_tiny_world(s)
    frames = pd.concat([schema.read_partition(s.validated_dir, d) for d in days])
    imp = frames[frames["event"] == "impression"]
    for arm, version in (("champion", champ), ("challenger", chall)):
        mine = imp[(imp["arm"] == arm) & (imp["model_version"] == f"bundle-{version}")]
        assert len(mine) == 2 * 300 * 5
        want = true_click_prob(world, mine["user_id"], mine["item_id"], mine["position"]).mean()
        assert dec.truth[arm] == pytest.approx(float(want), rel=1e-12)
        assert 0 < dec.truth[arm] < 1
    # the measured CTR estimates the truth (same unit: clicks per impression)
    arms = {a["arm"]: a for a in dec.arms}
    for arm in ab.ARMS:
        t, n = dec.truth[arm], arms[arm]["impressions"]
        assert abs(arms[arm]["ctr"] - t) < 4 * math.sqrt(t * (1 - t) / n)
    rec = json.loads(ab.report_path(s, exp, days[-1]).read_text())
    assert rec["predicted"] == json.loads(json.dumps(pred)) and rec["truth"] == dec.truth
    run = registry.client(s).get_run(rec["mlflow_run_id"])
    assert math.isclose(run.data.metrics["challenger.ope_snips"], 0.061)

    capsys.readouterr()
    assert main(["ab", "--experiment", exp]) == 0
    out = capsys.readouterr().out
    assert "OPE predicted (SNIPS [CI])" in out and "A/B measured CTR [CI]" in out
    assert "0.0610 [0.0510, 0.0710]" in out and f"{dec.truth['challenger']:.4f}" in out
    assert "clicks per impression" in out and "latency_p99" in out and "no data" in out


def test_no_world_no_ope_reports_gives_nulls(ws):
    s, champ, chall = ws
    write_day(s, START, champ, chall, (0.06, 0.06))
    dec = ab.analyze(s, ab.experiment_name(champ, chall), START, CFG, apply=False)
    assert dec.predicted == {"champion": None, "challenger": None}
    assert dec.truth == {"champion": None, "challenger": None}
    assert "-" in ab.format_ope(dec.to_dict())
