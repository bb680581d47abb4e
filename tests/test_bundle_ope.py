"""The gate's OPE of each bundle's served policy: the report record, the gate decision carrying
the estimate, and a bundle whose served policy is worse judged worse (the replay stubbed: each
bundle's policy is given, the logs are a served policy's with known relevance)."""

from __future__ import annotations

import datetime as dt
import json
import types

import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.core import schema
from pipelines.core.ope_reports import read_ope_report, relative_error, target_of, write_ope_report
from pipelines.core.settings import Settings
from pipelines.release import bundle_ope, gate, registry
from serving import rerank
from tests.helpers import make_bundle, make_config_bundle
from tests.synthetic_ope import K, pool_params, truth
from tests.synthetic_ope import logs as make_logs

DAY = dt.date(2026, 1, 3)
GOOD = [6, 5, 4, 3, 2, 1, 0]  # the target's order of each user's 7 items: best first
BAD = [0, 1, 2, 3, 4, 5, 6]  # worst first


def _result(estimate: float, truth: float | None) -> dict:
    """A :func:`pipelines.release.served_ope.evaluate_served` result, shortened."""
    entry = {"estimate": estimate, "ci_low": estimate - 0.01, "ci_high": estimate + 0.01,
             "ess": 800.0, "mean_weight": 0.9, "n": 6000}  # fmt: skip
    out = {"date": DAY.isoformat(), "k": 10, "rows": 6000, "requests": 600, "policy": "7",
           "examination": {"eta": 0.7}, "logged_ctr": 0.04,
           "estimates": {"pbm_snips": entry, "pbm_dr": dict(entry, estimate=estimate + 0.001),
                         "slot_snips": dict(entry, estimate=0.2)}}  # fmt: skip
    if truth is not None:
        out["truth"] = truth
    return out


def test_served_report_keeps_the_truth_and_reads_back(settings: Settings):
    rep = bundle_ope.served_report(_result(0.055, 0.05), "bundle-7", 12.3, 600)
    assert rep["target"] == "served" and rep["policy"] == "bundle-7"
    assert rep["bundle_version"] == "7" and rep["max_requests"] == 600
    assert rep["estimates"]["snips"]["estimate"] == 0.055  # the headline: PBM SNIPS
    assert rep["estimates"]["snips"]["estimator"] == "pbm_snips"
    assert rep["estimates"]["dr"]["estimate"] == pytest.approx(0.056)
    assert rep["rel_error"] == pytest.approx(0.1)
    write_ope_report(settings, rep)
    back = read_ope_report(settings, DAY, "bundle-7")
    assert back == rep and target_of(back) == "served"
    assert relative_error(back) == pytest.approx(0.1)
    # no truth (real data), an older softmax report
    assert bundle_ope.served_report(_result(0.05, None), "b", 1.0, None)["rel_error"] is None
    assert target_of({"estimates": {}}) == "softmax"


def _write_logs(settings: Settings) -> dict:
    """D's validated logs from a served policy over 6 users (:func:`tests.test_served_ope._logs`),
    slates of ``K``; returns the world (relevance, each user's items)."""
    imp, world = make_logs(6, 3000, rate=0.4, seed=3)
    ts = pd.Timestamp(DAY, tz="UTC") + pd.Timedelta(hours=12)
    rows = []
    for r in imp.itertuples():
        base = {"ts": ts, "user_id": r.user_id, "item_id": r.item_id, "value": 1.0,
                "request_id": r.request_id, "position": r.position, "arm": "champion",
                "model_version": "bundle-1", "propensity": r.propensity}  # fmt: skip
        rows.append({**base, "event_id": f"{r.request_id}-{r.position}i", "event": "impression"})
        if r.reward:
            rows.append({**base, "event_id": f"{r.request_id}-{r.position}c", "event": "click"})
    table = schema.conform(pd.DataFrame(rows), schema.INTERACTIONS)
    schema.write_partition_atomic(table, settings.validated_dir, DAY)
    return {**world, "imp": imp}


def _stub_replay(monkeypatch: pytest.MonkeyPatch, world: dict, orders: dict[str, list]) -> None:
    """Bundle ``v`` loads as a stub; the replay answers each user with the policy that orders
    its items by ``orders[v]``."""
    import pipelines.loop.replay as replay
    import serving.bundle as serving_bundle

    alpha, beta = pool_params(3)
    probs = rerank.thompson_probabilities(alpha, beta, 512).tolist()

    def serve_users(settings, bundle, users, cfg=None, k=10, **_):  # noqa: ANN001, ANN202
        out = []
        for u in users:
            items = [f"i{world['perms'][int(u[1:])][j]}" for j in orders[bundle.version]]
            policy = {"rate": 0.4, "exploit": items[:4], "pool": items[4:7], "pool_probs": probs}
            out.append({"user_id": u, "items": [], "policy": policy})
        return out

    def load(settings, version, as_of=None):  # noqa: ANN001, ANN202
        world.setdefault("loaded_as_of", []).append(as_of)
        return types.SimpleNamespace(version=version)

    monkeypatch.setattr(serving_bundle, "load", load)
    monkeypatch.setattr(replay, "serve_users", serve_users)


