"""Two-tower model: learns a known block structure, seeds, save/load, cold start, negatives."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from models.base import load_model
from models.two_tower import TwoTower, encode_features, fit_feature_spec, mine_hard_negatives

N_USERS, N_ITEMS, N_BLOCKS, PER_USER = 600, 240, 6, 12


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The box has 2 shared cores: one torch thread is faster than two fighting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_blocks(seed: int = 0):
    """Users and items in ``N_BLOCKS`` blocks (the item's category); users only take items of
    their block, popular ones more often. One interaction per user is held out for testing."""
    rng = np.random.default_rng(seed)
    user_block = rng.integers(0, N_BLOCKS, N_USERS)
    item_block = np.arange(N_ITEMS) % N_BLOCKS
    pop = rng.pareto(1.5, N_ITEMS) + 1
    rows, cols = [], []
    for u in range(N_USERS):
        cand = np.flatnonzero(item_block == user_block[u])
        rows += [u] * PER_USER
        cols += list(rng.choice(cand, PER_USER, replace=False, p=pop[cand] / pop[cand].sum()))
    rows, cols = np.array(rows), np.array(cols)
    test = np.zeros(len(rows), bool)
    test[np.arange(N_USERS) * PER_USER] = True  # the first draw of each user

    def csr(m):
        return sp.csr_matrix((np.ones(m.sum()), (rows[m], cols[m])), shape=(N_USERS, N_ITEMS))

    users = pd.DataFrame(
        {
            "user_id": [f"u{u}" for u in range(N_USERS)],
            "age": rng.integers(18, 70, N_USERS).astype("int32"),
            "gender": rng.choice(["f", "m", None], N_USERS),
            "signup_date": pd.to_datetime("2024-01-01")
            + pd.to_timedelta(rng.integers(0, 300, N_USERS), "D"),
        }
    )
    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(N_ITEMS)],
            "category": [f"cat{b}" for b in item_block],
            "price": np.round(pop * 10, 2),
        }
    )
    return csr(~test), csr(test), users, items, user_block, item_block


def recall_at(recs: np.ndarray, test: sp.csr_matrix, k: int = 10) -> float:
    """Mean over users with test items of |top-k ∩ test| / min(k, |test|)."""
    out = []
    for u in range(test.shape[0]):
        truth = set(test[u].indices)
        if truth:
            out.append(len(truth & set(recs[u, :k].tolist())) / min(k, len(truth)))
    return float(np.mean(out))


@pytest.fixture(scope="module")
def data():
    return make_blocks()


@pytest.fixture(scope="module")
def fitted(data):
    train, _, users, items, *_ = data
    return TwoTower(dim=32, id_dim=32, hidden=(64,), seed=3).fit(train, users, items)


def test_learns_block_structure_beats_random_and_popularity(data, fitted):
    train, test, *_ = data
    users = np.arange(N_USERS)
    recs, scores = fitted.recommend(users, 10, exclude=train)
    assert recs.shape == (N_USERS, 10) and np.all(np.diff(scores, axis=1) <= 1e-6)
    assert not np.any(train[users[:, None], recs].toarray())  # seen items excluded
    model_recall = recall_at(recs, test)
    counts = np.asarray(train.sum(0)).ravel().astype(np.float64)
    pop_scores = np.tile(counts, (N_USERS, 1))
    pop_scores[train.nonzero()] = -np.inf
    pop_recall = recall_at(np.argsort(-pop_scores, axis=1, kind="stable")[:, :10], test)
    random_recall = 10 / (N_ITEMS - PER_USER + 1)
    assert model_recall > 4 * random_recall, (model_recall, random_recall)
    assert model_recall > pop_recall + 0.15, (model_recall, pop_recall)


def test_embeddings_shapes_unit_norm_and_score_consistent(fitted):
    ue, ie = fitted.user_embeddings(), fitted.item_embeddings()
    assert ue.shape == (N_USERS, 32) and ie.shape == (N_ITEMS, 32)
    assert ue.dtype == np.float32 and ie.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(ie, axis=1), 1.0, atol=1e-5)
    users, items = np.array([0, 5, 7]), np.array([3, 3, 100])
    np.testing.assert_allclose(
        fitted.score(users, items), fitted.score_all(users)[np.arange(3), items], atol=1e-6
    )


def test_deterministic_under_seed(data):
    train, _, users, items, *_ = data
    kw = {"dim": 16, "id_dim": 16, "hidden": (32,), "epochs": 2, "val_fraction": 0.0}
    a = TwoTower(seed=1, **kw).fit(train, users, items)
    b = TwoTower(seed=1, **kw).fit(train, users, items)
    c = TwoTower(seed=2, **kw).fit(train, users, items)
    assert np.array_equal(a.item_embeddings(), b.item_embeddings())
    assert np.array_equal(a.user_embeddings(), b.user_embeddings())
    assert a.loss_history == b.loss_history
    assert not np.allclose(a.item_embeddings(), c.item_embeddings())


def test_save_load_gives_identical_embeddings_and_encodings(tmp_path: Path, data, fitted):
    _, _, users, items, *_ = data
    folder = fitted.save(tmp_path / "tt")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model"] == "two_tower"
    cats = {e["name"]: e["vocab"] for e in cfg["item_spec"]["categorical"]}
    assert cats["category"] == [f"cat{b}" for b in range(N_BLOCKS)]
    price = next(e for e in cfg["item_spec"]["numeric"] if e["name"] == "price")
    assert price["transform"] == "log1p" and price["std"] > 0
    kinds = {e["name"]: e["transform"] for e in cfg["user_spec"]["numeric"]}
    assert kinds == {"age": "none", "signup_date": "days"}
    loaded = load_model(folder)
    assert isinstance(loaded, TwoTower)
    assert np.array_equal(loaded.user_embeddings(), fitted.user_embeddings())
    assert np.array_equal(loaded.item_embeddings(), fitted.item_embeddings())
    raw = items.iloc[[4, 9]].reset_index(drop=True)
    assert np.array_equal(loaded.encode_items(raw), fitted.encode_items(raw))
    hist = [[1, 7, 13], []]
    feats = users.iloc[[0, 1]].reset_index(drop=True)
    assert np.array_equal(loaded.encode_users(hist, feats), fitted.encode_users(hist, feats))


def test_new_item_gets_a_vector_close_to_its_category(data, fitted):
    *_, item_block = data
    ie = fitted.item_embeddings()
    new = pd.DataFrame({"category": [f"cat{b}" for b in range(N_BLOCKS)], "price": 12.0})
    vecs = fitted.encode_items(new)  # no id: the unknown row + features
    assert vecs.shape == (N_BLOCKS, 32)
    sims = vecs @ ie.T  # (blocks, items)
    for b in range(N_BLOCKS):
        same = sims[b, item_block == b].mean()
        other = sims[b, item_block != b].mean()
        assert same > other + 0.3, (b, same, other)
        nearest = np.argsort(-sims[b])[:10]
        assert np.mean(item_block[nearest] == b) >= 0.9


def test_new_user_from_history_gets_recommendations_of_that_block(data, fitted):
    *_, item_block = data
    ie = fitted.item_embeddings()
    history = [list(np.flatnonzero(item_block == b)[:5]) for b in range(N_BLOCKS)]
    uvec = fitted.encode_users(history)  # no features, no id
    top = np.argsort(-(uvec @ ie.T), axis=1)[:, :10]
    for b in range(N_BLOCKS):
        assert np.mean(item_block[top[b]] == b) >= 0.9


def test_known_ids_reproduce_stored_embeddings(data, fitted):
    _, _, _, items, *_ = data
    idx = np.array([0, 17, 230])
    got = fitted.encode_items(items.iloc[idx].reset_index(drop=True), items=idx)
    np.testing.assert_allclose(got, fitted.item_embeddings()[idx], atol=1e-6)


@pytest.mark.parametrize(
    "kw",
    [
        {"logq": False},
        {"negatives": {"uniform": 1.0, "popularity": 0.0}},
        {"negatives": {"uniform": 0.5, "popularity": 0.5}, "n_extra_negatives": 64},
        {"n_extra_negatives": 0},
    ],
    ids=["no-logq", "uniform", "mix", "in-batch-only"],
)
def test_negative_options_train(data, kw):
    train, test, users, items, *_ = data
    m = TwoTower(dim=16, id_dim=16, hidden=(32,), epochs=3, seed=0, **kw).fit(train, users, items)
    assert all(np.isfinite(m.loss_history))
    recs, _ = m.recommend(np.arange(N_USERS), 10, exclude=train)
    assert recall_at(recs, test) > 3 * 10 / N_ITEMS


@pytest.mark.parametrize("as_callable", [False, True], ids=["dict", "callable"])
def test_hard_negatives_path(data, fitted, as_callable):
    train, test, users, items, *_ = data
    hard = mine_hard_negatives(fitted, train, n=20, skip=2)
    assert set(hard) == set(range(N_USERS))
    for u in (0, 1, 2):
        assert len(hard[u]) == 20 and not set(hard[u]) & set(train[u].indices)
    source = hard.get if as_callable else hard
    m = TwoTower(
        dim=16, id_dim=16, hidden=(32,), epochs=2, seed=0,
        negatives={"uniform": 0.0, "popularity": 0.5, "hard": 0.5}, n_extra_negatives=32,
    )  # fmt: skip
    assert m.negative_plan(True) == (0.0, 0.5, 16, 16)
    # a seen item among the hard negatives is dropped before training
    u0_seen = int(train[0].indices[0])
    table = m.hard_table({0: np.array([u0_seen, hard[0][0]])}, train)
    assert table[0].tolist() == [int(hard[0][0])] and table[1].tolist() == [-1]
    m.fit(train, users, items, hard_negatives=source)
    assert all(np.isfinite(m.loss_history))
    recs, _ = m.recommend(np.arange(N_USERS), 10, exclude=train)
    assert recall_at(recs, test) > 3 * 10 / N_ITEMS


def test_hard_weight_without_hard_negatives_falls_back(caplog, data):
    train, *_ = data
    m = TwoTower(negatives={"hard": 1.0}, n_extra_negatives=8)
    with caplog.at_level(logging.WARNING):
        assert m.negative_plan(False) == (0.0, 1.0, 8, 0)
    assert "no hard negatives" in caplog.text


def test_id_only_towers_without_features(data):
    train, test, *_ = data
    m = TwoTower(dim=16, id_dim=16, hidden=(32,), seed=0).fit(train)
    assert m.config()["item_spec"] == {"numeric": [], "categorical": []}
    recs, _ = m.recommend(np.arange(N_USERS), 10, exclude=train)
    assert recall_at(recs, test) > 3 * 10 / N_ITEMS
    np.testing.assert_allclose(
        m.encode_items(items=np.array([3, 4])), m.item_embeddings()[[3, 4]], atol=1e-6
    )
    with pytest.raises(ValueError, match="give item_features"):
        m.encode_items()


def test_explicit_histories_are_used(data):
    train, *_ = data
    m = TwoTower(dim=8, id_dim=8, hidden=(16,), epochs=1, history_len=3, val_fraction=0.0)
    hist = [[5, 6, 7, 8]] + [[] for _ in range(N_USERS - 1)]
    m.fit(train, histories=hist)
    assert m.tensors["histories"][0].tolist() == [8, 7, 6]  # last 3, most recent first
    assert m.tensors["histories"][1].tolist() == [-1, -1, -1]
    with pytest.raises(ValueError, match="histories: expected"):
        m.fit(train, histories=hist[:3])


def test_feature_encoding_errors_name_the_column():
    frame = pd.DataFrame({"category": ["a", "b", None], "price": [1.0, np.nan, 100.0]})
    spec = fit_feature_spec(frame)
    num, cat = encode_features(
        pd.DataFrame({"category": ["b", "zzz"], "price": [1.0, None]}), spec, 2
    )
    assert cat[:, 0].tolist() == [2, 0]  # unseen → 0
    assert num[1, 0] == 0.0  # missing → the mean
    with pytest.raises(ValueError, match="missing categorical column 'category'"):
        encode_features(pd.DataFrame({"price": [1.0]}), spec, 1, "item features")
    train = sp.csr_matrix(np.eye(3))
    with pytest.raises(ValueError, match="item features: index must be the dense integer index"):
        TwoTower(epochs=1).fit(train, item_features=frame.set_index(pd.Index(["a", "b", "c"])))
    with pytest.raises(ValueError, match="item features: index 7 is outside"):
        TwoTower(epochs=1).fit(train, item_features=frame.set_index(pd.Index([0, 1, 7])))


# --- attribute-only towers and the popularity prior (the daily job's settings) -------------------
PRIOR_KW = {
    "dim": 16,
    "hidden": (32,),
    "epochs": 2,
    "val_fraction": 0.0,
    "user_ids": False,
    "item_ids": False,
    "history": False,
    "popularity_prior": True,
    "popularity_weight": 0.5,
    "temperature": 0.1,
}


@pytest.fixture(scope="module")
def with_prior(data):
    train, _, users, items, *_ = data
    feats_u = users[["age", "gender"]]
    return TwoTower(seed=5, **PRIOR_KW).fit(train, feats_u, items[["category"]])


def test_config_saved_before_the_new_keys_loads_with_the_old_behaviour(tmp_path: Path, fitted):
    # `fitted` uses the old defaults (ids and history on, no prior): strip the keys added later
    folder = fitted.save(tmp_path / "old")
    cfg = json.loads((folder / "config.json").read_text())
    for key in ("user_ids", "item_ids", "history", "popularity_prior", "popularity_weight"):
        del cfg[key]
    (folder / "config.json").write_text(json.dumps(cfg))
    state = torch.load(folder / "weights.pt", weights_only=True)
    assert "item_prior" not in state
    loaded = load_model(folder)
    assert loaded.hp["user_ids"] and loaded.hp["item_ids"] and loaded.hp["history"]
    assert not loaded.hp["popularity_prior"]
    assert np.array_equal(loaded.user_embeddings(), fitted.user_embeddings())
    assert np.array_equal(loaded.item_embeddings(), fitted.item_embeddings())


def test_save_load_with_popularity_prior(tmp_path: Path, data, with_prior):
    loaded = load_model(with_prior.save(tmp_path / "prior"))
    assert loaded.hp["popularity_prior"] and loaded.hp["popularity_weight"] == 0.5
    assert torch.equal(loaded.tensors["item_prior"], with_prior.tensors["item_prior"])
    users = np.arange(N_USERS)
    assert np.array_equal(loaded.score_all(users), with_prior.score_all(users))
    assert np.array_equal(loaded.item_embeddings(), with_prior.item_embeddings())
    # the prior is required when the config says it is on
    state = {k: v for k, v in with_prior.state().items() if k != "item_prior"}
    fresh = TwoTower.from_config(with_prior.config())
    with pytest.raises(ValueError, match="item_prior"):
        fresh.load_state(state)


def test_score_is_cosine_plus_weighted_log_popularity(data, with_prior):
    train, *_ = data
    ue, ie = with_prior.user_embeddings(), with_prior.item_embeddings()
    assert ue.shape == (N_USERS, 17) and ie.shape == (N_ITEMS, 17)
    u, v = ue[:, :16], ie[:, :16]
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # served prior: log(1 + positives of the item) over all the training positives
    log_pop = np.log1p(np.asarray((train > 0).sum(0), dtype=np.float64).ravel())
    np.testing.assert_allclose(with_prior.tensors["item_prior"].numpy(), log_pop, rtol=1e-6)
    expected = u @ v.T + 0.1 * 0.5 * log_pop[None, :]
    np.testing.assert_allclose(
        with_prior.score_all(np.arange(N_USERS)), expected, rtol=1e-5, atol=1e-5
    )
    users, items = np.array([0, 3, 9]), np.array([1, 100, 239])
    np.testing.assert_allclose(
        with_prior.score(users, items), expected[users, items], rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("who", ["user", "item"])
def test_tower_without_inputs_is_a_clear_error(data, who):
    train, _, users, items, *_ = data
    kw = {**PRIOR_KW, "epochs": 1}
    if who == "user":  # no ids, no history, no user features
        args = (train, None, items[["category"]])
    else:  # no item ids, no item features
        args = (train, users[["age", "gender"]], None)
    with pytest.raises(ValueError, match=f"the {who} tower has no input"):
        TwoTower(seed=0, **kw).fit(*args)
    # the user history alone is an input
    if who == "user":
        TwoTower(seed=0, **{**kw, "history": True}).fit(*args)


def test_max_steps_per_epoch_bounds_the_optimizer_steps(data, monkeypatch):
    train, _, users, items, *_ = data
    steps = []
    real_step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: (steps.append(1),
                        real_step(self, *a, **k))[1])  # fmt: skip
    kw = {"dim": 16, "id_dim": 16, "hidden": (32,), "epochs": 2, "val_fraction": 0.0}
    TwoTower(seed=1, batch_size=32, **kw).fit(train, users, items, progress=False)
    whole = len(steps)
    steps.clear()
    model = TwoTower(seed=1, batch_size=32, max_steps_per_epoch=3, **kw)
    model.fit(train, users, items, progress=False)
    assert whole > 6 and len(steps) == 6  # 2 epochs x 3 batches
    assert model.config()["max_steps_per_epoch"] == 3
