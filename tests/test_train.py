"""Retrieval training glue on tiny simulated days: artifacts, recommend, predict, forward evaluation."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.core import schema
from pipelines.data import simulate
from pipelines.data.validate import validate_partition
from pipelines.retrieval import data as training_data
from pipelines.retrieval import evaluate, predict, train

# integration: the module simulates a workspace and trains on it (and loads it in a subprocess)
pytestmark = pytest.mark.integration
DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three tiny simulated, validated days in one workspace shared by this module's tests."""
    from pipelines.core.settings import Settings

    home = tmp_path_factory.mktemp("train-home")
    s = Settings.from_env({"RECLOOP_HOME": str(home)})
    s.ensure_dirs()
    simulate.simulate(s, len(DAYS), "tiny", 3)
    for d in DAYS:
        validate_partition(s, d)
    return s


@pytest.fixture()
def ws(world, monkeypatch):
    monkeypatch.setenv("RECLOOP_HOME", str(world.home))
    return world


def test_training_data_positives_and_vocab(ws):
    data = training_data.load_training_data(ws, DAYS[1])
    events = training_data.read_positives(ws, schema.parse_date(DAYS[1]))
    assert set(events["event"]) <= set(training_data.POSITIVE_EVENTS)
    assert data.implicit.shape == (len(data.users), len(data.items))
    assert data.users.ids == sorted(data.users.ids)
    # purchases weigh more than clicks: total mass = clicks + 2 * purchases + ratings
    counts = events["event"].value_counts()
    expected = counts.get("click", 0) + 2 * counts.get("purchase", 0) + counts.get("rating", 0)
    assert data.implicit.sum() == pytest.approx(expected)


def test_train_save_load_recommend_excludes_seen(ws):
    summary = train.train(ws, "mf", DAYS[1])
    assert summary["version"] == f"mf-{DAYS[1]}"
    art = train.load_artifact(ws, "mf")
    recs = predict.recommend(ws, "mf", 5)
    assert list(recs.columns) == ["user_id", "item_id", "rank", "score", "source"]
    assert (recs["source"] == "model").all()  # every user known: no cold start
    assert recs.groupby("user_id")["item_id"].nunique().eq(5).all()
    seen = set()
    rows, cols = art.seen.nonzero()
    for r, c in zip(rows, cols, strict=True):
        seen.add((art.users.ids[r], art.items.ids[c]))
    assert not any((u, i) in seen for u, i in zip(recs["user_id"], recs["item_id"], strict=True))
    assert (recs.groupby("user_id")["score"].diff().dropna() <= 1e-6).all()  # best first


def test_rerun_of_a_date_gives_identical_artifacts(ws):
    def digest():
        folder = train.artifact_dir(ws, "popular", DAYS[1])
        return hashlib.sha256(
            b"".join(f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file())
        ).hexdigest()

    train.train(ws, "popular", DAYS[1])
    first = digest()
    train.train(ws, "popular", DAYS[1])
    assert digest() == first


def test_predict_marks_unknown_ids_and_keeps_rows(ws, tmp_path, capsys):
    train.train(ws, "itemknn", DAYS[1])
    art = train.load_artifact(ws, "itemknn")
    pairs = pd.DataFrame(
        {
            "user_id": [art.users.ids[0], "nobody", art.users.ids[1]],
            "item_id": [art.items.ids[0], art.items.ids[1], "nothing"],
        }
    )
    src, out = tmp_path / "pairs.csv", tmp_path / "scores.csv"
    pairs.to_csv(src, index=False)
    assert main(["predict", "--model", "itemknn", "--pairs", str(src), "--out", str(out)]) == 0
    got = pd.read_csv(out)
    assert got["known"].tolist() == [True, False, False]
    assert np.isfinite(got["score"][0]) and got["score"][1:].isna().all()
    assert "2 with unknown ids" in capsys.readouterr().out
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item\n1,2\n")
    assert main(["predict", "--model", "itemknn", "--pairs", str(bad), "--out", str(out)]) == 2
    assert "bad.csv" in capsys.readouterr().err


