"""Every metric pinned to values computed by hand (the arithmetic is in the comments).

Conventions under test (pipelines/core/metrics.py): rows with no relevant item are skipped by the
per-user metrics; ``-1`` padding is never relevant but Precision@K still divides by K; an item
repeated in one list counts once.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from models.baselines import MostPopular
from pipelines.core import metrics as ev

LOG2_3 = math.log2(3)  # discount of rank 2 is 1 / log2(3) = 0.63093

# K = 3. Row 2 has no relevant item (skipped everywhere); row 1 is padded and has fewer relevant
# items than K (m=1); row 3 has more than K (m=5); row 4 misses entirely.
RECS = np.array(
    [
        [1, 2, 3],  # row 0: relevant {2: 1, 3: 2, 10: 1} -> grades at ranks [0, 1, 2]
        [4, 5, -1],  # row 1: relevant {5: 3}             -> grades [0, 3, 0]
        [7, 8, 9],  # row 2: relevant {}                  -> skipped
        [0, 1, 2],  # row 3: relevant {0,1,2,6,11} all 1  -> grades [1, 1, 1]
        [20, 21, 22],  # row 4: relevant {23: 1}           -> grades [0, 0, 0]
    ]
)
REL = [
    {2: 1, 3: 2, 10: 1},
    {5: 3},
    {},
    {0: 1, 1: 1, 2: 1, 6: 1, 11: 1},
    {23: 1},
]


def rel_csr() -> sp.csr_matrix:
    rows, cols, vals = [], [], []
    for r, d in enumerate(REL):
        for i, g in d.items():
            rows.append(r)
            cols.append(i)
            vals.append(g)
    return sp.csr_matrix((vals, (rows, cols)), shape=(len(REL), 30))


@pytest.fixture(params=["list", "dict", "csr"])
def rel(request):
    if request.param == "list":
        return REL
    if request.param == "dict":
        return {r: d for r, d in enumerate(REL) if d}
    return rel_csr()


def test_precision(rel):
    # hits/K per counted row: 2/3, 1/3, 3/3, 0/3 -> mean = 2/4 = 0.5 (row 2 skipped)
    assert ev.precision_at_k(RECS, rel, 3) == pytest.approx(0.5)


def test_recall(rel):
    # hits/m_u: 2/3, 1/1, 3/5, 0/1 -> (0.66667 + 1 + 0.6 + 0) / 4 = 17/30 = 0.566667
    assert ev.recall_at_k(RECS, rel, 3) == pytest.approx(17 / 30)


def test_map_uses_min_m_k(rel):
    # row 0: hits at ranks 2, 3 -> (P@2 + P@3) / min(3, 3) = (1/2 + 2/3) / 3 = 7/18
    # row 1: hit at rank 2       -> (1/2) / min(1, 3) = 1/2
    # row 3: hits at 1, 2, 3     -> (1 + 1 + 1) / min(5, 3) = 1
    # row 4: 0                   -> mean = (7/18 + 9/18 + 18/18 + 0) / 4 = 34/72 = 17/36
    assert ev.map_at_k(RECS, rel, 3) == pytest.approx(17 / 36)


def test_ndcg_graded(rel):
    # gains 2^rel - 1, discounts 1, 1/log2(3), 1/2
    # row 0: DCG = 1/log2(3) + 3/2; IDCG (grades 2,1,1) = 3 + 1/log2(3) + 1/2
    # row 1: DCG = 7/log2(3); IDCG = 7 -> 1/log2(3) = 0.63093
    # row 3: DCG = IDCG (top 3 of five 1s) -> 1;  row 4: 0
    row0 = (1 / LOG2_3 + 1.5) / (3 + 1 / LOG2_3 + 0.5)  # 0.515846
    expected = (row0 + 1 / LOG2_3 + 1.0 + 0.0) / 4  # 0.536694
    assert ev.ndcg_at_k(RECS, rel, 3) == pytest.approx(expected)
    assert expected == pytest.approx(0.536694, abs=1e-6)


def test_hit_rate_and_mrr(rel):
    # hit: rows 0, 1, 3 yes, row 4 no -> 3/4
    assert ev.hit_rate_at_k(RECS, rel, 3) == pytest.approx(0.75)
    # first hit ranks: 2, 2, 1, none -> (1/2 + 1/2 + 1 + 0) / 4 = 0.5
    assert ev.mrr(RECS, rel) == pytest.approx(0.5)
    # at k=1 only row 3 hits: (0 + 0 + 1 + 0) / 4
    assert ev.mrr(RECS, rel, 1) == pytest.approx(0.25)
    assert ev.hit_rate_at_k(RECS, rel, 1) == pytest.approx(0.25)


def test_rows_without_relevance_are_skipped():
    keep = [0, 1, 3, 4]
    sub = RECS[keep]
    sub_rel = [REL[r] for r in keep]
    for fn in (ev.precision_at_k, ev.recall_at_k, ev.map_at_k, ev.ndcg_at_k, ev.hit_rate_at_k):
        assert fn(RECS, REL, 3) == pytest.approx(fn(sub, sub_rel, 3))
    # nothing relevant anywhere -> nan, not 0
    assert math.isnan(ev.ndcg_at_k(RECS[[2]], [{}], 3))
    assert math.isnan(ev.precision_at_k(RECS[[2]], [{}], 3))


def test_padding_and_duplicates():
    # padding is a miss, P@3 still divides by 3: 1/3; recall 1/1
    recs = np.array([[5, -1, -1]])
    assert ev.precision_at_k(recs, [{5: 1}], 3) == pytest.approx(1 / 3)
    assert ev.recall_at_k(recs, [{5: 1}], 3) == pytest.approx(1.0)
    # a repeated item counts once: grades [1, 0, 1] -> P@3 = 2/3;
    # NDCG = (1 + 1/2) / (1 + 1/log2(3)) = 0.919721
    recs = np.array([[5, 5, 6]])
    assert ev.precision_at_k(recs, [{5: 1, 6: 1}], 3) == pytest.approx(2 / 3)
    assert ev.ndcg_at_k(recs, [{5: 1, 6: 1}], 3) == pytest.approx(1.5 / (1 + 1 / LOG2_3))


def test_k_beyond_list_and_bad_input():
    # K larger than the list width: the missing columns are misses; P@4 = 1/4
    recs = np.array([[5, 6]])
    assert ev.precision_at_k(recs, [{5: 1}], 4) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        ev.precision_at_k(np.array([1, 2, 3]), [{1: 1}], 3)
    with pytest.raises(ValueError):
        ev.recall_at_k(RECS, REL[:2], 3)


def test_auc_ties_count_half():
    # positives 0.8, 0.3; negatives 0.8, 0.1, 0.3
    # 0.8 vs (0.8 tie .5, 0.1 win 1, 0.3 win 1) = 2.5; 0.3 vs (0.8 lose 0, 0.1 win 1, 0.3 tie .5) = 1.5
    # AUC = (2.5 + 1.5) / (2 * 3) = 2/3
    labels = np.array([1, 0, 1, 0, 0])
    scores = np.array([0.8, 0.8, 0.3, 0.1, 0.3])
    assert ev.auc(labels, scores) == pytest.approx(2 / 3)
    assert ev.auc([0, 1], [0.1, 0.9]) == pytest.approx(1.0)
    assert ev.auc([1, 0], [0.1, 0.9]) == pytest.approx(0.0)
    assert ev.auc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert math.isnan(ev.auc([1, 1], [0.2, 0.3]))


def test_logloss_clipped():
    # -(ln 0.9 + ln 0.8) / 2 = (0.1053605 + 0.2231436) / 2 = 0.1642520
    assert ev.logloss([1, 0], [0.9, 0.2]) == pytest.approx(0.1642520, abs=1e-7)
    # p = 0 for a positive is clipped to 1e-7: -ln(1e-7) = 16.118096 (finite)
    assert ev.logloss([1], [0.0]) == pytest.approx(16.118096, abs=1e-6)
    assert ev.logloss([0], [1.0]) == pytest.approx(16.118096, abs=1e-5)


def test_coverage_novelty_popularity():
    recs = np.array([[0, 1], [2, 3], [-1, 0]])
    # distinct valid items {0,1,2,3} of 10
    assert ev.catalog_coverage(recs, 10) == pytest.approx(0.4)
    counts = np.array([50, 10, 1, 0])
    # p = [0.5, 0.1, 0.01, 0.01 (count 0 floored to 1)], over 100 users
    # recommended (padding dropped): 0, 1, 2, 3, 0
    # -log2 p: 1, 3.321928, 6.643856, 6.643856, 1 -> sum 18.609640 / 5 = 3.721928
    assert ev.novelty(recs, counts, 100) == pytest.approx(3.721928, abs=1e-6)
    # mean p: (0.5 + 0.1 + 0.01 + 0.01 + 0.5) / 5 = 0.224
    assert ev.mean_popularity(recs, counts, 100) == pytest.approx(0.224)


def test_evaluate_model_protocol():
    # 4 users x 5 items. train: u0 {0,1}, u1 {0,2}, u2 {0}, u3 {1,2,3}.
    train = sp.csr_matrix(
        ([1.0] * 8, ([0, 0, 1, 1, 2, 3, 3, 3], [0, 1, 0, 2, 0, 1, 2, 3])), shape=(4, 5)
    )
    # test: u0 {2, 4}; u1 {0 (seen in train: dropped), 3}; u2, u3 nothing -> 2 users evaluated
    test = sp.csr_matrix(([1.0] * 4, ([0, 0, 1, 1], [2, 4, 0, 3])), shape=(4, 5))
    model = MostPopular().fit(train, item_weights=np.array([5.0, 4, 3, 2, 1]))
    out = ev.evaluate_model(model, train, test, k=2)
    # top-2 unseen: u0 -> [2, 3] (one hit at rank 1), u1 -> [1, 3] (one hit at rank 2)
    assert out["n_users"] == 2
    assert out["precision@2"] == pytest.approx(0.5)  # (1/2 + 1/2) / 2
    assert out["recall@2"] == pytest.approx(0.75)  # (1/2 + 1/1) / 2
    assert out["map@2"] == pytest.approx(0.5)  # (1/min(2,2) + (1/2)/min(1,2)) / 2
    # u0: 1 / (1 + 1/log2 3); u1: (1/log2 3) / 1
    assert out["ndcg@2"] == pytest.approx((1 / (1 + 1 / LOG2_3) + 1 / LOG2_3) / 2)
    assert out["hit_rate@2"] == pytest.approx(1.0)
    assert out["mrr@2"] == pytest.approx(0.75)  # (1 + 1/2) / 2
    assert out["recall@100"] == pytest.approx(1.0)  # every unseen item is listed at depth 100
    # u0 candidates {2,3,4} scores 3,2,1, positives {2,4}: pairs (2>3) 1, (4<3) 0 -> 0.5
    # u1 candidates {1,3,4} scores 4,2,1, positive 3: (3<1) 0, (3>4) 1 -> 0.5
    assert out["auc"] == pytest.approx(0.5)
    assert out["coverage@2"] == pytest.approx(3 / 5)  # {1, 2, 3}
    # training users per item: [3, 2, 2, 1, 0], 4 users; listed 2, 3, 1, 3 -> p .5 .25 .5 .25
    assert out["novelty@2"] == pytest.approx(1.5)  # mean(1, 2, 1, 2) bits
    assert out["mean_popularity@2"] == pytest.approx(0.375)


def test_compare_models_table():
    train = sp.csr_matrix(np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]], dtype=np.float32))
    test = sp.csr_matrix(np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=np.float32))
    models = {
        "a": MostPopular().fit(train, item_weights=np.array([3.0, 2, 1])),
        "b": MostPopular().fit(train, item_weights=np.array([1.0, 2, 3])),
    }
    df = ev.compare_models(models, train, test, k=1, recall_ks=())
    assert list(df.index) == ["a", "b"]
    # a: u0 -> 1 (hit), u1 -> 2 (hit), u2 -> 0 (hit); b: u0 -> 2 (miss), u1 -> 2 (hit), u2 -> 1
    assert df.loc["a", "precision@1"] == pytest.approx(1.0)
    assert df.loc["b", "precision@1"] == pytest.approx(1 / 3)


def test_auc_equals_pairwise_count_with_many_ties():
    rng = np.random.default_rng(0)
    labels = rng.random(200) < 0.3
    scores = rng.integers(0, 5, 200).astype(float)  # five distinct values: ties everywhere
    pos, neg = scores[labels], scores[~labels]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert ev.auc(labels, scores) == pytest.approx(pairs / (len(pos) * len(neg)))


def test_auc_within_groups_removes_a_confounding_group():
    """Scores that only follow position, clicks that only follow position: the pooled AUC is
    high, within position it is a coin (0.5); a score that orders within each position is 1."""
    pos = np.repeat([1, 2, 3], 4)
    y = np.array([1, 1, 1, 0, 1, 0, 1, 0, 0, 0, 0, 1])  # click rate falls with position
    by_position = -pos.astype(float)
    assert ev.auc(y, by_position) > 0.7
    assert ev.auc_within_groups(y, by_position, pos) == pytest.approx(0.5)
    relevance = y + 0.1 * by_position
    assert ev.auc_within_groups(y, relevance, pos) == pytest.approx(1.0)
    pairs = {1: 3 * 1, 2: 2 * 2, 3: 1 * 3}  # positives x negatives per position
    flip = np.where(pos == 3, -relevance, relevance)  # wrong at position 3 only
    expected = (pairs[1] + pairs[2]) / sum(pairs.values())
    assert ev.auc_within_groups(y, flip, pos) == pytest.approx(expected)
    assert math.isnan(ev.auc_within_groups(np.ones(3), np.arange(3.0), np.arange(3)))


def test_sample_test_users_draws_from_the_scored_users():
    # u0, u1 have unseen test items; u2's only test item was seen in training; u3 none
    train = sp.csr_matrix(np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1]], np.float32))
    test = sp.csr_matrix(np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 0, 0]], np.float32))
    users, n = ev.sample_test_users(train, test, max_users=5)
    assert n == 2 and users.tolist() == [0, 1]
    rng = np.random.default_rng(1)
    big_train = sp.random(500, 40, density=0.05, format="csr", random_state=1)
    big_test = sp.csr_matrix((rng.random((500, 40)) < 0.05).astype(np.float32))
    everyone, n = ev.sample_test_users(big_train, big_test, max_users=10_000)
    part, n2 = ev.sample_test_users(big_train, big_test, max_users=50, seed=3)
    assert n2 == n == len(everyone) > 50 and len(part) == 50
    assert set(part) <= set(everyone) and (np.diff(part) > 0).all()
    assert (part == ev.sample_test_users(big_train, big_test, max_users=50, seed=3)[0]).all()


def test_mean_user_auc_equals_the_per_user_definition_with_ties():
    """The block computation (no sort) gives the mean of :func:`user_auc` over users with a
    positive, positives vs unseen non-positive items, ties counted 1/2."""
    rng = np.random.default_rng(7)
    n_users, n_items = 700, 60  # two blocks of 512
    train = sp.csr_matrix((rng.random((n_users, n_items)) < 0.1).astype(np.float32))
    rel = sp.csr_matrix((rng.random((n_users, n_items)) < 0.05).astype(np.float32))
    rel = (rel - rel.multiply(train != 0)).tocsr()
    rel.eliminate_zeros()
    weights = rng.integers(0, 5, n_items).astype(float)  # few distinct scores: many ties
    model = MostPopular().fit(train, item_weights=weights)
    users = np.arange(n_users)
    want = []
    scores = model.score_all(users)
    for u in users:
        pos = np.zeros(n_items, bool)
        pos[rel[u].indices] = True
        cand = np.ones(n_items, bool)
        cand[train[u].indices] = False
        if pos.any():
            want.append(ev.user_auc(scores[u], pos, cand))
    got = ev._mean_user_auc(model, users, train, rel)
    assert got == pytest.approx(np.nanmean(want), rel=1e-12)
