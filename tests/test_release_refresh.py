"""Refresh or change (pipelines/release/fingerprint.py, gate.gate_day): the configuration
fingerprint, a refresh replacing the champion after the gates, a pinned champion and a running
experiment holding it, a change going to the A/B test; the stage gate at registration
(register.register_day)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from pipelines.core.settings import Settings
from pipelines.release import fingerprint, gate, operations, registry
from tests import helpers

TWO_TOWER = {
    "model": "two_tower", "lr": 0.005, "dim": 64, "history": False, "n_items": 100,
    "item_spec": {"categorical": [{"name": "item_category", "vocab": ["a", "b"]}]},
    "user_spec": {"numeric": [{"name": "user_age", "mean": 39.4, "std": 12.2}]},
}  # fmt: skip
RANKER = {
    "model": "dlrm", "lr": 0.003, "dense_features": ["user_ctr_28d", "item_ctr_28d"],
    "sparse_specs": [{"kind": "vocab", "name": "user_gender", "values": ["F", "M"]}],
    "history": [{"epoch": 0, "train_loss": 0.12}], "fit_report": {"rows": 10},
}  # fmt: skip


def write_artifact(folder: Path, meta: dict, config: dict | None) -> Path:
    (folder / "model").mkdir(parents=True, exist_ok=True)
    (folder / "meta.json").write_text(json.dumps(meta))
    if config is not None:
        (folder / "model" / "config.json").write_text(json.dumps(config))
    return folder


def artifacts(root: Path, day: int, tt: dict | None = None, rk: dict | None = None) -> dict:
    """Fake artifact folders of a retrain on day ``day``: the data-dependent fields differ."""
    data = {"n_items": 100 + day, "trained_through": f"2026-01-0{day}", "version": f"v{day}"}
    tt_config = {**TWO_TOWER, **(tt or {}), "n_items": 100 + day}
    tt_config["user_spec"] = {"numeric": [{"name": "user_age", "mean": 39 + day, "std": 12.0}]}
    tt_config["item_spec"] = {"categorical": [{"name": "item_category",
                                               "vocab": ["a", "b", "c"][: 1 + day % 3]}]}  # fmt: skip
    rk_config = {**RANKER, **(rk or {}), "history": [{"epoch": 0, "train_loss": 0.1 / day}]}
    rk_meta = {"window_days": 7, "rows": day, "validation_rows": 0}
    if day > 1:  # the first day has no validation day: no calibration fitted, none recorded
        rk_config["calibration"] = {"method": "platt", "a": 2.0 + day, "b": 4.0}
        rk_meta.update(validation_rows=100 * day, validation={"best_epoch": day, "auc": 0.6})
    idx_meta = {"metric": "inner_product", "k": 10, "recall_target": 0.95, "recall": 0.9 + day / 100,
                "kind": "flat" if day < 3 else "ivf", "params": {"nprobe": day},
                "created_at": f"t{day}", "model_version": f"two_tower-{day}"}  # fmt: skip
    return {
        "two_tower": write_artifact(root / f"tt{day}", {"model": "two_tower", **data}, tt_config),
        "ranker": write_artifact(root / f"rk{day}", rk_meta, rk_config),
        "index": write_artifact(root / f"idx{day}", idx_meta, None),
        "mf": None,
    }


def fp(settings: Settings, folders: dict, service: str = "serving_v1") -> str:
    return fingerprint.fingerprint(fingerprint.configuration(settings, folders, service))


def test_fingerprint_equal_for_a_retrain_different_for_a_change(settings: Settings, tmp_path):
    base = fp(settings, artifacts(tmp_path, 1))
    assert fp(settings, artifacts(tmp_path, 2)) == base  # counts, vocab, stats, curve, index kind
    assert fp(settings, artifacts(tmp_path, 4)) == base
    # the L2 strength cross_lr chose on its validation day: data, not configuration
    c1, c3 = (
        fp(settings, artifacts(tmp_path, 13 + k, rk={"l2_c": c})) for k, c in ((0, 0.1), (1, 0.3))
    )
    assert c1 == c3 == base
    changes = [
        fp(settings, artifacts(tmp_path, 5, tt={"lr": 0.01})),  # a hyper-parameter
        fp(settings, artifacts(tmp_path, 6, rk={"dense_features": ["user_ctr_28d"]})),  # features
        fp(settings, artifacts(tmp_path, 7, tt={"history": True})),  # a setting of the model
        fp(settings, {**artifacts(tmp_path, 8), "ranker": None}),  # no ranker
        fp(settings, artifacts(tmp_path, 9), service="ranker_v1"),  # the feature service
        fp(dataclasses.replace(settings, rating_positive=3.0), artifacts(tmp_path, 10)),
    ]
    assert base not in changes and len(set(changes)) == len(changes)
    # a value the training step declares data-dependent (chosen on a validation day) is left out
    tuned = artifacts(tmp_path, 11, rk={"lr": 0.02})
    meta = json.loads((tuned["ranker"] / "meta.json").read_text())
    (tuned["ranker"] / "meta.json").write_text(json.dumps({**meta, "data_keys": ["lr"]}))
    assert fp(settings, tuned) != base
    declared = artifacts(tmp_path, 12)
    meta = json.loads((declared["ranker"] / "meta.json").read_text())
    (declared["ranker"] / "meta.json").write_text(json.dumps({**meta, "data_keys": ["lr"]}))
    assert fp(settings, tuned) == fp(settings, declared)


def no_load_check(settings: Settings, version: str) -> None:
    """Fake bundles hold no real model."""


def gated(s: Settings, day: str, check=no_load_check) -> dict:
    return gate.gate_day(s, day, candidate_metrics={"ndcg@10": 0.2},
                         champion_metrics={"ndcg@10": 0.2}, load_check=check)  # fmt: skip


@pytest.mark.integration  # an MLflow store
def test_a_refresh_replaces_the_champion_after_the_gates(mlflow_settings: Settings):
    s = mlflow_settings
    v1 = helpers.make_config_bundle(s, "2026-01-01")
    first = gated(s, "2026-01-02")
    assert first["action"] == "champion" and first["kind"] is None
    # a rerun of the day keeps its decision (not "already_champion" about its own promotion)
    report = gate.report_path(s, "2026-01-02").read_bytes()
    assert gated(s, "2026-01-02") == first
    assert gate.report_path(s, "2026-01-02").read_bytes() == report
    v2 = helpers.make_config_bundle(s, "2026-01-02")
    out = gated(s, "2026-01-03")
    assert (out["candidate_version"], out["action"], out["kind"]) == (v2, "champion", "refresh")
    assert out["fingerprints"]["candidate"] == out["fingerprints"]["champion"] is not None
    assert out["aliases"] == {"champion": v2, "challenger": None}
    assert f"champion {v1} -> {v2} (refresh)" in out["reason"]
    mv = registry.bundle_version(s, v2)
    assert mv.tags[registry.KIND_TAG] == "refresh" and mv.tags["recloop.refreshed_from"] == v1
    assert json.loads(gate.report_path(s, "2026-01-03").read_text())["kind"] == "refresh"
    run = registry.client(s).get_run(out["refresh_run_id"])
    assert (run.data.params["action"], run.data.params["operator"]) == ("refresh", "gate")
    assert "kind: refresh" in gate.format_decision(out)
    # a refresh failing a gate is rejected; one failing the load check is held
    helpers.make_config_bundle(s, "2026-01-03", recall=0.90)
    assert gated(s, "2026-01-04")["action"] == "rejected"
    v4 = helpers.make_config_bundle(s, "2026-01-04")

    def broken(settings: Settings, version: str) -> None:
        raise RuntimeError("smoke test failed")

    held = gated(s, "2026-01-05", check=broken)
    assert held["action"] == "held" and "smoke test failed" in held["reason"]
    assert registry.get_alias(s, "champion") == v2
    assert gated(s, "2026-01-05")["aliases"]["champion"] == v4
    # the refresh is in the registry's history: a rollback returns to the bundle it replaced
    back = operations.release(s, "rollback", None, "test", "tester", load_check=no_load_check)
    assert back["champion"] == v2


@pytest.mark.integration
def test_a_pinned_champion_is_not_refreshed(mlflow_settings: Settings):
    s = mlflow_settings
    v1 = helpers.make_config_bundle(s, "2026-01-01")
    gated(s, "2026-01-02")
    operations.release(s, "pin", v1, "freeze", "tester", load_check=no_load_check)
    v2 = helpers.make_config_bundle(s, "2026-01-02")
    out = gated(s, "2026-01-03")
    assert (out["action"], out["kind"]) == ("held", "refresh")
    assert (
        "the refresh waits for unpin" in out["reason"]
        and f"pinned to version {v1}" in out["reason"]
    )
    assert registry.get_alias(s, "champion") == v1
    operations.release(s, "unpin", None, "thaw", "tester", load_check=no_load_check)
    assert gated(s, "2026-01-03")["aliases"]["champion"] == v2


@pytest.mark.integration
def test_a_change_goes_to_the_ab_test_and_holds_refreshes_while_it_runs(mlflow_settings: Settings):
    s = mlflow_settings
    v1 = helpers.make_config_bundle(s, "2026-01-01")
    gated(s, "2026-01-02")
    v2 = helpers.make_config_bundle(s, "2026-01-02", lr=0.01)  # a new hyper-parameter
    out = gated(s, "2026-01-03")
    assert (out["action"], out["kind"]) == ("challenger", "change")
    assert out["fingerprints"]["candidate"] != out["fingerprints"]["champion"]
    assert out["aliases"] == {"champion": v1, "challenger": v2}
    assert registry.bundle_version(s, v2).tags[registry.KIND_TAG] == "change"
    helpers.make_config_bundle(
        s, "2026-01-03"
    )  # the champion's configuration, retrained: waits for the experiment
    out = gated(s, "2026-01-04")
    assert (out["action"], out["kind"]) == ("held", "refresh")
    assert f"waits for the A/B experiment {v1}-vs-{v2}" in out["reason"]
    helpers.make_config_bundle(
        s, "2026-01-04", lr=0.01
    )  # the challenger's configuration: one experiment at a time
    out = gated(s, "2026-01-05")
    assert (out["action"], out["kind"]) == ("held", "change")
    assert out["aliases"] == {"champion": v1, "challenger": v2}


# --- the stage gate at registration ---------------------------------------------------------


def register_with_ranker(s: Settings, day: str, stage_gate) -> dict:
    """register_day on fake artifacts with a ranker, the stage gate module replaced by
    ``stage_gate`` (None: not importable) and the bundle load stubbed."""
    from pipelines.release.register import register_day

    helpers.write_validated(s, day)
    helpers.write_validation_report(s, day)
    helpers.fake_model(s, "two_tower", day)
    helpers.fake_model(s, "ranker", day)
    helpers.fake_index(s, f"two_tower-{day}")
    module = None
    if stage_gate is not None:
        module = types.ModuleType("pipelines.release.stage_gate")
        module.judge_stages = stage_gate
    with (
        only_module("pipelines.release.stage_gate", module),
        mock.patch("serving.bundle.load", lambda settings, ref: f"loaded-{ref}"),
    ):
        return register_day(s, day)


@contextlib.contextmanager
def only_module(name: str, module: types.ModuleType | None) -> Iterator[None]:
    """``sys.modules[name]`` is ``module`` inside (None: not importable), restored after; unlike
    ``mock.patch.dict(sys.modules)`` it leaves the modules imported meanwhile (MLflow's SQLAlchemy
    loads some lazily) in place, so that they are not imported twice."""
    missing = object()
    before = sys.modules.get(name, missing)
    sys.modules[name] = module  # type: ignore[assignment]
    try:
        yield
    finally:
        if before is missing:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = before  # type: ignore[assignment]


@pytest.mark.integration
def test_the_stage_gate_leaves_a_ranker_that_does_not_lift_out(mlflow_settings: Settings):
    s = mlflow_settings
    calls = []

    def judge(settings, loaded, date):
        calls.append((loaded, date))
        return {"keep_ranker": False, "full": 0.03, "retrieval_only": 0.04, "trending": 0.035}

    out = register_with_ranker(s, "2026-01-01", judge)
    assert calls == [(f"loaded-{out['bundle_with_ranker']}", "2026-01-01")]
    assert out["ranker"] is not None and out["stage_gate"]["keep_ranker"] is False
    served = registry.load_bundle(s, out["bundle"])
    assert served["ranker"] is None and out["bundle"] != out["bundle_with_ranker"]
    assert served["config_fingerprint"] == out["config_fingerprint"]  # the trained ranker counts
    tags = registry.bundle_version(s, out["bundle_with_ranker"]).tags
    assert tags["recloop.superseded_by"] == out["bundle"]
    again = register_with_ranker(s, "2026-01-01", judge)  # a rerun: the recorded judgement
    assert again["bundle"] == out["bundle"] and len(calls) == 1
    dec = gated(s, "2026-01-02")
    assert dec["candidate_version"] == out["bundle"] and dec["action"] == "champion"
    assert dec["stage_gate"]["keep_ranker"] is False
    assert "does not lift the slate: retrieval order serves" in dec["reason"]
    assert "stage gate: ranker left out" in gate.format_decision(dec)


@pytest.mark.integration
def test_the_stage_gate_choice_for_new_users_is_recorded_and_a_refresh_inherits_it(
    mlflow_settings: Settings,
):
    s = mlflow_settings

    def chooses_trending(settings, loaded, date):
        funnel = {"oracle": 0.15, "candidates_best": 0.14, "score_order": 0.067, "served": 0.063}
        return {"keep_ranker": True, "new_users": "trending", "new_users_reason": "by forward",
                "retrieval_weight": 0.3, "funnel": funnel}  # fmt: skip

    out = register_with_ranker(s, "2026-01-01", chooses_trending)
    assert (out["new_users"], out["new_users_from"]) == ("trending", "stage gate")
    tags = registry.load_bundle(s, out["bundle"])["tags"]
    assert tags[registry.NEW_USERS_TAG] == "trending"
    assert (out["retrieval_weight"], tags[registry.RETRIEVAL_WEIGHT_TAG]) == (0.3, "0.3")
    dec = gated(s, "2026-01-02")
    assert dec["action"] == "champion"
    assert "new users: trending (stage gate)" in gate.format_decision(dec)
    assert "retrieval weight: 0.3 (stage gate)" in gate.format_decision(dec)
    assert ("stage funnel (true CTR): oracle 0.15, best of the candidates 0.14, score order "
            "0.067, served 0.063") in gate.format_decision(dec)  # fmt: skip

    def cannot_tell(settings, loaded, date):  # a refit: no forward window after its last day
        return {"keep_ranker": True, "new_users": None, "new_users_reason": "not judged"}

    refit = register_with_ranker(s, "2026-01-02", cannot_tell)
    assert refit["config_fingerprint"] == out["config_fingerprint"]
    assert (refit["new_users"], refit["new_users_from"]) == (
        "trending",
        f"champion {out['bundle']}",
    )
    assert registry.load_bundle(s, refit["bundle"])["tags"][registry.NEW_USERS_TAG] == "trending"
    assert refit["retrieval_weight"] == 0.3 and refit["retrieval_weight_from"].startswith("champ")
    # the gate's own choice wins over the champion's
    mine = register_with_ranker(s, "2026-01-03", lambda *a: {"keep_ranker": True,
                                                             "new_users": "user_tower"})  # fmt: skip
    assert (mine["new_users"], mine["new_users_from"]) == ("user_tower", "stage gate")


@pytest.mark.integration
@pytest.mark.parametrize("broken", ["missing", "raises", "no_answer"])
def test_a_broken_stage_gate_keeps_the_ranker(mlflow_settings: Settings, broken: str):
    def raises(settings, loaded, date):
        raise RuntimeError("boom")

    judge = {"missing": None, "raises": raises, "no_answer": lambda *a: {"full": 0.1}}[broken]
    out = register_with_ranker(mlflow_settings, "2026-01-01", judge)
    assert out["stage_gate"]["keep_ranker"] is True and out["stage_gate"]["error"]
    assert "bundle_with_ranker" not in out
    assert registry.load_bundle(mlflow_settings, out["bundle"])["ranker"] is not None


def test_the_loop_table_names_the_bundle_that_served_and_its_kind():
    from pipelines.loop.closed_loop import format_days

    day = {"date": "2026-01-04", "source": "service", "seconds": {"total": 3},
           "bundles": {"champion": {"version": "3", "kind": "refresh",
                                    "trained_through": "2026-01-02", "ranker": False}},
           "gate": {"candidate_version": "4", "action": "champion", "kind": "refresh"}}  # fmt: skip
    text = format_days([day, {"date": "2026-01-01", "source": "logging_policy"}])
    line = text.splitlines()[1]
    assert "v3 refresh-R (01-02)" in line and "champion/refresh" in line
    assert text.splitlines()[2].split()[2] == "-"
