"""MLflow tracking + registry against a real MLflow (sqlite backend, local artifact store).

The helpers of ``tests/helpers.py`` build tiny fake artifact folders in the
``pipelines.retrieval.train`` / ``pipelines.retrieval.faiss_index`` layouts; MLflow itself is real."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from pipelines.core.settings import Settings
from pipelines.release import registry
from tests.helpers import (
    fake_index,
    fake_model,
    make_bundle,
    race_promotions,
    write_validated,
)

DAY, DAY2 = "2026-01-01", "2026-01-02"


@pytest.fixture()
def ws(mlflow_settings: Settings) -> Settings:
    """This module's name for conftest's ``mlflow_settings``."""
    return mlflow_settings


def test_log_and_register_round_trip(ws: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)
    write_validated(ws, DAY)
    folder = fake_model(ws, "two_tower", DAY, weights=b"\x00\x01weights")
    dhash = registry.data_hash(ws, DAY)
    rid = registry.log_training_run(
        ws, "two_tower", DAY, folder, {"dim": 64, "epochs": 3}, {"ndcg@10": 0.25, "bad": None},
        (None, DAY), dhash, "two_tower_v1",
    )  # fmt: skip
    mv = registry.register(ws, "two_tower", rid, "two_tower", f"two_tower-{DAY}")
    assert mv.version in (1, "1")
    run = registry.client(ws).get_run(rid)
    p = run.data.params
    assert p["dim"] == "64" and p["data_hash"] == dhash and p["feature_service"] == "two_tower_v1"
    assert p["data_first"] == "all" and p["data_last"] == DAY
    assert p["git_commit"] and run.data.tags["recloop.git_commit"] == p["git_commit"]
    assert run.data.metrics == {"ndcg_at_10": 0.25}
    assert mv.tags["logical_date"] == DAY and mv.tags["data_hash"] == dhash
    assert mv.tags["version_key"] == f"two_tower-{DAY}"
    # the registered artifact is the folder's files, stored under RECLOOP_HOME/mlflow
    local = registry.version_path(ws, "two_tower", mv.version)
    assert local.is_relative_to(ws.mlflow_dir / "artifacts")
    assert (local / "model" / "weights.pt").read_bytes() == b"\x00\x01weights"
    assert json.loads((local / "meta.json").read_text())["version"] == f"two_tower-{DAY}"
    assert not (tmp_path / "mlruns").exists()


def test_rerun_same_data_registers_nothing_new(ws: Settings):
    write_validated(ws, DAY)
    folder = fake_model(ws, "mf", DAY)
    first = registry.track_component(ws, "mf", DAY, folder)
    again = registry.track_component(ws, "mf", DAY, folder)
    assert (first["version"], first["reused"]) == ("1", False)
    assert (again["version"], again["reused"]) == ("1", True)
    # a run logged anyway (e.g. a task that always logs) still maps onto the same version
    rid = registry.log_training_run(
        ws, "mf", DAY, folder, {}, {}, (None, DAY), first["data_hash"], None
    )
    assert str(registry.register(ws, "mf", rid).version) == "1"
    assert len(registry.find_versions(ws, "mf")) == 1


def test_changed_data_registers_a_new_version(ws: Settings):
    write_validated(ws, DAY, payload="a")
    folder = fake_model(ws, "mf", DAY)
    first = registry.track_component(ws, "mf", DAY, folder)
    write_validated(ws, DAY, payload="b")  # same day, different validated rows
    second = registry.track_component(ws, "mf", DAY, folder)
    assert second["data_hash"] != first["data_hash"]
    assert (first["version"], second["version"]) == ("1", "2")
    assert len(registry.find_versions(ws, "mf", logical_date=DAY)) == 2


def test_bundle_pins_a_consistent_set_and_refuses_a_mismatch(ws: Settings):
    v1 = make_bundle(ws, DAY)
    write_validated(ws, DAY2)
    tt2 = registry.track_component(ws, "two_tower", DAY2, fake_model(ws, "two_tower", DAY2))
    # index of day 1 (built from two_tower-DAY) with the two-tower of day 2: refused
    with pytest.raises(registry.BundleError, match="mismatched"):
        registry.register_bundle(ws, DAY2, tt2["version"], "1", None, "serving_v1")
    with pytest.raises(registry.BundleError, match="feature service"):
        registry.register_bundle(ws, DAY, "1", "1", None, "no_such_service")
    # an index whose meta disagrees with the version key it is registered under: refused
    write_validated(ws, DAY2, payload="other")
    with pytest.raises(registry.BundleError, match="built from"):
        registry.track_component(
            ws, "index", DAY2, fake_index(ws, f"two_tower-{DAY}"), version_key=f"two_tower-{DAY2}"
        )
    bundle = registry.load_bundle(ws, v1)
    assert bundle["two_tower"]["version_key"] == f"two_tower-{DAY}"
    assert bundle["index"]["built_from"] == f"two_tower-{DAY}"
    assert bundle["ranker"] is None and bundle["paths"]["ranker"] is None
    assert bundle["feature_service"] == "serving_v1"
    assert (Path(bundle["paths"]["index"]) / "index.faiss").read_bytes() == b"faiss"
    # the same pins again: the same bundle version
    again = registry.register_bundle(ws, DAY, "1", "1", None, "serving_v1")
    assert str(again.version) == v1


def test_index_built_from_other_two_tower_content_is_refused(ws: Settings, tmp_path: Path):
    write_validated(ws, DAY)
    tt = registry.track_component(ws, "two_tower", DAY, fake_model(ws, "two_tower", DAY, b"A"))
    other = tmp_path / "retrained"  # same version string, other weights (a retrain)
    shutil.copytree(fake_model(ws, "two_tower", DAY, b"B"), other)
    idx = registry.track_component(
        ws, "index", DAY, fake_index(ws, f"two_tower-{DAY}"), version_key=f"two_tower-{DAY}",
        built_from=other,
    )  # fmt: skip
    with pytest.raises(registry.BundleError, match="content differs"):
        registry.register_bundle(ws, DAY, tt["version"], idx["version"], None)


def test_load_bundle_refuses_tampered_artifacts(ws: Settings):
    v = make_bundle(ws, DAY)
    bundle = registry.load_bundle(ws, v)
    meta = Path(bundle["paths"]["index"]) / "meta.json"
    data = json.loads(meta.read_text())
    meta.write_text(json.dumps({**data, "model_version": "two_tower-1999-01-01"}))
    with pytest.raises(registry.BundleError, match="differs|mismatched"):
        registry.load_bundle(ws, v)
    with pytest.raises(registry.BundleError, match="no serving_bundle"):
        registry.load_bundle(ws, "champion")


def test_aliases_move(ws: Settings):
    v1 = make_bundle(ws, DAY)
    v2 = make_bundle(ws, DAY2, ranker=True)
    assert v1 != v2
    assert registry.get_alias(ws, "challenger") is None
    assert registry.promote(ws, v1, "challenger")
    assert registry.get_alias(ws, "challenger") == v1
    assert registry.promote(ws, v2, "challenger")
    assert registry.get_alias(ws, "challenger") == v2
    assert registry.load_bundle(ws, "challenger")["ranker"]["name"] == "ranker"
    # compare-and-set: a promotion that saw a stale alias loses
    assert registry.promote(ws, v1, "champion", expected=None)
    assert not registry.promote(ws, v2, "champion", expected=None)
    assert registry.get_alias(ws, "champion") == v1
    assert registry.promote(ws, v2, "champion", expected=v1)
    assert registry.get_alias(ws, "champion") == v2
    with pytest.raises(ValueError, match="alias"):
        registry.promote(ws, v1, "production")


@pytest.mark.parametrize("cas", [True, False])
def test_racing_promotions_leave_one_champion(ws: Settings, cas: bool):
    versions = [make_bundle(ws, f"2026-01-0{i}") for i in range(1, 4)]
    barrier = threading.Barrier(len(versions))
    results: dict[str, bool] = {}
    errors: list[BaseException] = []

    def contender(v: str) -> None:
        try:
            barrier.wait()
            kwargs = {"expected": None} if cas else {}
            results[v] = registry.promote(ws, v, "champion", **kwargs)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=contender, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    champion = registry.get_alias(ws, "champion")
    assert champion in versions
    holders = [
        v
        for v in versions
        if "champion" in registry.client(ws).get_model_version(registry.BUNDLE, v).aliases
    ]
    assert holders == [champion]
    if cas:
        assert [v for v, won in results.items() if won] == [champion]


@pytest.mark.integration
def test_racing_promotions_across_processes(ws: Settings, tmp_path: Path):
    versions = [make_bundle(ws, DAY), make_bundle(ws, DAY2)]
    env = {**os.environ, **ws.as_env()}
    said = race_promotions([env, env], versions, tmp_path)
    assert sorted(said.values()) == ["lost", "won"]
    winner = next(v for v, s in said.items() if s == "won")
    assert registry.get_alias(ws, "champion") == winner
