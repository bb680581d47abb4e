"""One contract for every retriever (``models.base.Retriever``), plus what is particular to ALS
and the baselines. The rankers' contract is ``tests/test_ranker_contract.py``.

To put another retriever under the contract add one line to ``CASES``:
``Case("name", lambda: Model(...), personalized=True)`` (``fit`` gets the ``(U, I)`` matrix;
pass extra fit arguments through ``fit_kwargs``). A check that does not apply to a model (no
embeddings, not personalised) is skipped with the reason, never passed.

The synthetic data has a known right answer: two disjoint blocks (users 0-19 x items 0-11 and
users 20-39 x items 12-23), each user has seen 6 of their block's 12 items, so the best unseen
items for a user are exactly the other 6 of their block.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from models.als import ALS
from models.base import (
    CONFIG_FILE,
    MODEL_CLASSES,
    WEIGHTS_FILE,
    Retriever,
    load_model,
    top_k_rows,
)
from models.baselines import ItemKNN, MostPopular, UserKNN, topk_similarity
from models.bpr import BPR
from models.dssm import DSSM
from models.ncf import NCF
from models.sequential import BERT4Rec, GRU4Rec, SASRec
from models.two_tower import TwoTower

N_USERS, N_ITEMS, BLOCK_USERS, BLOCK_ITEMS, SEEN = 40, 24, 20, 12, 6


def block_matrix(seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    rows, cols, vals = [], [], []
    for u in range(N_USERS):
        block = u // BLOCK_USERS
        items = block * BLOCK_ITEMS + rng.choice(BLOCK_ITEMS, SEEN, replace=False)
        rows += [u] * SEEN
        cols += items.tolist()
        vals += rng.integers(1, 4, SEEN).tolist()  # counts 1..3
    return sp.csr_matrix((np.array(vals, np.float32), (rows, cols)), shape=(N_USERS, N_ITEMS))


def block_codes() -> dict[str, np.ndarray]:
    """Side attributes that name each row's block: users ``(U, 2)`` (block, a constant), items
    ``(I,)`` (block)."""
    users = np.stack([np.arange(N_USERS) // BLOCK_USERS, np.zeros(N_USERS, np.int64)], axis=1)
    return {"user_groups": users, "item_groups": np.arange(N_ITEMS) // BLOCK_ITEMS}


def block_frames() -> dict[str, pd.DataFrame]:
    """The same attributes as feature frames (indexed by dense index): users ``block``, items
    ``category``, both the block's name."""
    users = pd.DataFrame({"block": [f"b{b}" for b in np.arange(N_USERS) // BLOCK_USERS]})
    items = pd.DataFrame({"category": [f"b{b}" for b in np.arange(N_ITEMS) // BLOCK_ITEMS]})
    return {"user_features": users, "item_features": items}


#: a small two-tower: 240 positives, no validation split, a few epochs (well under a second)
SMALL_TOWERS = {
    "dim": 8,
    "id_dim": 8,
    "hidden": (16,),
    "batch_size": 48,
    "n_extra_negatives": 8,
    "val_fraction": 0.0,
    "temperature": 0.1,
    "epochs": 10,
}
#: small sequence models (40 windows of 6 items, ~0.3 s each)
SMALL_SEQUENCE = {"dim": 16, "max_len": 8, "epochs": 15, "batch_size": 16, "lr": 0.01}
#: the daily job's settings: attribute-only towers plus the popularity prior
ATTRIBUTE_TOWERS = {
    "user_ids": False,
    "item_ids": False,
    "history": False,
    "popularity_prior": True,
    "popularity_weight": 0.5,
}


@dataclass(frozen=True)
class Case:
    name: str
    make: Callable[[], Retriever]
    personalized: bool = True  # must find the block structure
    fit_kwargs: dict[str, Any] = field(default_factory=dict)


CASES = [
    # the data has rank 2 (two blocks), so two factors are the right model size
    Case("als_cg", lambda: ALS(factors=2, regularization=0.1, alpha=5.0, iterations=8)),
    Case("als_cholesky", lambda: ALS(factors=2, regularization=0.1, alpha=5.0, solver="cholesky")),
    Case("als_nmf", lambda: ALS(factors=2, regularization=0.1, alpha=5.0, nonnegative=True)),
    # side attributes + popularity prior (the daily job's MF): same contract
    Case(
        "als_side_prior",
        lambda: ALS(factors=2, regularization=0.1, alpha=5.0, popularity_weight=0.05),
        fit_kwargs=block_codes(),
    ),
    # explicit: every observed cell is a rating, no block signal in unobserved cells to rank on
    Case("als_explicit", lambda: ALS(factors=3, feedback="explicit", iterations=5), False),
    Case("itemknn_cosine", lambda: ItemKNN(k=5, similarity="cosine")),
    Case("itemknn_pearson", lambda: ItemKNN(k=5, similarity="pearson")),
    # top-N settings: shrunk similarities, votes of the history's neighbours, plain sums, prior
    Case(
        "itemknn_topn",
        lambda: ItemKNN(
            k=5, shrinkage=2.0, neighbours_of="history", normalize="none", popularity_weight=0.1
        ),
    ),
    Case("itemknn_rated", lambda: ItemKNN(k=5, shrinkage=1.0, normalize="rated")),
    Case("userknn_cosine", lambda: UserKNN(k=5, similarity="cosine")),
    Case("userknn_pearson", lambda: UserKNN(k=5, similarity="pearson")),
    Case(
        "popular",
        lambda: MostPopular(window_days=7),
        False,
        {"item_weights": np.arange(N_ITEMS, dtype=np.float32)},
    ),
    # ids + history, in-batch and popularity negatives with log-Q correction
    Case("two_tower", lambda: TwoTower(**SMALL_TOWERS)),
    Case(
        "two_tower_attributes_prior",
        lambda: TwoTower(**SMALL_TOWERS, **ATTRIBUTE_TOWERS),
        fit_kwargs=block_frames(),
    ),
    # BCE with 4 sampled negatives per positive; logits, no embeddings (not a dot product)
    Case(
        "ncf",
        lambda: NCF(factors=4, embed_dim=8, layers=(16, 8), epochs=8, batch_size=256, lr=0.02),
    ),
    Case("bpr", lambda: BPR(factors=2, regularization=0.03, batch_size=32, lr=0.05)),
    # next-item models; without sequences they read each row's items in a seeded order
    Case("gru4rec", lambda: GRU4Rec(**SMALL_SEQUENCE)),
    Case("sasrec", lambda: SASRec(**SMALL_SEQUENCE)),
    # Cloze: only the masked share of items are targets, so more of them and twice the epochs
    Case("bert4rec", lambda: BERT4Rec(**{**SMALL_SEQUENCE, "epochs": 30}, mask_prob=0.4)),
    # word-hashed titles (each block's share a theme word), cosine, sampled softmax
    Case(
        "dssm",
        lambda: DSSM(n_buckets=512, hidden=(32,), dim=16, epochs=8, batch_size=32, lr=0.01),
        fit_kwargs={"item_text": [f"{('river', 'engine')[i // 12]} no {i}" for i in range(24)]},
    ),
]


@pytest.fixture(scope="module")
def data() -> sp.csr_matrix:
    return block_matrix()


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def fitted(request, data) -> tuple[Case, Retriever]:
    case: Case = request.param
    return case, case.make().fit(data, **case.fit_kwargs)


# --- the contract ---------------------------------------------------------------------------------
def test_registered(fitted):
    _, model = fitted
    assert isinstance(model, Retriever)
    assert MODEL_CLASSES[model.name] is type(model)


def test_block_structure_recovered(fitted, data):
    case, model = fitted
    if not case.personalized:
        pytest.skip("not a personalised model")
    users = np.arange(N_USERS)
    items, _ = model.recommend(users, 3, exclude=data)
    for u in users:
        block = u // BLOCK_USERS
        seen = set(data[u].indices)
        for i in items[u]:
            assert i // BLOCK_ITEMS == block, f"user {u} got item {i} of the other block"
            assert i not in seen


def test_seen_items_excluded_and_padding(fitted, data):
    _, model = fitted
    users = np.arange(N_USERS)
    items, scores = model.recommend(users, N_ITEMS, exclude=data)
    assert items.shape == scores.shape == (N_USERS, N_ITEMS)
    for u in users:
        seen = set(data[u].indices)
        valid = items[u][items[u] >= 0]
        assert not seen & set(valid.tolist())
        assert len(valid) == N_ITEMS - SEEN  # all the rest, padded with -1 after
        assert np.all(items[u][len(valid) :] == -1)
        assert np.all(np.diff(scores[u][: len(valid)]) <= 0)  # best first


def test_top_k_rows_keeps_the_best_then_the_lowest_index_among_ties_whatever_the_block():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(64, 300)).astype(np.float32)  # ties everywhere
    scores[rng.random(scores.shape) < 0.3] = -np.inf  # excluded items
    scores[5, :] = -np.inf
    scores[6, 10:] = -np.inf  # fewer than k finite
    k = 20
    items, values = top_k_rows(scores, k)
    for r, row in enumerate(scores):
        want = sorted(
            (i for i in range(row.size) if np.isfinite(row[i])), key=lambda i: (-row[i], i)
        )
        want = want[:k] + [-1] * (k - len(want[:k]))
        assert items[r].tolist() == want, f"row {r}"
        np.testing.assert_array_equal(values[r], [row[i] if i >= 0 else -np.inf for i in want])
    # a row gets the same top-k alone, in any block, in any order of rows
    perm = rng.permutation(len(scores))
    np.testing.assert_array_equal(top_k_rows(scores[perm], k)[0], items[perm])
    np.testing.assert_array_equal(top_k_rows(scores[7:8], k)[0], items[7:8])
    assert top_k_rows(scores[:, :5], k)[0].shape == (64, k)


def test_score_matches_score_all(fitted):
    _, model = fitted
    users = np.array([0, 5, 25, 39, 0])
    items = np.array([3, 20, 13, 0, 23])
    full = model.score_all(users)
    assert full.shape == (5, N_ITEMS) and full.dtype == np.float32
    np.testing.assert_allclose(
        model.score(users, items), full[np.arange(5), items], rtol=1e-5, atol=1e-6
    )


def test_deterministic_under_seed(fitted, data):
    case, model = fitted
    again = case.make().fit(data, **case.fit_kwargs)
    users = np.arange(N_USERS)
    assert np.array_equal(model.score_all(users), again.score_all(users))


def test_save_load_round_trip(fitted, tmp_path: Path):
    _, model = fitted
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(model)
    assert loaded.config() == model.config()
    users = np.arange(N_USERS)
    assert np.array_equal(loaded.score_all(users), model.score_all(users))
    a, _ = loaded.recommend(users, 5)
    b, _ = model.recommend(users, 5)
    assert np.array_equal(a, b)


def test_corrupt_or_missing_weights_raise_value_error(fitted, tmp_path: Path):
    _, model = fitted
    folder = model.save(tmp_path / "m")
    (folder / WEIGHTS_FILE).write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=WEIGHTS_FILE):
        load_model(folder)
    (folder / WEIGHTS_FILE).unlink()
    with pytest.raises(ValueError, match=WEIGHTS_FILE):
        load_model(folder)
    (folder / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=CONFIG_FILE):
        load_model(folder)


def test_wrong_tensors_raise_value_error(fitted):
    _, model = fitted
    fresh = type(model).from_config(model.config())
    with pytest.raises(ValueError):
        fresh.load_state({})


def test_embeddings_rank_like_scores(fitted):
    _, model = fitted
    users_emb, items_emb = model.user_embeddings(), model.item_embeddings()
    if items_emb is None:
        pytest.skip(f"{model.name} has no embeddings")
    assert users_emb.shape[0] == N_USERS and items_emb.shape[0] == N_ITEMS
    assert users_emb.shape[1] == items_emb.shape[1]
    dots = users_emb @ items_emb.T
    full = model.score_all(np.arange(N_USERS))
    # equal up to a per-user constant (explicit ALS: mu + b_u)
    diff = full - dots
    np.testing.assert_allclose(diff, diff[:, :1].repeat(N_ITEMS, 1), atol=1e-4)


# --- ALS specifics ------------------------------------------------------------------------------------
def test_nmf_factors_non_negative(data):
    for model in (
        ALS(factors=4, nonnegative=True, alpha=5.0, iterations=5).fit(data),
        ALS(factors=3, feedback="explicit", nonnegative=True, iterations=5).fit(data),
    ):
        assert (model.user_factors >= 0).all() and (model.item_factors >= 0).all()
        assert model.user_factors.sum() > 0 and model.item_factors.sum() > 0


def test_als_seed_changes_the_start(data):
    a = ALS(factors=4, iterations=2, seed=0).fit(data)
    b = ALS(factors=4, iterations=2, seed=1).fit(data)
    torch.manual_seed(123)  # global RNG state must not matter
    c = ALS(factors=4, iterations=2, seed=0).fit(data)
    assert not torch.equal(a.user_factors, b.user_factors)
    assert torch.equal(a.user_factors, c.user_factors)


def test_cg_converges_to_the_exact_solution(data):
    # one iteration from the same start: many CG steps == Cholesky
    exact = ALS(factors=4, alpha=5.0, iterations=1, solver="cholesky").fit(data)
    cg = ALS(factors=4, alpha=5.0, iterations=1, solver="cg", cg_steps=30).fit(data)
    torch.testing.assert_close(cg.user_factors, exact.user_factors, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(cg.item_factors, exact.item_factors, rtol=1e-3, atol=1e-4)


def test_implicit_als_fits_confidence_weighted_targets(data):
    # observed cells should score near 1, unobserved near 0
    model = ALS(factors=8, alpha=10.0, regularization=0.01, iterations=15).fit(data)
    full = model.score_all(np.arange(N_USERS))
    observed = data.toarray() > 0
    assert full[observed].mean() > 0.8
    assert abs(full[~observed].mean()) < 0.3


def low_rank_ratings(seed: int = 0):
    rng = np.random.default_rng(seed)
    n_u, n_i, rank = 80, 60, 3
    p = rng.normal(0, 0.5, (n_u, rank))
    q = rng.normal(0, 0.5, (n_i, rank))
    bu = rng.normal(0, 0.4, n_u)
    bi = rng.normal(0, 0.6, n_i)
    full = 3.5 + bu[:, None] + bi[None, :] + p @ q.T
    mask = rng.random((n_u, n_i)) < 0.6
    train_mask = mask & (rng.random((n_u, n_i)) < 0.85)
    test_mask = mask & ~train_mask
    train = sp.csr_matrix(np.where(train_mask, full, 0.0))
    return train, full, test_mask, bi


@pytest.mark.parametrize("solver", ["cg", "cholesky"])
def test_explicit_als_recovers_low_rank_ratings(solver):
    train, full, test_mask, true_item_bias = low_rank_ratings()
    model = ALS(
        factors=3, feedback="explicit", regularization=0.001, iterations=25, solver=solver
    ).fit(train)
    users, items = np.nonzero(test_mask)
    pred = model.score(users, items)
    rmse = float(np.sqrt(np.mean((pred - full[users, items]) ** 2)))
    assert rmse < 0.1, rmse  # ratings spread ~1.0: predicting the mean would give ~1
    assert float(model.global_mean) == pytest.approx(train.data.mean(), rel=1e-5)
    # item biases track the true ones (identified up to what the factors absorb)
    corr = np.corrcoef(model.item_bias.numpy(), true_item_bias)[0, 1]
    assert corr > 0.8, corr


def test_explicit_als_biases_on_additive_ratings():
    # r = 3 + b_u + b_i exactly: the biases carry everything, the factors should stay ~0
    rng = np.random.default_rng(5)
    bu, bi = rng.normal(0, 0.5, 50), rng.normal(0, 0.8, 40)
    mask = rng.random((50, 40)) < 0.5
    full = 3.0 + bu[:, None] + bi[None, :]
    model = ALS(factors=2, feedback="explicit", regularization=0.001, iterations=20)
    model.fit(sp.csr_matrix(np.where(mask, full, 0.0)))
    assert np.corrcoef(model.item_bias.numpy(), bi)[0, 1] > 0.98
    assert np.corrcoef(model.user_bias.numpy(), bu)[0, 1] > 0.98
    # biases differ from the truth at most by a shared shift (mu + b_u + b_i is identified)
    shift = model.item_bias.numpy() - bi
    assert shift.std() < 0.05
    users, items = np.nonzero(~mask)
    pred = model.score(users, items)
    assert float(np.sqrt(np.mean((pred - full[users, items]) ** 2))) < 0.05
    assert float(model.user_factors.abs().max()) < 0.3


def test_als_rejects_bad_arguments():
    with pytest.raises(ValueError, match="feedback"):
        ALS(feedback="ratings")
    with pytest.raises(ValueError, match="solver"):
        ALS(solver="lu")
    with pytest.raises(ValueError, match="non-negative"):
        ALS().fit(sp.csr_matrix(np.array([[1.0, -1.0]])))


def test_als_load_state_checks_shapes(data):
    model = ALS(factors=4, iterations=1).fit(data)
    state = model.state()
    state["item_factors"] = torch.zeros(3, 4)
    fresh = ALS.from_config(model.config())
    with pytest.raises(ValueError, match="item_factors"):
        fresh.load_state(state)


def test_group_prior_gives_cold_rows_their_groups_taste(data):
    # 10 users per block with no interactions at all: without side attributes their factors are
    # 0 (every item scores the same); with them, the group prior puts them in their block
    cold = 10
    m = sp.vstack([data, sp.csr_matrix((2 * cold, N_ITEMS), dtype=np.float32)]).tocsr()
    block = np.r_[np.arange(N_USERS) // BLOCK_USERS, np.repeat([0, 1], cold)]
    users = np.arange(N_USERS, N_USERS + 2 * cold)
    plain = ALS(factors=2, regularization=1.0, alpha=5.0).fit(m)
    assert np.ptp(plain.score_all(users), axis=1).max() < 1e-6
    for solver in ("cg", "cholesky"):
        side = ALS(factors=2, regularization=1.0, alpha=5.0, solver=solver)
        side.fit(m, user_groups=block, item_groups=np.arange(N_ITEMS) // BLOCK_ITEMS)
        items, _ = side.recommend(users, 6)
        assert np.all(items // BLOCK_ITEMS == block[users][:, None]), solver
        # users with data still find their block's unseen items
        items, _ = side.recommend(np.arange(N_USERS), 3, exclude=data)
        assert np.all(items // BLOCK_ITEMS == block[:N_USERS, None]), solver


def test_unknown_group_codes_fall_back_to_the_plain_objective(data):
    # every code -1: no attribute embeddings, so the fit is the plain one bit for bit
    plain = ALS(factors=3, alpha=5.0, iterations=3).fit(data)
    unknown = ALS(factors=3, alpha=5.0, iterations=3).fit(
        data, user_groups=np.full((N_USERS, 2), -1), item_groups=np.full(N_ITEMS, -1)
    )
    assert torch.equal(plain.user_factors, unknown.user_factors)
    assert torch.equal(plain.item_factors, unknown.item_factors)


def test_group_codes_are_checked(data):
    with pytest.raises(ValueError, match=r"\(40, A\)"):
        ALS(factors=2, iterations=1).fit(data, user_groups=np.zeros((3, 1), np.int64))
    with pytest.raises(ValueError, match="integers"):
        ALS(factors=2, iterations=1).fit(data, item_groups=np.zeros(N_ITEMS))


def test_popularity_prior_adds_weighted_log_popularity(data):
    base = ALS(factors=2, regularization=0.1, alpha=5.0).fit(data)
    prior = ALS(factors=2, regularization=0.1, alpha=5.0, popularity_weight=0.3).fit(data)
    # the prior is not part of the fit: same factors, scores shifted by 0.3 * log(1 + n_i)
    assert torch.equal(base.item_factors, prior.item_factors)
    log_pop = np.log1p(np.asarray(data.sum(0)).ravel())
    users = np.arange(N_USERS)
    np.testing.assert_allclose(
        prior.score_all(users), base.score_all(users) + 0.3 * log_pop[None, :], rtol=1e-5
    )
    emb_u, emb_i = prior.user_embeddings(), prior.item_embeddings()
    assert emb_u.shape == (N_USERS, 3) and emb_i.shape == (N_ITEMS, 3)
    np.testing.assert_allclose(emb_u @ emb_i.T, prior.score_all(users), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="popularity_weight"):
        ALS(feedback="explicit", popularity_weight=0.1)
    with pytest.raises(ValueError, match="popularity_weight"):
        ALS(popularity_weight=-1.0)


def test_als_saved_before_side_features_still_loads(data, tmp_path: Path):
    # an artifact written before group_regularization / popularity_weight / item_prior existed
    model = ALS(factors=3, alpha=5.0, iterations=3).fit(data)
    folder = model.save(tmp_path / "old")
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    for key in ("group_regularization", "popularity_weight"):
        del cfg[key]
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    state = torch.load(folder / WEIGHTS_FILE, weights_only=True)
    del state["item_prior"]
    torch.save(state, folder / WEIGHTS_FILE)
    loaded = load_model(folder)
    assert loaded.popularity_weight == 0.0
    users = np.arange(N_USERS)
    assert np.array_equal(loaded.score_all(users), model.score_all(users))
    assert np.array_equal(loaded.item_embeddings(), model.item_embeddings())
    # with the prior on, the prior tensor is required
    cfg["popularity_weight"] = 0.1
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="item_prior"):
        load_model(folder)


# --- baselines specifics ---------------------------------------------------------------------------
def test_most_popular_orders_by_popularity_or_window_weights(data):
    model = MostPopular().fit(data)
    counts = (data.toarray() > 0).sum(0)
    full = model.score_all(np.array([0, 30]))
    np.testing.assert_array_equal(full[0], counts)
    np.testing.assert_array_equal(full[1], counts)
    weights = np.zeros(N_ITEMS, np.float32)
    weights[[7, 3]] = [2.0, 5.0]
    items, _ = (
        MostPopular(window_days=3).fit(data, item_weights=weights).recommend(np.array([39]), 2)
    )
    assert items.tolist() == [[3, 7]]
    with pytest.raises(ValueError, match="item_weights"):
        MostPopular().fit(data, item_weights=np.ones(3))


def test_window_item_weights():
    from models.baselines import window_item_weights

    ts = np.array(
        ["2024-01-01T10", "2024-01-05T00", "2024-01-07T23", "2024-01-08T00"], "datetime64[ns]"
    )
    # window [01-05, 01-08): the 2nd and 3rd events
    w = window_item_weights(np.array([0, 1, 1, 2]), ts, np.datetime64("2024-01-08"), 3, 4)
    assert w.tolist() == [0.0, 2.0, 0.0, 0.0]


def naive_similarity(m: np.ndarray, kind: str) -> np.ndarray:
    """Column-by-column similarity by the textbook loops (complete-matrix convention)."""
    n = m.shape[1]
    s = np.zeros((n, n))
    for a in range(n):
        for b in range(n):
            x, y = m[:, a].astype(float), m[:, b].astype(float)
            if kind == "pearson":
                x, y = x - x.mean(), y - y.mean()
            den = np.sqrt((x * x).sum() * (y * y).sum())
            s[a, b] = (x * y).sum() / den if den > 0 else 0.0
    return s


def naive_topk(s: np.ndarray, k: int) -> list[list[int]]:
    out = []
    for a in range(len(s)):
        order = [b for b in np.argsort(-s[a], kind="stable") if b != a and s[a, b] != 0]
        out.append(order[:k])
    return out


@pytest.mark.parametrize("kind", ["cosine", "pearson"])
def test_itemknn_matches_chapter_formula(kind):
    rng = np.random.default_rng(3)
    r = (rng.random((12, 7)) < 0.4) * rng.integers(1, 6, (12, 7))
    model = ItemKNN(k=3, similarity=kind).fit(sp.csr_matrix(r.astype(np.float32)))
    s = naive_similarity(r, kind)
    neigh = naive_topk(s, 3)
    expected = np.zeros(r.shape)
    for u in range(r.shape[0]):
        for i in range(r.shape[1]):
            num = sum(s[i, j] * r[u, j] for j in neigh[i])
            den = sum(abs(s[i, j]) for j in neigh[i])
            expected[u, i] = num / den if den else 0.0
    np.testing.assert_allclose(model.score_all(np.arange(12)), expected, rtol=1e-4, atol=1e-5)


def test_shrinkage_ranks_a_once_co_rated_pair_below_a_well_supported_one():
    """Items 0 and 1 are rated by one user only (the same one): cosine 1, a perfect pair.
    Items 2 (rows 1-10) and 3 (rows 1-9 and 11) share 9 of their 10 users: cosine 0.9.
    Shrinkage 5 puts the well-supported pair first: 1 / (1 + 5) = 0.167 against
    9 / (10 + 5) = 0.6, each as the formula says."""
    m = np.zeros((12, 4), np.float32)
    m[0, [0, 1]] = 1
    m[1:11, 2] = 1
    m[np.r_[1:10, 11], 3] = 1
    sm = sp.csr_matrix(m)
    plain = topk_similarity(sm, 3, "cosine").toarray()
    shrunk = topk_similarity(sm, 3, "cosine", shrinkage=5.0).toarray()
    assert plain[0, 1] == pytest.approx(1.0) and plain[2, 3] == pytest.approx(0.9)
    assert plain[0, 1] > plain[2, 3]
    assert shrunk[0, 1] == pytest.approx(1 / (1 + 5))
    assert shrunk[2, 3] == pytest.approx(9 / (10 + 5))
    assert shrunk[2, 3] > shrunk[0, 1]
    # the dense path (Pearson) shrinks by the same rule: dot / (|x| |y| + lambda), centred
    pearson = topk_similarity(sm, 3, "pearson").toarray()
    shrunk_p = topk_similarity(sm, 3, "pearson", shrinkage=5.0).toarray()
    x = m - m.mean(0)
    den = np.linalg.norm(x[:, 2]) * np.linalg.norm(x[:, 3])
    assert shrunk_p[2, 3] == pytest.approx(pearson[2, 3] * den / (den + 5.0), rel=1e-5)
    with pytest.raises(ValueError, match="shrinkage"):
        topk_similarity(sm, 3, "cosine", shrinkage=-1.0)


def test_itemknn_history_votes_unnormalised_equal_the_hand_computed_sum():
    """``neighbours_of="history"``, ``normalize="none"``: item ``i`` scores
    ``sum_{j: i in N(j)} sim(j, i) r_uj`` (the user's items vote for their own neighbours), and
    the prior adds ``w log(1 + n_i)``. Hand-computed on a 4 x 4 matrix with k = 1."""
    r = np.array(
        [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 1]], dtype=np.float32
    )  # users x items
    # cosines: s01 = 2/(sqrt2 sqrt3) = .8165, s02 = 1/(sqrt2 sqrt3) = .4082,
    # s12 = 2/3 = .6667, s23 = 1/(sqrt3 sqrt1) = .5774, s03 = s13 = 0
    # k = 1: N(0) = {1}, N(1) = {0}, N(2) = {1} (.6667 > .5774 > .4082), N(3) = {2}
    s01, s12, s23 = 2 / np.sqrt(6), 2 / 3, 1 / np.sqrt(3)
    model = ItemKNN(k=1, neighbours_of="history", normalize="none").fit(sp.csr_matrix(r))
    # item 0: voted by 1 (0 in N(1)); item 1: by 0 and 2; item 2: by 3; item 3: by nobody
    want = np.array(
        [[r[u, 1] * s01, r[u, 0] * s01 + r[u, 2] * s12, r[u, 3] * s23, 0.0] for u in range(4)]
    )
    np.testing.assert_allclose(model.score_all(np.arange(4)), want, rtol=1e-6)
    # the reference formula on the same neighbours: item 2 scores r_u1 s12 / s12 = r_u1
    ref = ItemKNN(k=1).fit(sp.csr_matrix(r)).score_all(np.arange(4))
    np.testing.assert_allclose(ref[:, 2], r[:, 1], rtol=1e-6)
    # "rated": divided by the |sim| of the votes the user actually cast (binary: 1 or 0)
    rated = ItemKNN(k=1, neighbours_of="history", normalize="rated").fit(sp.csr_matrix(r))
    np.testing.assert_allclose(rated.score_all(np.arange(4)), (want > 0).astype(float))
    counts = np.array([3.0, 0.0, 1.0, 7.0])
    prior = ItemKNN(k=1, neighbours_of="history", normalize="none", popularity_weight=0.5)
    prior.fit(sp.csr_matrix(r), item_counts=counts)
    np.testing.assert_allclose(
        prior.score_all(np.arange(4)), want + 0.5 * np.log1p(counts)[None, :], rtol=1e-6
    )
    # default counts: users per item in the training matrix
    default = ItemKNN(k=1, normalize="none", popularity_weight=1.0).fit(sp.csr_matrix(r))
    np.testing.assert_allclose(default.item_counts, [2, 3, 3, 1])
    with pytest.raises(ValueError, match="item_counts"):
        prior.fit(sp.csr_matrix(r), item_counts=np.ones(3))
    with pytest.raises(ValueError, match="neighbours_of"):
        ItemKNN(neighbours_of="user")
    with pytest.raises(ValueError, match="normalize"):
        ItemKNN(normalize="sum")


def test_itemknn_saved_before_the_top_n_settings_loads_with_the_reference_formula(
    data, tmp_path: Path
):
    """A config and weights written before shrinkage / neighbours_of / normalize /
    popularity_weight existed load as the reference formula, scores bit for bit; a config
    with the prior on needs the counts tensor."""
    model = ItemKNN(k=5).fit(data)
    folder = model.save(tmp_path / "old")
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    for key in ("shrinkage", "neighbours_of", "normalize", "popularity_weight"):
        del cfg[key]
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    state = torch.load(folder / WEIGHTS_FILE, weights_only=True)
    del state["item_counts"]
    torch.save(state, folder / WEIGHTS_FILE)
    loaded = load_model(folder)
    assert (loaded.shrinkage, loaded.neighbours_of, loaded.normalize) == (
        0.0, "candidate", "neighbours",
    )  # fmt: skip
    assert loaded.popularity_weight == 0.0
    users = np.arange(N_USERS)
    assert np.array_equal(loaded.score_all(users), model.score_all(users))
    # the top-N settings score differently on the same data: the legacy values are not a no-op
    top_n = ItemKNN(k=5, neighbours_of="history", normalize="none").fit(data)
    assert not np.allclose(top_n.score_all(users), model.score_all(users))
    # a saved history-vote model loads with its own settings
    top_n.save(tmp_path / "new")
    again = load_model(tmp_path / "new")
    assert again.neighbours_of == "history"
    assert np.array_equal(again.score_all(users), top_n.score_all(users))
    cfg["popularity_weight"] = 0.5
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="item_counts"):
        load_model(folder)


@pytest.mark.parametrize("kind", ["cosine", "pearson"])
def test_userknn_matches_chapter_formula(kind):
    rng = np.random.default_rng(4)
    r = (rng.random((9, 11)) < 0.4) * rng.integers(1, 6, (9, 11))
    model = UserKNN(k=3, similarity=kind).fit(sp.csr_matrix(r.astype(np.float32)))
    s = naive_similarity(r.T, kind)
    neigh = naive_topk(s, 3)
    mean = r.mean(1)
    expected = np.zeros(r.shape)
    for u in range(r.shape[0]):
        den = sum(abs(s[u, v]) for v in neigh[u])
        for i in range(r.shape[1]):
            num = sum(s[u, v] * (r[v, i] - mean[v]) for v in neigh[u])
            expected[u, i] = mean[u] + (num / den if den else 0.0)
    np.testing.assert_allclose(model.score_all(np.arange(9)), expected, rtol=1e-4, atol=1e-5)


def test_topk_similarity_is_sparse_and_excludes_self(data):
    s = topk_similarity(data, 4, "cosine")
    assert s.shape == (N_ITEMS, N_ITEMS)
    assert np.all(np.diff(s.indptr) <= 4)
    assert np.all(s.diagonal() == 0)
    with pytest.raises(ValueError, match="similarity"):
        topk_similarity(data, 4, "jaccard")


def test_topk_cosine_equals_the_dense_definition_on_random_weights():
    """The cosine top-k (computed block by block over sparse co-occurrences) holds, per row,
    the k largest nonzero cosines of the column pairs, self excluded, each at its column
    (columns with one entry in the same row tie exactly: values are compared, not sets)."""
    rng = np.random.default_rng(3)
    for _ in range(10):
        m = sp.random(int(rng.integers(5, 80)), int(rng.integers(3, 120)), density=0.15,
                      random_state=int(rng.integers(1_000_000)), format="csr")  # fmt: skip
        m.data = rng.random(m.nnz) + 0.01  # continuous: no ties
        k = int(rng.integers(1, 12))
        dense = m.toarray()
        norm = np.linalg.norm(dense, axis=0)
        cos = (dense.T @ dense) / np.where(norm > 0, norm, 1)[:, None] / np.where(norm > 0, norm, 1)
        np.fill_diagonal(cos, 0.0)
        got = topk_similarity(m, k, "cosine")
        for c in range(m.shape[1]):
            want = np.sort(cos[c][cos[c] != 0])[::-1][:k]  # the k largest nonzero cosines
            row = got[c]
            assert np.allclose(np.sort(row.data)[::-1], want, rtol=1e-5)
            assert np.allclose(row.data, cos[c, row.indices], rtol=1e-5)  # each at its column


@pytest.mark.parametrize("kind", ["cosine", "pearson"])
def test_topk_similarity_of_some_columns_equals_those_rows_of_all(kind):
    """``columns``: the asked rows are computed as in the full matrix; the others stay empty
    (UserKNN fit for a forward evaluation's sampled users)."""
    rng = np.random.default_rng(5)
    m = sp.random(60, 90, density=0.1, random_state=5, format="csr")
    m.data = rng.random(m.nnz) + 0.01
    full = topk_similarity(m, 6, kind)
    wanted = np.array([71, 3, 40, 3, 88])  # unsorted, a repeat
    part = topk_similarity(m, 6, kind, columns=wanted)
    for c in range(90):
        want = full[c].toarray() if c in wanted else np.zeros((1, 90))
        np.testing.assert_array_equal(part[c].toarray(), want)
    model = UserKNN(k=6).fit(m.T.tocsr(), users=wanted)
    whole = UserKNN(k=6).fit(m.T.tocsr())
    u = np.unique(wanted)
    np.testing.assert_allclose(model.score_all(u), whole.score_all(u), rtol=1e-6)
