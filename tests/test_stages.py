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
        user_tower: object = None

    v = stages.variants(B(), cfg)
    assert list(v) == ["full", "retrieval_only", "trending", "ranker_tempered", "two_tower_only",
                       "trending_only"]  # fmt: skip
    assert v["ranker_tempered"][1].retrieval_weight > 0.0
    # a bundle served in the tempered order shows the ranker's own order instead
    tempered = stages.variants(B(), cfg.with_(retrieval_weight=0.3))
    assert "ranker_tempered" not in tempered
    assert tempered["ranker_untempered"][1].retrieval_weight == 0.0
    assert "ranker_tempered" not in stages.variants(B(ranker=None), cfg)
    assert v["full"][1] is cfg and v["retrieval_only"][0].ranker is None
    assert v["trending"][1].force_cold_start and v["two_tower_only"][0].ranker == "r"
    assert v["two_tower_only"][1].source_quotas == (("two_tower", cfg.candidates),)
    # with a user tower: new users served trending instead, everything else as served
    towered = stages.variants(B(user_tower="t"), cfg)
    assert list(towered)[:4] == ["full", "retrieval_only", "trending", "new_users_trending"]
    nt = towered["new_users_trending"][1]
    assert nt.new_users == "trending" and not nt.force_cold_start
    assert nt.source_quotas == cfg.source_quotas
    assert "new_users_trending" not in stages.variants(B(user_tower="t"), nt)
    # with a ranker and a user tower: the ranker's order blended with the tower's, untempered
    assert list(towered)[4:6] == ["ranker_tempered", "ranker_tower"]
    blend = towered["ranker_tower"][1]
    assert blend.tower_weight > 0.0 and blend.retrieval_weight == 0.0
    assert towered["ranker_tempered"][1].tower_weight == 0.0
    blended = stages.variants(B(user_tower="t"), cfg.with_(tower_weight=0.2))
    assert "ranker_tower" not in blended and blended["ranker_no_tower"][1].tower_weight == 0.0
    assert "ranker_tower" not in stages.variants(B(user_tower="t", ranker=None), cfg)


