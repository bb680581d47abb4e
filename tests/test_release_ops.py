"""Release operations by hand (pipelines/release/operations.py, the recloop_release DAG,
``recloop release``), pins against the daily gate and the A/B promotion, the daily DAG's operator
params, and a champion alias moved with the plain MLflow client (what the MLflow UI does)
reaching a running ``recloop serve``.

The gate / rollback / pin tests use fake bundles (``tests.helpers.make_bundle``) and swap the
load + smoke check for a no-op; the real check runs against a trained workspace below."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from pipelines.cli import main
from pipelines.core.gate_decisions import write_gate_decision
from pipelines.core.settings import Settings
from pipelines.core.wait import wait_until
from pipelines.experiments import ab
from pipelines.orchestration import tasks
from pipelines.release import gate, operations, registry
from pipelines.release.operations import ReleaseRefused
from tests.helpers import (
    REPO,
    START,
    free_port,
    known_user,
    make_bundle,
    make_config_bundle,
    stop_service,
    write_day,
)

CFG = ab.ABConfig(alpha=0.05, tau=0.01, min_impressions=2_000, max_days=7)


def no_load_check(settings: Settings, version: str) -> None:
    """Fake bundles hold no real model: the load + smoke test is exercised further below."""


def release(s: Settings, action: str, version: str | None = None, reason: str = "test") -> dict:
    return operations.release(s, action, version, reason, "tester", load_check=no_load_check)


def gated(s: Settings, day: str, **metrics: float) -> dict:
    """gate_day on test day ``day`` with the numbers given (no OPE)."""
    return gate.gate_day(s, day, candidate_metrics=metrics, champion_metrics={"ndcg@10": 0.2})


def release_runs(s: Settings) -> list:
    c = registry.client(s)
    exp = c.get_experiment_by_name(operations.RELEASE_EXPERIMENT)
    return c.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"])


@pytest.fixture()
def gated_registry(mlflow_settings: Settings) -> tuple[Settings, str, str, str]:
    """``(settings, v1, v2, v3)``: v1 champion (first day), v2 challenger (a change of
    configuration), v3 rejected by its gate (index recall 0.90 under its 0.95 target)."""
    s = mlflow_settings
    v1 = make_bundle(s, "2026-01-01")
    assert gated(s, "2026-01-02", **{"ndcg@10": 0.2})["action"] == "champion"
    v2 = make_config_bundle(s, "2026-01-02", lr=0.01)
    assert gated(s, "2026-01-03", **{"ndcg@10": 0.21})["action"] == "challenger"
    v3 = make_bundle(s, "2026-01-03", recall=0.90)
    assert gated(s, "2026-01-04", **{"ndcg@10": 0.3})["action"] == "rejected"
    return s, v1, v2, v3


# --- promote, rollback --------------------------------------------------------------------


def test_promote_refuses_what_the_gates_refuse_and_records_every_attempt(gated_registry):
    s, v1, v2, v3 = gated_registry
    with pytest.raises(
        ReleaseRefused, match=f"version {v3} was rejected by the gate of 2026-01-04"
    ):
        release(s, "promote", v3, "customer escalation")
    v4 = make_bundle(s, "2026-01-04")  # registered, never gated
    with pytest.raises(ReleaseRefused, match="never gated"):
        release(s, "promote", v4)
    with pytest.raises(ReleaseRefused, match="not registered"):
        release(s, "promote", "99")
    with pytest.raises(ValueError, match="reason"):
        release(s, "promote", v2, reason="  ")
    assert registry.get_alias(s, "champion") == v1

    out = release(s, "promote", f"v{v2}", "challenger looks good in the dashboards")
    assert (out["previous_champion"], out["champion"], out["version"]) == (v1, v2, v2)
    assert registry.get_alias(s, "champion") == v2
    assert registry.get_alias(s, "challenger") is None  # its experiment ended
    runs = release_runs(s)
    assert [r.data.tags["recloop.outcome"] for r in runs] == [
        "done",
        "refused",
        "refused",
        "refused",
    ]
    assert runs[0].info.run_id == out["mlflow_run_id"]
    assert runs[0].data.params["reason"] == "challenger looks good in the dashboards"
    assert runs[0].data.params["operator"] == "tester"
    assert runs[0].data.params["previous_champion"] == v1
    assert "rejected by the gate" in runs[-1].data.params["outcome"]


def test_a_load_failure_refuses_the_promotion(gated_registry):
    s, v1, v2, _ = gated_registry

    def broken(settings: Settings, version: str) -> None:
        raise ReleaseRefused(f"bundle version {version} fails the load and smoke test")

    with pytest.raises(ReleaseRefused, match="smoke test"):
        operations.release(s, "promote", v2, "try", "tester", load_check=broken)
    assert registry.get_alias(s, "champion") == v1


def test_rollback_walks_back_through_the_champions(gated_registry):
    s, v1, v2, _ = gated_registry
    with pytest.raises(ReleaseRefused, match="no previous champion"):
        release(s, "rollback")  # v1 is the only champion so far
    release(s, "promote", v2)
    out = release(s, "rollback", reason="latency regression")
    assert (out["previous_champion"], out["champion"], out["version"]) == (v2, v1, v1)
    assert registry.bundle_version(s, v2).tags.get(operations.ROLLED_BACK_TAG)
    # v2 was rolled back: a second rollback does not return to it
    with pytest.raises(ReleaseRefused, match="no previous champion"):
        release(s, "rollback")
    release(s, "promote", v2, "fixed")  # promoted again: it is history again
    assert release(s, "rollback")["champion"] == v1
    assert operations.previous_champion(s, v1) is None  # v2 rolled back again


# --- pins -----------------------------------------------------------------------------------


def test_pin_holds_against_promote_rollback_and_the_ab_promotion_until_unpin(ab_registry):
    s, champ, chall = ab_registry
    out = release(s, "pin", reason="holiday freeze")
    assert (out["pinned"], out["champion"]) == (champ, champ)
    assert operations.pinned_champion(s) == {
        "version": champ,
        "by": "tester",
        "reason": "holiday freeze",
    }
    with pytest.raises(ReleaseRefused, match=f"pinned to version {champ}"):
        release(s, "promote", chall)
    with pytest.raises(ReleaseRefused, match="pinned"):
        release(s, "rollback")

    exp = ab.experiment_name(champ, chall)
    decisions = []
    for k in range(4):  # a clearly better challenger: without the pin it is promoted by day 4
        day = START + dt.timedelta(days=k)
        write_day(s, day, champ, chall, (0.05, 0.08))
        decisions.append(ab.analyze(s, exp, day, CFG))
    assert [d.action for d in decisions] == [ab.CONTINUE] * 4
    assert "not promoted: champion pinned" in decisions[-1].reason
    assert registry.get_alias(s, "champion") == champ
    assert registry.get_alias(s, "challenger") == chall  # the experiment keeps running

    assert release(s, "unpin", reason="freeze over")["pinned"] is None
    with pytest.raises(ReleaseRefused, match="not pinned"):
        release(s, "unpin")
    again = ab.analyze(s, exp, START + dt.timedelta(days=3), CFG)
    assert again.action == ab.PROMOTE and registry.get_alias(s, "champion") == chall


def test_the_daily_gate_leaves_a_pinned_champion(mlflow_settings: Settings):
    s = mlflow_settings
    v1 = make_bundle(s, "2026-01-01")
    assert gated(s, "2026-01-02", **{"ndcg@10": 0.2})["action"] == "champion"
    release(s, "pin", v1, "audit")
    # the champion alias deleted by hand in the MLflow UI: the gate would make a new champion
    registry.client(s).delete_registered_model_alias(registry.BUNDLE, "champion")
    v2 = make_bundle(s, "2026-01-02")
    out = gated(s, "2026-01-03", **{"ndcg@10": 0.3})
    assert (out["candidate_version"], out["action"]) == (v2, "held")
    assert f"champion pinned to version {v1}" in out["reason"]
    assert registry.get_alias(s, "champion") is None
    release(s, "unpin")
    assert gated(s, "2026-01-03", **{"ndcg@10": 0.3})["action"] == "champion"
    assert registry.get_alias(s, "champion") == v2


def test_recloop_release_command(gated_registry, capsys: pytest.CaptureFixture):
    s, v1, _, v3 = gated_registry
    assert main(["release", "--action", "pin", "--reason", "cli pin", "--operator", "bob"]) == 0
    assert f"champion {v1} -> {v1}; pinned: {v1}" in capsys.readouterr().out
    code = main(["release", "--action", "promote", "--version", v3, "--reason", "x"])
    assert code == 2 and f"champion pinned to version {v1} by bob" in capsys.readouterr().err
    assert main(["release", "--action", "unpin", "--reason", "done", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["pinned"] is None
    assert release_runs(s)[-1].data.params["operator"] == "bob"


# --- the daily DAG's operator params (unit tier) --------------------------------------------


def test_skip_training_and_force_materialize_params(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    from airflow.sdk.exceptions import AirflowSkipException

    tasks.skip_before_train_from("2026-01-02", {"skip_training": False, "train_from_date": ""})
    with pytest.raises(AirflowSkipException, match="skip_training"):
        tasks.skip_before_train_from("2026-01-02", {"skip_training": True})
    with pytest.raises(AirflowSkipException):
        tasks.train_model("2026-01-02", "mf", params={"skip_training": "true"})
    with pytest.raises(ValueError, match="skip_training"):
        tasks.skip_before_train_from("2026-01-02", {"skip_training": "maybe"})

    import pipelines.features.store as store
    import pipelines.features.tables as tables

    calls: list[bool] = []
    monkeypatch.setattr(tables, "compute_features", lambda s, ds: {"date": ds})
    monkeypatch.setattr(store, "apply_repo", lambda s: None)
    monkeypatch.setattr(
        store,
        "materialize_date",
        lambda s, ds, force=False: calls.append(force) or {"skipped": True},
    )
    tasks.features("2026-01-02")
    tasks.features("2026-01-02", params={"force_materialize": False})
    tasks.features("2026-01-02", params={"force_materialize": True})
    assert calls == [False, False, True]


# --- the recloop_release DAG through Airflow ------------------------------------------------


def test_release_dag_run_with_conf(gated_registry):
    from pipelines.orchestration.airflow_runner import run_dag

    s, v1, _, v3 = gated_registry
    ok = run_dag(s, "2026-02-01", "recloop_release",
                 conf={"action": "pin", "reason": "release freeze", "operator": "carol"})  # fmt: skip
    assert ok.ok, ok.log_tail
    assert ok.tasks == [("release", "success", 1)]
    assert operations.pinned_champion(s) == {
        "version": v1,
        "by": "carol",
        "reason": "release freeze",
    }
    refused = run_dag(s, "2026-02-02", "recloop_release",
                      conf={"action": "promote", "version": v3, "reason": "try it"})  # fmt: skip
    assert refused.state == "failed"
    assert [t[:2] for t in refused.tasks] == [("release", "failed")]  # no retries for a refusal
    assert f"release refused: champion pinned to version {v1}" in refused.log_tail
    run = release_runs(s)[0]
    assert run.data.params["operator"] == "dag_test"  # no operator param: the triggering user
    assert run.data.tags["recloop.outcome"] == "refused" and registry.get_alias(s, "champion") == v1


# --- the MLflow UI's alias move reaches a running service ------------------------------------


def broken_copy(s: Settings, version: str, tmp: Path) -> str:
    """Register a ``serving_bundle`` version pinning ``version``'s set but whose index file is
    truncated on disk (its registered artifact hash no longer matches), with the plain client."""
    from mlflow.tracking import MlflowClient

    bundle = registry.load_bundle(s, version)
    index = tmp / "index"
    shutil.copytree(bundle["paths"]["index"], index)
    data = (index / "index.faiss").read_bytes()
    (index / "index.faiss").write_bytes(data[: len(data) // 2])
    pins = {
        k: bundle[k] for k in ("format", "logical_date", "two_tower", "ranker", "feature_service")
    }
    pins["index"] = {**bundle["index"], "source": str(index)}
    folder = tmp / "bundle"
    folder.mkdir()
    (folder / registry.BUNDLE_FILE).write_text(json.dumps(pins))
    c = MlflowClient(tracking_uri=s.mlflow_uri, registry_uri=s.mlflow_uri)
    return str(c.create_model_version(registry.BUNDLE, source=str(folder)).version)


def test_mlflow_alias_move_reaches_recloop_serve(trained: Settings, tmp_path: Path):
    from mlflow.tracking import MlflowClient

    s = trained
    user, _ = known_user(s)
    port = free_port()
    env = {**os.environ, **s.as_env(), "RECLOOP_SERVE_RELOAD_S": "0.5"}
    env.pop("RECLOOP_ADMIN_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def served() -> str | None:
        assert proc.poll() is None, "recloop serve exited"
        try:
            r = httpx.post(f"{url}/recommend", json={"user_id": user, "k": 4}, timeout=10)
        except httpx.TransportError:
            return None
        return r.json()["bundle"]["bundle"] if r.status_code == 200 else None

    try:
        assert wait_until(served, 120, "recloop serve answering", interval_s=0.3) == "1"
        ui = MlflowClient(tracking_uri=s.mlflow_uri, registry_uri=s.mlflow_uri)
        ui.set_registered_model_alias(registry.BUNDLE, "champion", "2")  # the MLflow UI's call
        wait_until(lambda: served() == "2", 60, "the service on bundle 2", interval_s=0.2)

        bad = broken_copy(s, "2", tmp_path)
        write_gate_decision(s, {"date": "2026-01-03", "candidate_version": bad,
                                "action": "challenger", "reason": "passed"})  # fmt: skip
        with pytest.raises(ReleaseRefused, match=f"bundle version {bad} fails the load"):
            operations.release(s, "promote", bad, "try the copy", "tester")  # the real check
        assert registry.get_alias(s, "champion") == "2"

        ui.set_registered_model_alias(registry.BUNDLE, "champion", bad)
        rejected = 'recloop_rejected_reloads_total{arm="champion"} 1'

        def refused() -> bool:
            return rejected in httpx.get(f"{url}/metrics", timeout=10).text

        wait_until(refused, 60, "the service rejecting the broken bundle", interval_s=0.2)
        assert served() == "2"  # the old bundle keeps serving
        assert httpx.get(f"{url}/health/ready", timeout=10).status_code == 200
    finally:
        stop_service(proc, 30)


@pytest.fixture()
def trained(tmp_path_factory: pytest.TempPathFactory, redis_server) -> Settings:
    """A tiny trained workspace (2 days: champion = bundle 1, bundle 2 registered)."""
    from tests.helpers import tiny_trained_workspace

    home = tmp_path_factory.mktemp("release") / "home"
    settings, mp = tiny_trained_workspace(home, redis_server.url, ("2026-01-01", "2026-01-02"))
    assert registry.get_alias(settings, "champion") == "1"
    yield settings
    mp.undo()