def test_recommend_cli_with_user_file(ws, tmp_path):
    train.train(ws, "popular", DAYS[1])
    art = train.load_artifact(ws, "popular")
    users = tmp_path / "users.txt"
    users.write_text("user_id\n" + "\n".join(art.users.ids[:3]) + "\nghost\n")
    out = tmp_path / "recs.parquet"
    assert (
        main(
            [
                "recommend",
                "--model",
                "popular",
                "--k",
                "4",
                "--users",
                str(users),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    recs = pd.read_parquet(out)
    # the unknown "ghost" is not dropped: it gets the cold-start list (no feature tables here:
    # the model's training counts)
    assert sorted(recs["user_id"].unique()) == sorted([*art.users.ids[:3], "ghost"])
    assert len(recs) == 16
    by_source = recs.groupby("source")["user_id"].unique().map(sorted).to_dict()
    assert by_source == {"cold_start": ["ghost"], "model": sorted(art.users.ids[:3])}


def test_forward_evaluation_scores_yesterdays_models_on_today(ws):
    train.train(ws, "mf", DAYS[1])
    out = evaluate.evaluate_forward(ws, DAYS[2], models=("mf",))
    assert out["trained_through"] == DAYS[1]
    metrics = out["metrics"]
    assert set(metrics) == {"mf", "popular", "itemknn", "userknn"}
    for row in metrics.values():
        assert 0.0 <= row["ndcg@10"] <= 1.0 and row["n_users"] > 0
    assert (ws.reports_dir / "eval" / f"date={DAYS[2]}.json").exists()
    first_day = evaluate.evaluate_forward(ws, DAYS[0], models=("mf",))
    assert "nothing to evaluate" in first_day["note"]
    assert out["scored_users"] == out["test_users"] == metrics["mf"]["n_users"] > 4


def test_forward_evaluation_scores_a_sample_of_at_most_eval_max_users(ws, monkeypatch):
    import dataclasses

    train.train(ws, "mf", DAYS[1])
    everyone = evaluate.evaluate_forward(ws, DAYS[2], models=("mf",))
    capped = dataclasses.replace(ws, eval_max_users=4)
    out = evaluate.evaluate_forward(capped, DAYS[2], models=("mf",))
    assert out["test_users"] == everyone["test_users"] > 4 and out["scored_users"] == 4
    assert {row["n_users"] for row in out["metrics"].values()} == {4.0}
    monkeypatch.setattr(evaluate, "USERKNN_MAX_USERS", 3)  # user-user similarity: too many users
    small = evaluate.evaluate_forward(capped, DAYS[2], models=("mf",))
    assert "userknn" not in small["metrics"] and "userknn" in small["skipped"]


def test_missing_model_is_a_clear_error(ws):
    with pytest.raises(FileNotFoundError, match="no trained 'userknn' model"):
        train.load_artifact(ws, "userknn")


def test_artifact_loads_in_a_fresh_process(ws):
    """load_model imports the model's module itself (a task process may not have imported it)."""
    import subprocess
    import sys

    train.train(ws, "mf", DAYS[1])
    code = "import sys; from models.base import load_model; print(type(load_model(sys.argv[1])).__name__)"
    folder = train.artifact_dir(ws, "mf", DAYS[1]) / "model"
    out = subprocess.run(
        [sys.executable, "-c", code, str(folder)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "ALS"


def test_group_codes_band_numbers_and_mark_unknown():
    frame = pd.DataFrame(
        {"user_age": [23, 29, 41, None], "user_gender": ["F", "M", None, "F"], "other": 1},
        index=[0, 1, 2, 4],  # row 3 has no features at all
    )
    attrs = (("user_age", "age"), ("user_gender", "gender"), ("user_country", "country"))
    codes = training_data.group_codes(frame, attrs, 5)
    assert codes.shape == (5, 2)  # no country column: that attribute is left out
    age, gender = codes[:, 0], codes[:, 1]
    assert age[0] == age[1] != age[2] and age[3] == age[4] == -1  # 20s, 20s, 40s
    assert gender[0] == gender[4] != gender[1] and gender[2] == gender[3] == -1
    raw = pd.DataFrame({"age": [23, 41], "category": ["a", "b"]})  # users.parquet names
    assert training_data.group_codes(raw, attrs, 2).tolist() == [[0], [1]]
    assert training_data.group_codes(raw, (("user_country",),), 2) is None
    assert training_data.group_codes(None, attrs, 2) is None


def test_mf_reads_side_attributes(ws):
    data = training_data.load_training_data(ws, DAYS[1])
    model = train.build_model("mf", data, ws, seed=0)
    assert model.popularity_weight == train.MF_PARAMS["popularity_weight"] > 0
    emb_u, emb_i = model.user_embeddings(), model.item_embeddings()
    assert emb_u.shape[1] == emb_i.shape[1] == train.MF_PARAMS["factors"] + 1
    # users of the same (age band, gender, country) with no positives in common still share
    # most of their taste: their factors are pulled toward the same group prior
    users = pd.read_parquet(ws.data_dir / "users.parquet").set_index("user_id")
    users = users.reindex(data.users.ids)
    key = (users["age"] // 10).astype(str) + users["gender"] + users["country"]
    x = model.user_factors.numpy()
    x = x - x.mean(0)  # every factor shares a popularity direction: compare the rest
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    same = key.to_numpy()[:, None] == key.to_numpy()[None, :]
    cos = x @ x.T
    off_diag = ~np.eye(len(x), dtype=bool)
    assert cos[same & off_diag].mean() > cos[~same].mean() + 0.2


@pytest.fixture(scope="module")
def five_days(tmp_path_factory):
    """Five tiny simulated, validated days (a test window of three needs days before it)."""
    from pipelines.core.settings import Settings

    s = Settings.from_env({"RECLOOP_HOME": str(tmp_path_factory.mktemp("window-home"))})
    s.ensure_dirs()
    simulate.simulate(s, 5, "tiny", 5)
    days = [f"2026-01-0{n}" for n in range(1, 6)]
    for d in days:
        validate_partition(s, d, data_docs=False)
    return s, days


def _scored_users(settings, art, first: str, last: str) -> set[str]:
    """Users the artifact knows with a positive in ``first``..``last`` on an item it knows and
    did not see them with (what forward evaluation scores)."""
    events = training_data.read_positives(
        settings, schema.parse_date(last), schema.parse_date(first)
    )
    known = events[events["user_id"].isin(art.users.ids) & events["item_id"].isin(art.items.ids)]
    rows, cols = art.users.encode(known["user_id"]), art.items.encode(known["item_id"])
    unseen = np.asarray(art.seen[rows, cols]).ravel() == 0
    return set(known.loc[unseen, "user_id"])


def test_forward_evaluation_with_a_test_window_pools_its_days(five_days):
    import dataclasses

    s, days = five_days
    for through in (days[1], days[3]):  # what H = 3 and H = 1 load on the last day
        train.train(s, "mf", through)
    out = evaluate.evaluate_forward(
        dataclasses.replace(s, gate_test_days=3), days[4], models=("mf",)
    )
    assert out["trained_through"] == days[1] and out["test_days"] == 3
    assert out["test_window"] == [days[2], days[4]]
    expected = _scored_users(s, train.load_artifact(s, "mf", days[1]), days[2], days[4])
    one_day = _scored_users(s, train.load_artifact(s, "mf", days[1]), days[4], days[4])
    assert len(expected) > len(one_day) > 0  # the window pools more users than its last day
    assert out["metrics"]["mf"]["n_users"] == len(expected)
    assert out["metrics"]["popular"]["n_users"] == len(expected)

    # H = 1 (the default): yesterday's model on today, as before
    daily = evaluate.evaluate_forward(s, days[4], models=("mf",))
    assert daily["trained_through"] == days[3] and daily["test_window"] == [days[4], days[4]]
    today = _scored_users(s, train.load_artifact(s, "mf", days[3]), days[4], days[4])
    assert daily["metrics"]["mf"]["n_users"] == len(today)
