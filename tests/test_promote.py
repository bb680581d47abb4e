"""Promotion gates: the decision table, and gate_day against a real MLflow registry."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.core.settings import Settings
from pipelines.release import gate, registry
from pipelines.release.gate import Tolerances, decide
from tests.helpers import fresh_mlflow, make_bundle, make_config_bundle


def ope(estimate: float, low: float, high: float) -> dict:
    entry = {"estimate": estimate, "ci_low": low, "ci_high": high, "ess": 800.0, "n": 6000}
    return {"ips": dict(entry), "snips": entry}


CANDIDATE = {
    "version": "2",
    "validation": "passed",
    "ndcg@10": 0.30,
    "has_ranker": True,
    "auc": 0.75,
    "index_recall": 0.97,
    "index_recall_target": 0.95,
    "ope": ope(0.11, 0.10, 0.12),
}
CHAMPION = {"version": "1", "ndcg@10": 0.30, "auc": 0.75, "ope": ope(0.10, 0.09, 0.11)}
TOL = Tolerances(ndcg=0.01, auc=0.01, snips=0.0, recall_target=0.95)


def verdicts(decision: gate.Decision) -> dict[str, str]:
    return {g.name: g.verdict for g in decision.gates}


def test_all_gates_pass_makes_a_challenger(settings: Settings):
    d = decide(settings, "2026-01-02", CANDIDATE, CHAMPION, TOL)
    assert d.action == "challenger" and d.passed
    assert set(verdicts(d).values()) == {"pass"}
    assert [g.name for g in d.gates] == [
        "validation",
        "ndcg@10",
        "ranker_auc",
        "index_recall",
        "snips",
    ]


@pytest.mark.parametrize(
    "change, gate_name",
    [
        ({"validation": "failed"}, "validation"),
        ({"validation": None}, "validation"),
        ({"ndcg@10": 0.285}, "ndcg@10"),  # 0.015 worse, tolerance 0.01
        ({"ndcg@10": None}, "ndcg@10"),
        ({"auc": 0.73}, "ranker_auc"),
        ({"index_recall": 0.94}, "index_recall"),
        ({"index_recall": None}, "index_recall"),
        ({"ope": ope(0.10, 0.08, 0.12)}, "snips"),  # ci_low 0.08 < champion 0.10
    ],
)
def test_each_gate_failing_alone_blocks(settings: Settings, change: dict, gate_name: str):
    d = decide(settings, "2026-01-02", {**CANDIDATE, **change}, CHAMPION, TOL)
    assert d.action == "rejected" and not d.passed
    v = verdicts(d)
    assert v[gate_name] == "fail"
    assert [name for name, verdict in v.items() if verdict != "pass"] == [gate_name]
    assert gate_name in d.reason


def test_within_tolerance_passes(settings: Settings):
    d = decide(settings, "2026-01-02", {**CANDIDATE, "ndcg@10": 0.295, "auc": 0.745}, CHAMPION, TOL)
    assert d.action == "challenger"


def test_a_refresh_gets_a_relative_ndcg_tolerance_and_a_change_does_not(settings: Settings):
    # forward NDCG 5% below the champion's (circular: measured on the champion's own slates)
    lower = {**CANDIDATE, "ndcg@10": 0.285}
    change = decide(settings, "2026-01-02", {**lower, "kind": "change"}, CHAMPION, TOL)
    assert verdicts(change)["ndcg@10"] == "fail"
    refresh = decide(settings, "2026-01-02", {**lower, "kind": "refresh"}, CHAMPION, TOL)
    assert verdicts(refresh)["ndcg@10"] == "pass" and refresh.action == "champion"
    broken = decide(settings, "2026-01-02", {**CANDIDATE, "ndcg@10": 0.2, "kind": "refresh"},
                    CHAMPION, TOL)  # fmt: skip
    assert verdicts(broken)["ndcg@10"] == "fail"  # 33% lower is past the 10% guard


def test_ranker_auc_within_position_judges_logged_slates(settings: Settings):
    """Demo days 8-9: the champion's pooled AUC on slates it chose was inflated by their
    position bias (0.7105 vs the refresh's 0.6917, rejected); within position the refresh was
    better (0.6255 vs 0.6168). With both numbers on both sides the gate compares the latter."""
    cand = {**CANDIDATE, "auc": 0.6917, "auc_within_position": 0.6255}
    champ = {**CHAMPION, "auc": 0.7105, "auc_within_position": 0.6168}
    gate = {g.name: g for g in decide(settings, "2026-01-02", cand, champ, TOL).gates}["ranker_auc"]
    assert (gate.verdict, gate.candidate, gate.champion) == ("pass", 0.6255, 0.6168)
    assert "within position" in gate.note and "0.7105" in gate.note
    pooled = decide(settings, "2026-01-02", cand, {**champ, "auc_within_position": None}, TOL)
    assert verdicts(pooled)["ranker_auc"] == "fail"  # one side without positions: pooled AUCs


def test_first_day_champion_and_floors(settings: Settings):
    d = decide(settings, "2026-01-02", CANDIDATE, None, TOL)
    assert d.action == "champion" and d.champion_version is None
    assert verdicts(d)["ndcg@10"] == "pass" and "floor" in d.gates[1].note
    floor = decide(settings, "2026-01-02", {**CANDIDATE, "ndcg@10": 0.0}, None, TOL)
    assert floor.action == "rejected" and verdicts(floor)["ndcg@10"] == "fail"
    bad_auc = decide(settings, "2026-01-02", {**CANDIDATE, "auc": 0.5}, None, TOL)
    assert bad_auc.action == "rejected" and verdicts(bad_auc)["ranker_auc"] == "fail"


def test_missing_ope_is_reported_not_passed(settings: Settings):
    d = decide(settings, "2026-01-02", {**CANDIDATE, "ope": None}, CHAMPION, TOL)
    assert verdicts(d)["snips"] == "not_evaluated"
    assert d.action == "challenger" and "not evaluated: snips" in d.reason
    no_champ_ope = decide(settings, "2026-01-02", CANDIDATE, {**CHAMPION, "ope": None}, TOL)
    assert verdicts(no_champ_ope)["snips"] == "not_evaluated"
    strict = decide(settings, "2026-01-02", {**CANDIDATE, "ope": None}, CHAMPION,
                    Tolerances(strict=True))  # fmt: skip
    assert strict.action == "rejected" and "strict" in strict.reason


def test_no_ranker_is_skipped_and_pinned_ranker_without_auc_is_not_evaluated(settings: Settings):
    d = decide(
        settings, "2026-01-02", {**CANDIDATE, "has_ranker": False, "auc": None}, CHAMPION, TOL
    )
    assert verdicts(d)["ranker_auc"] == "skipped" and d.action == "challenger"
    d = decide(settings, "2026-01-02", {**CANDIDATE, "auc": None}, CHAMPION, TOL)
    assert verdicts(d)["ranker_auc"] == "not_evaluated"


@pytest.mark.integration  # an MLflow store (fresh_mlflow)
def test_gate_day_moves_aliases_and_records(settings: Settings, capsys: pytest.CaptureFixture):
    fresh_mlflow(settings)
    v1 = make_bundle(settings, "2026-01-01")
    # day 2: the bundle trained through day 1 is gated on day 2; no champion yet -> champion
    out = gate.gate_day(
        settings, "2026-01-02", ope=ope(0.1, 0.09, 0.11), candidate_metrics={"ndcg@10": 0.2}
    )
    assert (out["candidate_version"], out["action"]) == (v1, "champion")
    assert out["aliases"] == {"champion": v1, "challenger": None}
    assert registry.load_bundle(settings, "champion")["bundle_version"] == v1

    v2 = make_config_bundle(settings, "2026-01-02", lr=0.01)  # a change: to the A/B test
    common = {"ope": ope(0.12, 0.11, 0.13), "champion_ope": ope(0.1, 0.09, 0.11)}
    out = gate.gate_day(
        settings, "2026-01-03", candidate_metrics={"ndcg@10": 0.21},
        champion_metrics={"ndcg@10": 0.2}, **common,
    )  # fmt: skip
    assert (out["candidate_version"], out["action"]) == (v2, "challenger")
    assert out["aliases"] == {"champion": v1, "challenger": v2}

    v3 = make_config_bundle(settings, "2026-01-03", lr=0.01, recall=0.90)  # below its target
    out = gate.gate_day(
        settings, "2026-01-04", candidate_metrics={"ndcg@10": 0.3},
        champion_metrics={"ndcg@10": 0.2}, **common,
    )  # fmt: skip
    assert (out["candidate_version"], out["action"]) == (v3, "rejected")
    assert {g["name"]: g["verdict"] for g in out["gates"]}["index_recall"] == "fail"
    assert out["aliases"] == {"champion": v1, "challenger": v2}

    saved = json.loads(gate.report_path(settings, "2026-01-04").read_text())
    assert saved["action"] == "rejected" and saved["mlflow_run_id"] == out["mlflow_run_id"]
    run = registry.client(settings).get_run(out["mlflow_run_id"])
    assert run.data.params["action"] == "rejected"
    assert run.data.params["verdict.index_recall"] == "fail"
    assert run.data.metrics["index_recall.candidate"] == pytest.approx(0.90)

    # day 5: a passing bundle while challenger v2's experiment runs is held, not swapped in
    v4 = make_config_bundle(settings, "2026-01-04", lr=0.01)
    out = gate.gate_day(
        settings, "2026-01-05", candidate_metrics={"ndcg@10": 0.3},
        champion_metrics={"ndcg@10": 0.2}, **common,
    )  # fmt: skip
    assert (out["candidate_version"], out["action"]) == (v4, "held")
    assert f"{v1}-vs-{v2} is running" in out["reason"] and out["passed"]
    assert out["aliases"] == {"champion": v1, "challenger": v2}
    out = gate.gate_day(
        settings, "2026-01-05", candidate_metrics={"ndcg@10": 0.3},
        champion_metrics={"ndcg@10": 0.2}, replace_challenger=True, **common,
    )  # fmt: skip
    assert out["action"] == "challenger"
    assert out["aliases"] == {"champion": v1, "challenger": v4}

    capsys.readouterr()
    assert main(["gates", "--date", "2026-01-04"]) == 0
    text = capsys.readouterr().out
    assert "gate" in text and "candidate" in text and "tolerance" in text
    line = next(x for x in text.splitlines() if x.startswith("index_recall"))
    assert "0.9000" in line and "0.9500" in line and "fail" in line
    assert "decision: rejected" in text and "champion=" + v1 in text
    # the report file gone, the decision is read back from MLflow
    gate.report_path(settings, "2026-01-03").unlink()
    assert main(["gates", "--date", "2026-01-03", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["action"] == "challenger"
    assert main(["gates", "--date", "2030-01-01"]) == 2


@pytest.mark.integration  # an MLflow store (fresh_mlflow)
def test_gate_day_without_a_bundle_rejects(settings: Settings):
    fresh_mlflow(settings)
    out = gate.gate_day(settings, "2026-01-01")
    assert out["action"] == "rejected" and out["candidate_version"] is None
    assert "no serving bundle" in out["reason"]


@pytest.mark.integration
def test_real_models_through_registry_and_gates(settings: Settings):
    """Tiny simulated days, real two-tower + FAISS index tracked, bundled, loaded back and gated;
    the candidate's NDCG@10 computed by the gate equals the forward evaluation's."""
    from models.base import load_model
    from pipelines.data import simulate
    from pipelines.data.validate import validate_partition
    from pipelines.release.register import register_day
    from pipelines.retrieval import train
    from pipelines.retrieval.evaluate import evaluate_forward
    from pipelines.retrieval.faiss_index import ItemIndex
    from pipelines.retrieval.index import build_item_index

    days = ["2026-01-01", "2026-01-02", "2026-01-03"]
    fresh_mlflow(settings)
    simulate.simulate(settings, len(days), "tiny", 3)
    versions = []
    for d in days[:2]:
        validate_partition(settings, d)
        train.train(settings, "two_tower", d)
        build_item_index(settings, d)
        first = register_day(settings, d)
        again = register_day(settings, d)  # a rerun registers nothing new
        assert again["bundle"] == first["bundle"] and again["two_tower"]["reused"]
        assert again["index"]["version"] == first["index"]["version"]
        assert first["mf"] is None and first["ranker"] is None
        versions.append(first["bundle"])
    validate_partition(settings, days[2])
    registry.promote(settings, versions[0], "champion")

    loaded = registry.load_bundle(settings, "champion")
    model = load_model(Path(loaded["paths"]["two_tower"]) / "model")
    assert model.item_embeddings().shape[0] > 0
    assert ItemIndex.load(loaded["paths"]["index"]).model_version == f"two_tower-{days[0]}"

    out = gate.gate_day(settings, days[2])
    assert (out["candidate_version"], out["champion_version"]) == (versions[1], versions[0])
    gates = {g["name"]: g for g in out["gates"]}
    forward = evaluate_forward(settings, days[2], models=("two_tower",))
    assert gates["ndcg@10"]["candidate"] == pytest.approx(
        forward["metrics"]["two_tower"]["ndcg@10"]
    )
    assert gates["ndcg@10"]["champion"] is not None
    assert gates["index_recall"]["verdict"] == "pass"
    assert gates["snips"]["verdict"] == "not_evaluated"
    # a real retrain of the same configuration is a refresh: it replaces the champion if it passes
    assert out["kind"] == "refresh" and out["action"] in ("champion", "rejected")
    assert out["fingerprints"]["candidate"] == out["fingerprints"]["champion"] is not None


def test_snips_with_too_little_support_is_not_evaluated(settings: Settings):
    """ESS below the minimum: the SNIPS gate does not judge (and does not block) the candidate."""
    thin = {"snips": {"estimate": 0.02, "ci_low": 0.001, "ci_high": 0.09, "ess": 12.0}}
    d = decide(settings, "2026-01-02", {**CANDIDATE, "ope": thin}, CHAMPION, TOL)
    gate = {g.name: g for g in d.gates}["snips"]
    assert gate.verdict == "not_evaluated" and "effective sample size 12" in gate.note
    assert d.action == "challenger" and "not evaluated: snips" in d.reason
    strict = Tolerances(ndcg=0.01, auc=0.01, snips=0.0, recall_target=0.95, strict=True)
    assert decide(settings, "2026-01-02", {**CANDIDATE, "ope": thin}, CHAMPION, strict).action == (
        "rejected"
    )


def test_a_paired_difference_judges_candidate_and_champion_on_the_same_requests(settings):
    """Served OPE of both bundles on the same requests: the paired interval of the difference
    decides, not the candidate's own (wide) interval against the champion's estimate."""
    wide = ope(0.05, 0.03, 0.08)  # alone: 0.03 < 0.05 - 0.01 would fail
    champion = {**CHAMPION, "ope": ope(0.05, 0.045, 0.055)}
    tol = Tolerances(ndcg=0.01, auc=0.01, snips=0.01, recall_target=0.95)
    alone = {
        g.name: g
        for g in decide(settings, "2026-01-02", {**CANDIDATE, "ope": wide}, champion, tol).gates
    }
    assert alone["snips"].verdict == "fail"
    for lo, hi, verdict in ((-0.006, 0.004, "pass"), (-0.02, -0.012, "fail")):
        paired = {**wide, "vs_champion": {"estimate": (lo + hi) / 2, "ci_low": lo, "ci_high": hi}}
        d = decide(settings, "2026-01-02", {**CANDIDATE, "ope": paired}, champion, tol)
        g = {g.name: g for g in d.gates}["snips"]
        assert (
            g.verdict == verdict and g.candidate == pytest.approx(0.05 + lo) and "paired" in g.note
        )


@pytest.mark.integration  # an MLflow store (fresh_mlflow)
def test_gate_with_a_test_window_judges_the_bundle_trained_before_it(
    settings: Settings, capsys: pytest.CaptureFixture
):
    """H test days: the newest bundle trained through D−H is gated, the window recorded."""
    import dataclasses

    fresh_mlflow(settings)
    versions = [make_bundle(settings, f"2026-01-0{n}") for n in range(1, 5)]
    three = dataclasses.replace(settings, gate_test_days=3)
    assert gate.gated_bundle_version(three, dt.date(2026, 1, 5)) == versions[1]
    assert gate.gated_bundle_version(settings, dt.date(2026, 1, 5)) == versions[3]
    assert gate.gated_bundle_version(three, dt.date(2026, 1, 3)) is None

    out = gate.gate_day(three, "2026-01-05", candidate_metrics={"ndcg@10": 0.2})
    assert (out["candidate_version"], out["action"]) == (versions[1], "champion")
    assert out["test_days"] == 3 and out["test_window"] == ["2026-01-03", "2026-01-05"]
    capsys.readouterr()
    assert main(["gates", "--date", "2026-01-05"]) == 0
    assert "test window 2026-01-03..2026-01-05" in capsys.readouterr().out

    none = gate.gate_day(three, "2026-01-03")
    assert none["candidate_version"] is None and "trained through 2025-12-31" in none["reason"]
    daily = gate.gate_day(settings, "2026-01-06", candidate_metrics={"ndcg@10": 0.2})
    assert daily["candidate_version"] == versions[3] and daily["test_days"] == 1
