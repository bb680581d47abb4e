"""`recloop recommend` covers every requested user: the model's top-K for users it knows, the
cold-start list (the service's trending order) for the others, one row set per user."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.commands.recommend import read_ids
from pipelines.data import simulate
from pipelines.data.validate import validate_partition
from pipelines.features.tables import compute_features, read_table
from pipelines.retrieval import cold_start, predict, train

# integration: the module simulates a workspace and trains models on it
pytestmark = pytest.mark.integration
DAYS = ["2026-01-01", "2026-01-02"]
K = 5


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two tiny simulated days, validated, with feature tables; mf, two_tower and popular trained
    through the last day."""
    from pipelines.core.settings import Settings

    home = tmp_path_factory.mktemp("recommend-home")
    s = Settings.from_env({"RECLOOP_HOME": str(home)})
    s.ensure_dirs()
    simulate.simulate(s, len(DAYS), "tiny", 5)
    for d in DAYS:
        validate_partition(s, d)
        compute_features(s, d)
    for name in ("mf", "two_tower", "popular"):
        train.train(s, name, DAYS[-1])
    return s


@pytest.fixture()
def ws(world, monkeypatch):
    monkeypatch.setenv("RECLOOP_HOME", str(world.home))
    return world


def expected_cold_start(settings) -> list[str]:
    """The service's cold-start order over the same feature table, first K ids."""
    from serving.bundle import ItemTable

    table = ItemTable.from_frame(read_table(settings, "item", DAYS[-1]).to_pandas(), DAYS[-1])
    return table.ids[table.order][:K].tolist()


@pytest.mark.parametrize("model", ["mf", "two_tower", "popular"])
def test_every_listed_user_gets_k_rows_with_its_source(ws, tmp_path, capsys, model):
    known = train.load_artifact(ws, model).users.ids[:3]
    listed = [known[0], "ghost-1", known[1], known[0], "ghost-2", known[2], "ghost-1"]
    users = tmp_path / "users.txt"
    users.write_text("user_id\n" + "\n".join(listed) + "\n\n")
    out = tmp_path / "recs.csv"
    argv = ["recommend", "--model", model, "--k", str(K), "--users", str(users), "--out", str(out)]
    assert main(argv) == 0
    recs = pd.read_csv(out, dtype={"user_id": str, "item_id": str})
    assert list(recs.columns) == ["user_id", "item_id", "rank", "score", "source"]
    # one row set per user, in the order first listed, K rows each
    assert recs["user_id"].drop_duplicates().tolist() == [
        known[0],
        "ghost-1",
        known[1],
        "ghost-2",
        known[2],
    ]
    assert recs.groupby("user_id").size().eq(K).all()
    assert (
        recs.groupby("user_id")["rank"].apply(list).map(lambda r: r == list(range(1, K + 1))).all()
    )
    source = recs.groupby("user_id")["source"].unique().map(list).to_dict()
    assert {u: source[u] for u in known} == {u: ["model"] for u in known}
    assert source["ghost-1"] == source["ghost-2"] == ["cold_start"]
    # cold start = the service's trending order (nothing excluded: no history)
    cold = recs[recs["user_id"] == "ghost-2"]["item_id"].tolist()
    assert cold == expected_cold_start(ws)
    printed = capsys.readouterr().out
    assert f"for 5 users to {out}: 3 from the model, 2 cold start" in printed
    assert "2 repeated id(s) listed once" in printed


def test_cold_start_items_are_workspace_items_and_skip_is_explicit(ws):
    items = set(read_table(ws, "item", DAYS[-1]).column("item_id").to_pylist())
    recs = predict.recommend(ws, "mf", K, ["nobody", "nobody"])
    assert len(recs) == K and set(recs["item_id"]) <= items
    assert (recs["source"] == "cold_start").all()
    assert predict.recommend(ws, "mf", K, ["nobody"], cold_start=False).empty


def test_cold_start_without_feature_tables_uses_training_counts(ws, tmp_path):
    from pipelines.core.settings import Settings

    art = train.load_artifact(ws, "popular")
    counts = np.asarray((art.seen > 0).sum(axis=0)).ravel()
    got = cold_start.cold_start_items(
        Settings.from_env({"RECLOOP_HOME": str(tmp_path)}), 3, DAYS[-1], (art.items.ids, counts)
    )
    assert got.basis == "model"
    assert [counts[art.items.ids.index(i)] for i in got.item_ids] == sorted(counts)[::-1][:3]
    with pytest.raises(FileNotFoundError, match="no item feature table"):
        cold_start.cold_start_items(Settings.from_env({"RECLOOP_HOME": str(tmp_path)}), 3, DAYS[0])


def test_ratings_only_popularity_falls_back_to_rating_counts():
    frame = pd.DataFrame(
        {
            "item_id": ["a", "b", "c"],
            "item_clicks_7d": [0, 0, 0],
            "item_purchases_7d": [0, 0, 0],
            "item_ratings_28d": [1, 9, 4],
            "item_trending": [1.0, 1.0, 1.0],
        }
    )
    ids, _ = cold_start.table_items(frame)
    assert ids.tolist() == ["b", "c", "a"]
    frame["item_clicks_7d"] = [3, 0, 1]  # any engagement: clicks + 2 purchases, as before
    assert cold_start.table_items(frame)[0].tolist() == ["a", "c", "b"]


def test_users_file_bad_line_names_file_and_line(tmp_path):
    ok = tmp_path / "ok.csv"
    ok.write_text("name,user_id\nx,u1\n\ny,u2\nz,u1\n")
    assert read_ids(ok, "user_id") == ["u1", "u2", "u1"]
    bad = tmp_path / "bad.txt"
    bad.write_text("u1\nu2\nu3,extra\n")
    with pytest.raises(ValueError, match=r"bad.txt line 3: expected 1 field"):
        read_ids(bad, "user_id")
    spaced = tmp_path / "spaced.txt"
    spaced.write_text("user_id\nu1\nu 2\n")
    with pytest.raises(ValueError, match=r"spaced.txt line 3: 'u 2' is not a user_id"):
        read_ids(spaced, "user_id")