def test_stages_document_scores_every_variant(world):
    doc = stages.run_stages(world, DAY, n_users=12)
    cfg = ServingConfig()
    fixed = ["full", "retrieval_only", "trending"]
    tower = [n for n in ("new_users_trending", "new_users_tower") if n in doc["variants"]]
    order = [n for n in ("ranker_tempered", "ranker_untempered") if n in doc["variants"]]
    assert len(order) == 1  # the bundle has a ranker: the other order is shown
    blend = [n for n in ("ranker_tower", "ranker_no_tower") if n in doc["variants"]]
    assert len(blend) == 1  # and a user tower: the other blend is shown
    names = fixed + tower + order + blend + [f"{s}_only" for s, _ in cfg.source_quotas]
    assert doc["date"] == DAY and doc["users"] == 12 and list(doc["variants"]) == names
    users, w = stages.day_users(world, DAY, 12)
    for name, v in doc["variants"].items():
        assert 0.0 < v["true_ctr"] < 1.0, name
        assert 0.0 < v["ope_snips"] < 1.0 and v["ope_ess"] > 1.0, name  # the day's logs
        assert 1 <= v["distinct_items"] <= 120 and v["impressions"] == 120
        assert 0.0 < v["coverage"] <= 1.0 and 0.0 <= v["gini"] < 1.0
        assert set(v["true_ctr_by_bucket"]) == set(BUCKETS)
        assert sum(v["bucket_users"].values()) == 12 and sum(v["paths"].values()) == 12
        assert 0.0 <= v["ndcg@10"] <= v["hit_rate@10"] <= 1.0 and v["forward_users"] >= 1
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
    assert set(doc) == {"date", "bundle", "users", "forward_window", "variants"}
    assert list(doc["variants"]) == ["full", "trending"]
    for v in doc["variants"].values():
        assert {"true_ctr", "ope_snips", "distinct_items", "ild", "calibration_kl"} <= set(v)
    assert main(["stages", "--date", DAY, "--users", "5", "--variants", "trending"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[1].split()[:3] == ["variant", "true_ctr", "ope_snips"]
    assert table.splitlines()[2].startswith("trending")


def _write_day(settings, day: str, rows) -> None:
    """Validated events of ``day``: ``rows`` of (user, minute, event, item)."""
    ts = pd.Timestamp(day, tz="UTC")
    frame = pd.DataFrame(
        [{"event_id": f"{day}-e{n}", "ts": ts + pd.Timedelta(minutes=m), "user_id": u,
          "item_id": i, "event": e, "value": 1.0, "request_id": f"r{n}", "position": 0,
          "arm": "champion", "model_version": "bundle-1", "propensity": 0.5}
         for n, (u, m, e, i) in enumerate(rows)]
    )  # fmt: skip
    schema.write_partition_atomic(
        schema.conform(frame, schema.INTERACTIONS),
        settings.validated_dir,
        dt.date.fromisoformat(day),
    )


def test_users_without_a_truth_are_the_forward_windows_users_with_positives(settings):
    _write_day(settings, DAY, [("u2", 3, "impression", "i1"), ("u1", 1, "impression", "i1"),
                               ("u3", 2, "click", "i1"), ("u4", 9, "purchase", "i2")])  # fmt: skip
    _write_day(settings, "2026-01-03", [("u1", 0, "click", "i3")])
    users, w = stages.day_users(settings, DAY)  # default horizon: gate_test_days = 1
    assert users == ["u3", "u4"] and w is None  # by first positive; u1, u2 only saw items
    assert stages.day_users(settings, DAY, 1)[0] == ["u3"]
    assert stages.day_users(settings, DAY, horizon_days=2)[0] == ["u3", "u4", "u1"]
    with pytest.raises(ValueError, match="no users"):
        stages.day_users(settings, "2026-01-04")
    window = stages.forward_window_from(settings, DAY, 3)
    assert (window.first.isoformat(), window.day.isoformat()) == (DAY, "2026-01-04")
    assert window.trained_through.isoformat() == "2026-01-01"
    with pytest.raises(ValueError, match="horizon"):
        stages.forward_window_from(settings, DAY, 0)


def _resp(user: str, items: list[str]) -> dict:
    return {"user_id": user, "items": [{"item_id": i, "position": p} for p, i in enumerate(items)]}


def test_forward_ndcg_of_served_slates_is_the_hand_computation(settings):
    """Two days of positives, graded as forward evaluation grades them (purchase 2, click 1)."""
    _write_day(settings, DAY, [("u1", 1, "click", "a"), ("u2", 2, "click", "d"),
                               ("u1", 3, "impression", "c"), ("u9", 4, "click", "a")])  # fmt: skip
    _write_day(settings, "2026-01-03", [("u1", 0, "purchase", "b")])
    window = stages.forward_window_from(settings, DAY, 2)
    positives = stages.forward_positives(settings, window)
    assert stages.window_users(positives) == ["u1", "u2", "u9"]
    # u3 has no forward positive; u9 has one but was not replayed: neither is scored
    responses = [_resp("u1", ["a", "x", "b", "c"]), _resp("u2", ["c"]), _resp("u3", ["d"])]
    forward = stages.forward_relevance(settings, window, positives, ["u1", "u2", "u3"])
    assert forward[0].ids == ["u1", "u2"] and forward[1].ids == ["a", "b", "d"]
    buckets = pd.Series({"u1": "5-19", "u2": "0"})
    out = stages.forward_figures(responses, forward, buckets)
    # u1: a (grade 1) at rank 1, b (grade 2) at rank 3; ideal: b then a
    dcg = (2**1 - 1) / np.log2(2) + (2**2 - 1) / np.log2(4)
    idcg = (2**2 - 1) / np.log2(2) + (2**1 - 1) / np.log2(3)
    assert out["forward_users"] == 2
    assert out["ndcg@10"] == pytest.approx((dcg / idcg + 0.0) / 2)  # u2 missed d
    assert out["hit_rate@10"] == 0.5 and out["recall@10"] == 0.5
    assert out["ndcg_by_bucket"]["5-19"] == pytest.approx(dcg / idcg)
    assert out["ndcg_by_bucket"]["0"] == 0.0 and out["ndcg_by_bucket"]["20+"] is None
    assert out["forward_users_by_bucket"] == {"0": 1, "1-4": 0, "5-19": 1, "20+": 0}
    # only the first 10 positions count; a user without a response scores 0
    late = [_resp("u1", [f"z{n}" for n in range(10)] + ["a", "b"])]
    assert stages.forward_figures(late, forward, buckets)["ndcg@10"] == 0.0
    none = stages.forward_figures(responses, None, buckets)
    assert none["ndcg@10"] is None and none["forward_users"] == 0


def _hand_ndcg(responses: list[dict], positives: pd.DataFrame, k: int = 10) -> float:
    """Mean NDCG@k over the responded users with positives: gain 2^grade - 1, grade 1 a click or
    rating and 2 a purchase, summed per item and capped at 2."""
    weight = np.where(positives["event"] == "purchase", 2.0, 1.0)
    grades = (
        pd.Series(weight)
        .groupby(
            [
                positives["user_id"].astype(str).to_numpy(),
                positives["item_id"].astype(str).to_numpy(),
            ]
        )
        .sum()
    )
    grades = grades.clip(upper=2.0)  # fmt: skip
    scores = []
    for r in responses:
        u = str(r["user_id"])
        if u not in grades.index.get_level_values(0):
            continue
        g = grades.loc[u]
        shown = [x["item_id"] for x in sorted(r["items"], key=lambda x: x["position"])][:k]
        dcg = sum((2 ** g.get(i, 0.0) - 1) / np.log2(p + 2) for p, i in enumerate(shown))
        best = sorted(g.to_numpy(), reverse=True)[:k]
        scores.append(dcg / sum((2**b - 1) / np.log2(p + 2) for p, b in enumerate(best)))
    return float(np.mean(scores))


def test_true_ctr_matches_the_simulator(world):
    """full's true CTR is the simulator's truth of its slates (same seed, same answers)."""
    from serving.bundle import load

    users, w = stages.day_users(world, DAY, 8)
    before = (dt.date.fromisoformat(DAY) - dt.timedelta(days=1)).isoformat()
    bundle = load(world, "champion", as_of=before)  # the item table the service had on DAY
    assert bundle.item_table.date == before
    out = serve_users(world, bundle, users, ServingConfig.from_env())
    f = slate_frame(out)
    truth = simulate.true_click_prob(w, f["user_id"], f["item_id"], f["position"])
    doc = stages.run_stages(world, DAY, n_users=8, only=["full"])
    assert doc["variants"]["full"]["true_ctr"] == pytest.approx(float(np.mean(truth)))
    # and its forward NDCG@10 that of its slates against the day's logged positives
    positives = stages.forward_positives(world, stages.forward_window_from(world, DAY))
    scored = set(positives["user_id"].astype(str)) & set(users)
    full = doc["variants"]["full"]
    assert doc["forward_window"] == [DAY, DAY] and full["forward_users"] == len(scored) > 0
    assert full["ndcg@10"] == pytest.approx(_hand_ndcg(out, positives))


def test_funnel_bounds_each_stage_by_the_one_before(world):
    """The funnel's figures are the simulator's truth of the candidates each stage had: the
    served slates and the score order cannot beat the best the candidates allow, nor that the
    oracle's slates; ``served`` is ``true_ctr``, and a hand computation gives the rest."""
    users, w = stages.day_users(world, DAY, 10)
    doc = stages.run_stages(world, DAY, n_users=10, only=["full", "trending"])
    for name, v in doc["variants"].items():
        f = v["funnel"]
        assert f["served"] == pytest.approx(v["true_ctr"]), name
        assert f["score_order"] <= f["candidates_best"] + 1e-12, name
        assert f["served"] <= f["candidates_best"] + 1e-12, name
        assert f["candidates_best"] <= f["oracle"] + 1e-12, name
        assert 0.0 <= f["oracle_recall"] <= 1.0 and 0.0 < f["score_order"], name
        ff = v["forward_funnel"]  # the same stages against the day's logged positives
        assert ff["served"] == pytest.approx(v["ndcg@10"]), name
        assert ff["score_order"] <= ff["candidates_best"] + 1e-12, name
        assert ff["served"] <= ff["candidates_best"] + 1e-12, name
        assert 0.0 < ff["positives_in_candidates"] <= 1.0, name
    # by hand, for one user's response: the candidates' truth at slot 0, sorted / in score order
    from serving.bundle import load

    before = (dt.date.fromisoformat(DAY) - dt.timedelta(days=1)).isoformat()
    bundle = load(world, "champion", as_of=before)
    out = serve_users(world, bundle, users[:1], ServingConfig.from_env())
    cand = out[0]["candidates"]
    assert len(cand["ids"]) == len(cand["scores"]) >= 10
    rel = simulate.true_click_prob(w, [users[0]] * len(cand["ids"]), cand["ids"], 0)
    exam = simulate.EXAMINATION[:10]
    best = float(np.mean(np.sort(rel)[::-1][:10] * exam))
    order = rel[np.argsort(-np.asarray(cand["scores"]), kind="stable")[:10]]
    f = stages.funnel_figures(out, w, DAY)
    assert f["candidates_best"] == pytest.approx(best)
    assert f["score_order"] == pytest.approx(float(np.mean(order * exam)))
    # without candidates (a client's response) there is no funnel
    bare = [{k: v for k, v in r.items() if k != "candidates"} for r in out]
    assert stages.funnel_figures(bare, w, DAY)["oracle"] is None


def test_forward_funnel_orders_the_candidates_by_the_forward_positives():
    """Hand case: user u1's forward positives a (grade 1), b (1), c (2); candidates x, a, c
    scored 3, 2, 1; served [a]. Best of the candidates = [c, a, x], score order = [x, a, c]."""
    import scipy.sparse as sp

    from pipelines.core.metrics import ndcg_at_k
    from pipelines.core.vocab import Vocab

    users, items = Vocab(["u1", "u2"]), Vocab(["a", "b", "c"])
    rel = sp.csr_matrix(np.array([[1.0, 1.0, 2.0], [0.0, 0.0, 0.0]]))
    resp = _resp("u1", ["a"])
    resp["candidates"] = {"ids": ["x", "a", "c"], "scores": [3.0, 2.0, 1.0]}
    other = {**_resp("u9", ["a"]), "candidates": {"ids": ["a"], "scores": [1.0]}}  # no positives
    f = stages.forward_funnel([resp, other], (users, items, rel))

    def ndcg(rows: list[int]) -> float:
        recs = np.full((2, stages.FORWARD_K), -1, dtype=np.int64)
        recs[0, : len(rows)] = rows
        return ndcg_at_k(recs, rel, stages.FORWARD_K)

    assert f["candidates_best"] == pytest.approx(ndcg([2, 0, -1]))
    assert f["score_order"] == pytest.approx(ndcg([-1, 0, 2]))
    assert f["served"] == pytest.approx(ndcg([0]))
    assert f["score_order"] < f["candidates_best"] and f["served"] < f["candidates_best"]
    assert f["positives_in_candidates"] == pytest.approx(2 / 3)
    assert stages.forward_funnel([resp], None)["served"] is None


def test_the_stage_gate_records_the_funnel_of_full(world):
    """judge_stages on a simulator workspace records ``full``'s stage funnel, rounded; its
    served figure is the truth of the slates the gate replayed (bounded as in the funnel)."""
    from pipelines.release.stage_gate import judge_stages

    out = judge_stages(world, "champion", DAY, max_requests=20)
    f = out["funnel"]
    assert out["judged_by"] == "truth" and f["served"] is not None
    assert f["score_order"] <= f["candidates_best"] <= f["oracle"]
    assert f["served"] <= f["candidates_best"] and set(f["known"]) == set(simulate.KNOWLEDGE)
    assert all(round(v, 4) == v for v in f["known"].values())


def test_paired_difference_is_the_mean_of_the_users_differences_with_its_interval():
    rng = np.random.default_rng(3)
    users = [f"u{n}" for n in range(400)]
    base = pd.Series(rng.uniform(0.0, 0.2, 400), index=users)  # a wide spread between users
    same = stages.paired_difference(base, base)
    assert same == {"diff": 0.0, "ci_low": 0.0, "ci_high": 0.0, "users": 400}
    # +0.01 for every user, plus noise far smaller than the users' spread: the pairing sees it
    better = base + 0.01 + rng.normal(0.0, 0.002, 400)
    up = stages.paired_difference(better, base)
    assert up["diff"] == pytest.approx(float((better - base).mean()))
    assert 0.0 < up["ci_low"] < up["diff"] < up["ci_high"] < 0.02
    assert stages.paired_difference(better, base) == up  # seeded
    down = stages.paired_difference(base, better)
    assert down["diff"] == pytest.approx(-up["diff"]) and down["ci_high"] < 0.0
    # only the shared users are compared, whatever the order of either index
    part = better.iloc[::-1].iloc[:100]
    got = stages.paired_difference(part, base)
    assert got["users"] == 100
    assert got["diff"] == pytest.approx(float((part - base.loc[part.index]).mean()))
    none = stages.paired_difference(base.iloc[:0], base)
    assert none == {"diff": None, "ci_low": None, "ci_high": None, "users": 0}


def test_an_interval_read_among_many_is_widened_for_the_comparisons():
    rng = np.random.default_rng(5)
    users = [f"u{n}" for n in range(300)]
    base = pd.Series(rng.uniform(0.0, 0.2, 300), index=users)
    # a small gain, about 2.2 standard errors: the plain interval clears 0, Bonferroni over 9
    # comparisons (2.8 standard errors) does not
    d = rng.normal(0.0, 0.01, 300)
    better = base + d - d.mean() + 2.2 * 0.01 / np.sqrt(300)
    one = stages.paired_difference(better, base)
    many = stages.paired_difference(better, base, comparisons=9)
    assert "comparisons" not in one and many["comparisons"] == 9
    assert many["diff"] == pytest.approx(one["diff"])
    assert one["ci_low"] > 0.0 > many["ci_low_adjusted"]
    assert many["ci_low_adjusted"] < many["ci_low"] <= many["ci_high"] < many["ci_high_adjusted"]
    assert many["ci_low"] == pytest.approx(one["ci_low"], abs=2e-4)  # more replicates, same level
    empty = stages.paired_difference(base.iloc[:0], base, comparisons=9)
    assert empty["ci_low_adjusted"] is None and empty["comparisons"] == 9


def test_user_values_are_each_users_own_figures(settings):
    _write_day(settings, DAY, [("u1", 1, "click", "a"), ("u2", 2, "click", "d")])
    window = stages.forward_window_from(settings, DAY, 1)
    positives = stages.forward_positives(settings, window)
    forward = stages.forward_relevance(settings, window, positives, ["u1", "u2", "u3"])
    responses = [_resp("u1", ["x", "a"]), _resp("u2", ["d"]), _resp("u3", ["a"])]
    frame = slate_frame([])  # no simulator truth: the frame is not read
    got = stages.user_values(responses, frame, None, forward)
    assert list(got) == ["ndcg@10"]  # no simulator truth: no true CTR
    assert got["ndcg@10"].to_dict() == pytest.approx({"u1": 1 / np.log2(3), "u2": 1.0})
    buckets = pd.Series({"u1": "0", "u2": "0"})
    mean = stages.forward_figures(responses, forward, buckets)["ndcg@10"]
    assert got["ndcg@10"].mean() == pytest.approx(mean)
    assert stages.user_values(responses, frame, None, None) == {}


def test_every_variant_is_compared_with_full_on_the_same_users(world):
    doc = stages.run_stages(world, DAY, n_users=12, only=["full", "retrieval_only", "trending"])
    assert "vs_full" not in doc["variants"]["full"]
    for name in ("retrieval_only", "trending"):
        v = doc["variants"][name]["vs_full"]["true_ctr"]
        assert v["users"] == 12 and v["ci_low"] <= v["diff"] <= v["ci_high"]
        # full slates of 10: the users' mean difference is the difference of the means
        gap = doc["variants"][name]["true_ctr"] - doc["variants"]["full"]["true_ctr"]
        assert v["diff"] == pytest.approx(gap)
        assert set(doc["variants"][name]["vs_full"]) <= {"true_ctr", "ndcg@10"}
        # two variants compared: each interval is also given widened for the two
        assert v["comparisons"] == 2
        assert v["ci_low_adjusted"] <= v["ci_low"] and v["ci_high"] <= v["ci_high_adjusted"]
    table = stages.format_table(doc)
    assert "vs full" in table and "Bonferroni over the 2 variants" in table
    alone = stages.run_stages(world, DAY, n_users=12, only=["trending"])
    assert "vs_full" not in alone["variants"]["trending"]
