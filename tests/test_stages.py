"""Replay through the service in-process and ``recloop stages`` on a tiny trained workspace."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import numpy as np
import pandas as pd
import pytest

from pipelines.core import schema
from pipelines.data import simulate
from pipelines.loop import stages
from pipelines.loop.replay import SLATE_COLUMNS, serve_users, slate_frame
from pipelines.report.catalog import BUCKETS
from serving.config import ServingConfig
from tests.helpers import RedisServer, tiny_trained_workspace

DAYS = ("2026-01-01", "2026-01-02")
DAY = "2026-01-02"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer):
    """A tiny workspace with champion = bundle 1 (two days trained)."""
    home = tmp_path_factory.mktemp("stages") / "home"
    settings, mp = tiny_trained_workspace(home, redis_server.url, DAYS)
    yield settings
    mp.undo()


def _files(folder) -> list:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_serve_users_answers_each_user_and_logs_nothing(world):
    from serving.bundle import load

    bundle = load(world, "champion")
    users, _ = stages.day_users(world, DAY, 6)
    before = _files(world.home / "serving")
    out = serve_users(world, bundle, users, ServingConfig(explore_rate=0.0), warmup=2)
    assert [r["user_id"] for r in out] == users
    assert all(len(r["items"]) == 10 and not r["degraded"] for r in out)
    assert _files(world.home / "serving") == before  # the replay wrote no impression log
    frame = slate_frame(out)
    assert list(frame.columns) == list(SLATE_COLUMNS) and len(frame) == 60
    assert frame["position"].tolist() == list(range(10)) * 6
    assert not frame["explore"].any() and frame["propensity"].between(0, 1).all()
    # same seed, same answers: the replay is deterministic
    again = serve_users(world, bundle, users, ServingConfig(explore_rate=0.0), warmup=0)
    assert [[x["item_id"] for x in r["items"]] for r in again] == frame.groupby(
        "user_id", sort=False
    )["item_id"].apply(list).tolist()


def test_slate_frame_tolerates_missing_source():
    resp = [{"user_id": "u1", "fallbacks": ["cold_start"],
             "items": [{"item_id": "i1", "position": 0, "propensity": 0.9, "explore": False},
                       {"item_id": "i2", "position": 1, "propensity": 0.5, "explore": True,
                        "source": "mf"}]}]  # fmt: skip
    f = slate_frame(resp)
    assert f["source"].tolist() == ["", "mf"] and f["fallbacks"].tolist() == ["cold_start"] * 2
    assert slate_frame([]).columns.tolist() == list(SLATE_COLUMNS)


def test_variants_switch_off_one_stage_each():
    cfg = ServingConfig(source_quotas=(("two_tower", 300), ("trending", 40)))

    @dataclasses.dataclass
    class B:
        ranker: object = "r"

    v = stages.variants(B(), cfg)
    assert list(v) == ["full", "retrieval_only", "trending", "two_tower_only", "trending_only"]
    assert v["full"][1] is cfg and v["retrieval_only"][0].ranker is None
    assert v["trending"][1].force_cold_start and v["two_tower_only"][0].ranker == "r"
    assert v["two_tower_only"][1].source_quotas == (("two_tower", cfg.candidates),)


def test_stages_document_scores_every_variant(world):
    doc = stages.run_stages(world, DAY, n_users=12)
    cfg = ServingConfig()
    names = ["full", "retrieval_only", "trending"] + [f"{s}_only" for s, _ in cfg.source_quotas]
    assert doc["date"] == DAY and doc["users"] == 12 and list(doc["variants"]) == names
    users, w = stages.day_users(world, DAY, 12)
    for name, v in doc["variants"].items():
        assert 0.0 < v["true_ctr"] < 1.0, name
        assert 0.0 < v["ope_snips"] < 1.0 and v["ope_ess"] > 1.0, name  # the day's logs
        assert 1 <= v["distinct_items"] <= 120 and v["impressions"] == 120
        assert 0.0 < v["coverage"] <= 1.0 and 0.0 <= v["gini"] < 1.0
        assert set(v["true_ctr_by_bucket"]) == set(BUCKETS)
        assert sum(v["bucket_users"].values()) == 12 and sum(v["paths"].values()) == 12
    assert doc["variants"]["trending"]["paths"] == {"cold_start": 12}
    # the trending variant's true CTR is the truth of the cold-start list, recomputed here
    only = stages.run_stages(world, DAY, n_users=12, only=["trending"])
    assert list(only["variants"]) == ["trending"]
    assert only["variants"]["trending"]["true_ctr"] == doc["variants"]["trending"]["true_ctr"]
    assert w is not None and len(users) == 12


def test_cli_json_is_the_document_only(world, capsys):
    from pipelines.cli import main

    argv = ["stages", "--date", DAY, "--users", "5", "--variants", "full,trending", "--json"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert set(doc) == {"date", "bundle", "users", "variants"}
    assert list(doc["variants"]) == ["full", "trending"]
    for v in doc["variants"].values():
        assert {"true_ctr", "ope_snips", "distinct_items"} <= set(v)
    assert main(["stages", "--date", DAY, "--users", "5", "--variants", "trending"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[1].split()[:3] == ["variant", "true_ctr", "ope_snips"]
    assert table.splitlines()[2].startswith("trending")


def test_users_without_a_truth_come_from_the_logs(settings):
    ts = pd.Timestamp(DAY, tz="UTC")
    rows = [("u2", 3, "impression"), ("u1", 1, "impression"), ("u3", 2, "click"),
            ("u1", 5, "impression")]  # fmt: skip
    frame = pd.DataFrame(
        [{"event_id": f"e{n}", "ts": ts + pd.Timedelta(minutes=m), "user_id": u, "item_id": "i1",
          "event": e, "value": 1.0, "request_id": f"r{n}", "position": 0, "arm": "champion",
          "model_version": "bundle-1", "propensity": 0.5} for n, (u, m, e) in enumerate(rows)]
    )  # fmt: skip
    schema.write_partition_atomic(
        schema.conform(frame, schema.INTERACTIONS), settings.validated_dir, dt.date(2026, 1, 2)
    )
    users, w = stages.day_users(settings, DAY)
    assert users == ["u1", "u2"] and w is None  # by first impression; u3 only clicked
    assert stages.day_users(settings, DAY, 1)[0] == ["u1"]
    with pytest.raises(ValueError, match="no users"):
        stages.day_users(settings, "2026-01-03")


def test_true_ctr_matches_the_simulator(world):
    """full's true CTR is the simulator's truth of its slates (same seed, same answers)."""
    from serving.bundle import load

    users, w = stages.day_users(world, DAY, 8)
    out = serve_users(world, load(world, "champion"), users, ServingConfig.from_env())
    f = slate_frame(out)
    truth = simulate.true_click_prob(w, f["user_id"], f["item_id"], f["position"])
    doc = stages.run_stages(world, DAY, n_users=8, only=["full"])
    assert doc["variants"]["full"]["true_ctr"] == pytest.approx(float(np.mean(truth)))