def _true(world: dict, order: list[int]) -> float:
    alpha, beta = pool_params(3)
    probs = rerank.thompson_probabilities(alpha, beta, 512).tolist()
    pol = {}
    for u, perm in world["perms"].items():
        items = [f"i{perm[j]}" for j in order]
        p = {"rate": 0.4, "exploit": items[:4], "pool": items[4:7], "pool_probs": probs}
        pol[f"u{u}"] = rerank.policy_probabilities(p, K)
    return truth(world["imp"], world, pol)


@pytest.mark.integration  # an MLflow registry
def test_a_worse_served_policy_is_judged_worse_and_recorded(
    mlflow_settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
):
    s = mlflow_settings
    v1 = make_bundle(s, "2026-01-01")
    registry.promote(s, v1, "champion")
    v2 = make_config_bundle(s, "2026-01-02", lr=0.01)
    world = _write_logs(s)
    _stub_replay(monkeypatch, world, {v1: GOOD, v2: BAD})  # the candidate serves worse

    inputs = bundle_ope.gate_inputs(s, DAY, max_requests=None)
    assert inputs["candidate_version"] == v2
    # both replayed with the item table the service had on DAY (the day before's), not DAY's own
    day_before = (pd.Timestamp(DAY) - pd.Timedelta(days=1)).date().isoformat()
    assert world["loaded_as_of"] == [day_before, day_before]
    cand, champ = inputs["ope"]["snips"], inputs["champion_ope"]["snips"]
    assert _true(world, BAD) < 0.8 * _true(world, GOOD)  # the two policies differ
    assert cand["estimate"] < champ["estimate"] and cand["ci_high"] < champ["estimate"]
    for est, order in ((cand, BAD), (champ, GOOD)):
        assert est["estimate"] == pytest.approx(_true(world, order), rel=0.2)
    assert min(cand["ess"], champ["ess"]) >= gate.Tolerances().snips_min_ess
    pair = inputs["ope"]["vs_champion"]  # the same estimates, paired on the same requests
    assert pair["estimate"] == pytest.approx(cand["estimate"] - champ["estimate"])
    assert pair["ci_low"] < pair["estimate"] < pair["ci_high"] < 0 and pair["champion"] == v1
    assert (
        pair["ci_high"] - pair["ci_low"]
        < cand["ci_high"] - cand["ci_low"] + champ["ci_high"] - champ["ci_low"]
    )
    assert read_ope_report(s, DAY, f"bundle-{v2}")["target"] == "served"

    out = gate.gate_day(
        s, DAY, candidate_version=inputs["candidate_version"], ope=inputs["ope"],
        champion_ope=inputs["champion_ope"], ope_reports=inputs["reports"],
        candidate_metrics={"ndcg@10": 0.3}, champion_metrics={"ndcg@10": 0.3},
    )  # fmt: skip
    snips = {g["name"]: g for g in out["gates"]}["snips"]
    assert snips["verdict"] == "fail" and out["action"] == "rejected" and "paired" in snips["note"]
    assert snips["candidate"] == pytest.approx(champ["estimate"] + pair["ci_low"])
    assert out["ope"]["candidate"]["snips"] == pytest.approx(cand["estimate"])
    assert out["ope"]["champion"]["snips"] == pytest.approx(champ["estimate"])
    assert out["ope"]["candidate"]["target"] == "served"
    assert out["ope"]["candidate"]["requests"] == 3000
    assert "OPE of the candidate's served policy: SNIPS" in gate.format_decision(out)

    # recloop ope --date D --bundle champion: the champion's served policy, every request
    capsys.readouterr()
    assert main(["ope", "--date", str(DAY), "--bundle", "champion", "--max-requests", "0"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["policy"], printed["target"], printed["requests"]) == (
        f"bundle-{v1}",
        "served",
        3000,
    )
    assert printed["estimates"]["snips"]["estimate"] == pytest.approx(champ["estimate"])
    assert main(["ope", "--date", str(DAY)]) == 2  # neither a table nor a bundle
