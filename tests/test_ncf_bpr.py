"""What is particular to the NCF and BPR retrievers (``models.ncf``, ``models.bpr``); the contract
they share with every retriever is ``tests/test_models.py``.

The planted data: three disjoint taste blocks (users 0-19 / 20-39 / 40-59 like items 0-9 / 10-19
/ 20-29), each user has 5 of their block's 10 items and one item of another block (noise); one
in-block positive per user is held out.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from models.bpr import BPR, positive_pairs, sample_negatives
from models.ncf import NCF
from pipelines.cli import build_parser
from pipelines.core.settings import Settings
from pipelines.retrieval import train

N_USERS, N_ITEMS, BLOCKS = 60, 30, 3


def planted(seed: int = 0) -> tuple[sp.csr_matrix, np.ndarray]:
    """``(train (U, I) counts, held-out item per user (U,))``."""
    rng = np.random.default_rng(seed)
    per_block_u, per_block_i = N_USERS // BLOCKS, N_ITEMS // BLOCKS
    rows, cols, held = [], [], []
    for u in range(N_USERS):
        b = u // per_block_u
        liked = b * per_block_i + rng.choice(per_block_i, 6, replace=False)
        other = (b + 1 + rng.integers(BLOCKS - 1)) % BLOCKS * per_block_i + rng.integers(10)
        held.append(liked[0])
        rows += [u] * 6
        cols += [*liked[1:], other]
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(N_USERS, N_ITEMS))
    return m, np.array(held)


def held_out_above_negatives(model, m: sp.csr_matrix, held: np.ndarray) -> float:
    """Share of ``(u, held-out i+, sampled i-)`` triples (10 negatives per user, none a training
    or held-out positive) where ``i+`` scores strictly higher."""
    users, items, _ = positive_pairs(m)
    keys = np.sort(np.r_[users * N_ITEMS + items, np.arange(N_USERS) * N_ITEMS + held])
    all_users = np.arange(N_USERS)
    neg = sample_negatives(all_users, N_ITEMS, keys, np.random.default_rng(7), 10)
    pos_scores = model.score(all_users, held)
    neg_scores = model.score(np.repeat(all_users, 10), neg.ravel()).reshape(N_USERS, 10)
    return float((pos_scores[:, None] > neg_scores).mean())


def test_sample_negatives_avoid_positives_and_follow_the_seed():
    m, _ = planted()
    users, items, keys = positive_pairs(m)
    a = sample_negatives(users, N_ITEMS, keys, np.random.default_rng(3), 4)
    b = sample_negatives(users, N_ITEMS, keys, np.random.default_rng(3), 4)
    assert a.shape == (len(users), 4) and np.array_equal(a, b)
    dense = m.toarray() > 0
    assert not dense[np.repeat(users, 4), a.ravel()].any()
    assert len(np.unique(a)) > N_ITEMS // 2  # spread over the catalog, not one item
    with pytest.raises(ValueError, match="no positive"):
        positive_pairs(sp.csr_matrix((3, 4), dtype=np.float32))


# --- BPR ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs",
    [
        {"optimizer": "adam", "lr": 0.05, "batch_size": 64},
        {"optimizer": "sgd", "lr": 0.1, "batch_size": 32},
    ],
    ids=["adam", "sgd"],
)
def test_bpr_loss_falls_and_ranks_held_out_positives_first(kwargs):
    m, held = planted()
    model = BPR(factors=4, regularization=0.01, epochs=25, **kwargs).fit(m, progress=False)
    assert len(model.loss_history) == 25
    assert model.loss_history[0] > 0.6  # about log 2 at the start: scores near 0
    assert model.loss_history[-1] < 0.5 * model.loss_history[0]
    assert held_out_above_negatives(model, m, held) > 0.8


def test_untrained_models_rank_at_chance():
    # the 0.8 above is learned: the initial weights put the held-out positive first about half
    # the time
    m, held = planted()
    for model in (BPR(factors=4, epochs=0), NCF(factors=4, embed_dim=8, layers=(8,), epochs=0)):
        assert 0.3 < held_out_above_negatives(model.fit(m), m, held) < 0.7


def test_bpr_regularization_shrinks_the_factors():
    m, _ = planted()
    small = BPR(factors=4, regularization=0.0, epochs=10, lr=0.05, batch_size=32).fit(m)
    large = BPR(factors=4, regularization=0.5, epochs=10, lr=0.05, batch_size=32).fit(m)
    assert float(large.item_factors.norm()) < 0.5 * float(small.item_factors.norm())


def test_bpr_rejects_bad_arguments():
    with pytest.raises(ValueError, match="optimizer"):
        BPR(optimizer="rmsprop")
    with pytest.raises(ValueError, match="factors"):
        BPR(factors=0)


# --- NCF ------------------------------------------------------------------------------------------
def test_ncf_four_negatives_per_positive():
    m, _ = planted()
    users, items, keys = positive_pairs(m)
    model = NCF(factors=4, embed_dim=8, layers=(8,), n_items=N_ITEMS)
    ex_u, ex_i, labels = model.training_examples(users, items, keys, np.random.default_rng(0))
    assert len(ex_u) == len(ex_i) == len(labels) == 5 * len(users)
    assert labels.sum() == len(users)
    pos = set(zip(users.tolist(), items.tolist(), strict=True))
    got_pos = set(zip(ex_u[labels == 1].tolist(), ex_i[labels == 1].tolist(), strict=True))
    assert got_pos == pos  # every positive exactly once
    neg_u, neg_i = ex_u[labels == 0], ex_i[labels == 0]
    assert not any((u, i) in pos for u, i in zip(neg_u.tolist(), neg_i.tolist(), strict=True))
    # 4 negatives of each user per positive of theirs
    assert np.array_equal(np.bincount(neg_u, minlength=N_USERS), 4 * np.diff(m.indptr))
    assert labels[:20].min() == 0 and labels[:20].max() == 1  # shuffled together


def test_ncf_fuses_gmf_and_mlp_towers():
    m, held = planted()
    model = NCF(factors=6, embed_dim=8, layers=(16, 4), epochs=10, lr=0.02, batch_size=256)
    model.fit(m, progress=False)
    net = model.net
    # four separate embedding tables: GMF (F = 6) and MLP (D = 8), per side
    assert net.user_gmf.weight.shape == (N_USERS, 6) and net.item_gmf.weight.shape == (N_ITEMS, 6)
    assert net.user_mlp.weight.shape == (N_USERS, 8) and net.item_mlp.weight.shape == (N_ITEMS, 8)
    linears = [layer for layer in net.mlp if isinstance(layer, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(16, 16), (16, 4)]
    assert (net.out.in_features, net.out.out_features) == (6 + 4, 1)
    # the fusion by hand: logit = w . [p_u * q_i || MLP(p'_u || q'_i)] + c
    u = torch.arange(N_USERS).repeat_interleave(N_ITEMS)
    i = torch.arange(N_ITEMS).repeat(N_USERS)
    with torch.no_grad():
        g = net.user_gmf(u) * net.item_gmf(i)
        h = torch.cat([net.user_mlp(u), net.item_mlp(i)], dim=1)
        for lin in linears:
            h = torch.relu(lin(h))
        by_hand = (torch.cat([g, h], dim=1) @ net.out.weight[0] + net.out.bias[0]).numpy()
        forward = net(u, i).numpy()
    full = model.score_all(np.arange(N_USERS)).ravel()
    np.testing.assert_allclose(forward, by_hand, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(full, by_hand, rtol=1e-4, atol=1e-4)
    assert model.loss_history[-1] < 0.7 * model.loss_history[0]
    assert held_out_above_negatives(model, m, held) > 0.8
    assert model.user_embeddings() is None and model.item_embeddings() is None


def test_ncf_rejects_bad_arguments():
    with pytest.raises(ValueError, match="layers"):
        NCF(layers=())
    with pytest.raises(ValueError, match="n_negatives"):
        NCF(n_negatives=0)


# --- selectable by name -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ncf", "bpr"])
def test_selectable_from_the_commands_and_the_builder(name, tmp_path, monkeypatch):
    parser = build_parser()
    for argv in (
        ["train", "--model", name, "--date", "2026-01-01"],
        ["recommend", "--model", name, "--out", "x.csv"],
        ["predict", "--model", name, "--pairs", "p.csv", "--out", "x.csv"],
    ):
        assert parser.parse_args(argv).model == name
    m, _ = planted()
    settings = Settings.from_env({"RECLOOP_HOME": str(tmp_path), "RECLOOP_SEED": "5"})
    params = {"ncf": train.NCF_PARAMS, "bpr": train.BPR_PARAMS}[name]
    monkeypatch.setitem(params, "epochs", 1)
    model = train.build_model(name, SimpleNamespace(implicit=m), settings, seed=settings.seed)
    assert model.name == name and model.seed == 5 and model.n_items == N_ITEMS
    assert {k: model.config()[k] for k in params} == {
        k: list(v) if isinstance(v, tuple) else v for k, v in params.items()
    }
